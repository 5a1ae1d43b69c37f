"""PPO on a real task with the real default model: held-out test metric before and after, several seeds.

Runs the demo (``python -m agents.demo``, its default configuration unless
flags after ``--`` override it) once per seed and prints one table: the
task's own main metric on the same greedy test samples before and after PPO,
the final KL of the policy to the frozen reference, and the run's minutes.

    python benchmarks/ppo_real_task.py --seeds 0 1                 # the demo configuration, 2 seeds
    python benchmarks/ppo_real_task.py --seeds 0 -- --minutes 5    # any demo flag after --

Each seed writes ``--out/seed<N>/`` (results.json, samples.jsonl, learning_curve.png, agent/);
the table also goes to ``--out/summary.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--out", default="ppo_real_task_output")
    args = p.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from agents import demo

    out = Path(args.out)
    rows = []
    for seed in args.seeds:
        ns = demo.parse_args([*extra, "--out", str(out / f"seed{seed}"), "--seed", str(seed)])
        r = demo.run(ns)
        m = r["main_metric"]
        b, a = r["before"]["metrics"][m], r["after"]["metrics"][m]
        rows.append(
            f"| {seed} | {r['test_samples']} | {b:.4f} | {a:.4f} | {a - b:+.4f} ± {r['change_standard_error']:.4f} | "
            f"{r['before']['tokens_mean']:.1f} -> {r['after']['tokens_mean']:.1f} | {r['updates']} | "
            f"{r['train_episodes']} | {r['final_kl_to_reference']:.2f} | {r['total_seconds'] / 60:.1f} |"
        )
        print(json.dumps({"seed": seed, "before": b, "after": a}), flush=True)
    head = (
        f"{r['env']}, {r['model']}, greedy on the first {r['test_samples']} test samples, metric {m}\n\n"
        "| seed | test n | zero-shot | after PPO | change ± paired SE | tokens/answer | updates | episodes | "
        "final KL to ref | minutes |\n|---|---|---|---|---|---|---|---|---|---|"
    )
    table = "\n".join([head, *rows])
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.md").write_text(table + "\n", encoding="utf-8")
    print(table)


if __name__ == "__main__":
    main()
