"""The textgym demo: zero-shot -> supervised warm start -> PPO from it, each scored on the held-out test split.

Run ``python -m agents.demo --out demo_output`` (what ``make demo`` does).  With the defaults: the default
model (SmolLM2-135M-Instruct) on English -> French software strings (``textgym/Translation-v0``: chrF, 0 for an
answer that is not French), a warm start of ``--sft-epochs`` passes over the 671 training pairs, then
``--updates`` PPO updates of 32 episodes (8 prompts x 4 answers) from it (the warm start is PPO's KL reference).
The budget is counted in epochs and updates, never in minutes, so a seed gives the same result on a busy
machine.  The whole test split (91 strings) is answered greedily by the model after each stage.

It is one seed of the trained-agent leaderboard (:mod:`agents.recipes`, ``textgym bench --recipes``) with its
recipes ``zero-shot``, ``sft`` and ``sft+ppo``.  Outputs in ``--out``: ``results.md`` and ``results.json`` (every
metric per stage, the change against zero-shot and against the warm start with their paired standard errors,
the KL to the original model, the answers' perplexity under it and the guard figures: share of answers in
French, of copies of the source), ``learning_curve.png`` (the warm start's loss, PPO's reward and KL),
``samples.jsonl`` and the trained runs in ``runs/``.  What to expect is in the README ("Command line and demo").
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time
from pathlib import Path
from typing import Any


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from agents.sft import bf16_flag, json_object

    p = argparse.ArgumentParser(prog="python -m agents.demo", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="demo_output", help="output directory (re-run to resume)")
    p.add_argument("--env", default="textgym/Translation-v0", help="env id")
    p.add_argument("--model", default=None, help="model spec (default: $TEXTGYM_MODEL or smollm2-135m-instruct)")
    p.add_argument("--algo", default="ppo", help="the RL stage's algorithm (default: ppo)")
    p.add_argument("--sft-epochs", type=int, default=2, help="warm-start passes over the train split (default: 2)")
    p.add_argument("--updates", type=int, default=12, help="RL updates after the warm start (default: 12)")
    p.add_argument("--num-envs", type=int, default=32, help="episodes per RL update (default: 32)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="answer length (default: the env's)")
    p.add_argument("--eval-episodes", type=int, default=None,
                   help="the first N test samples are scored (default: the whole test split)")  # fmt: skip
    p.add_argument("--env-kwargs", type=json_object, default={},
                   help='extra env keyword arguments as JSON, e.g. \'{"aspect": "approach"}\'')  # fmt: skip
    p.add_argument("--rl-config", type=json_object, default={},
                   help="RL config fields over agents.recipes.RL_DEFAULTS, as JSON, e.g. '{\"kl_coef\": 0.05}'")
    p.add_argument("--bf16", type=bf16_flag, default="auto",
                   help="bf16 autocast: auto, true or false (default: auto: on where the CPU has bf16 instructions, "
                   "AVX512-BF16 or AMX, where the warm start runs 1.4x faster; else fp32)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1 if (os.cpu_count() or 1) <= 2 else None,
                   help="torch threads (default: 1 on a machine with <= 2 cores, where OpenMP spin-waiting "
                   "under load made 2 threads 10x slower; else torch's choice)")  # fmt: skip
    return p.parse_args(argv)


def _column(path: Path, key: str) -> tuple[list[float], list[float]]:
    """(row number, value) of one progress.csv column, rows where it is set."""
    xs, ys = [], []
    if path.is_file():
        with open(path, encoding="utf-8") as fh:
            for i, row in enumerate(csv.DictReader(fh)):
                if row.get(key):
                    xs.append(float(i + 1))
                    ys.append(float(row[key]))
    return xs, ys


def plot_curves(sft_dir: Path, rl_dir: Path, path: Path, algo: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(14, 4))
    ax1.plot(*_column(sft_dir / "progress.csv", "sft/loss"), lw=0.8, label="train loss per step")
    ax1.set_xlabel("warm-start step")
    ax1.set_ylabel("cross-entropy of the answer tokens")
    ax1.legend(fontsize=8)
    ax2.plot(*_column(rl_dir / "progress.csv", "rollout/ep_rew_mean"), marker="o", label="train reward (sampled)")
    ax2.set_xlabel(f"{algo} update")
    ax2.set_ylabel("reward")
    ax2.legend(fontsize=8)
    ax3.plot(*_column(rl_dir / "progress.csv", "rollout/kl_ref"), marker="o", color="tab:red")
    ax3.set_xlabel(f"{algo} update")
    ax3.set_ylabel("KL(policy || warm start) per answer")
    fig.suptitle(f"warm start, then {algo}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from agents.recipes import RecipeBudget, run_recipes

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    started = time.perf_counter()
    budget = RecipeBudget(sft_epochs=args.sft_epochs, updates=args.updates, num_envs=args.num_envs,
                          max_new_tokens=args.max_new_tokens, bf16=args.bf16, rl_config=args.rl_config,
                          env_kwargs=args.env_kwargs).resolved("auto")  # fmt: skip
    recipes = ["zero-shot", "sft", f"sft+{args.algo}"]
    print(f"[demo] {args.env}: {budget.describe()}; recipes {', '.join(recipes)}, seed {args.seed}", flush=True)
    results = run_recipes(args.env, recipes, seeds=[args.seed], budget=budget, episodes=args.eval_episodes,
                          model=args.model, out=out, progress=True)  # fmt: skip
    cells = {c["recipe"]: c for c in results["cells"]}
    failed = {name: c["error"] for name, c in cells.items() if c.get("error")}
    if failed:
        raise RuntimeError(f"demo stages failed: {failed} (tracebacks in {out / 'cells'})")
    final = cells[recipes[-1]]
    env_dir = out / "runs" / args.env.replace("/", "_")
    plot_curves(env_dir / f"sft-seed{args.seed}", env_dir / f"{recipes[-1]}-seed{args.seed}", out / "learning_curve.png",
                args.algo)  # fmt: skip
    with open(out / "samples.jsonl", "w", encoding="utf-8") as fh:
        for i, zero in enumerate(cells["zero-shot"]["records"]):
            fh.write(json.dumps({"prompt": zero["prompt"], "references": zero["references"],
                                 **{name: cells[name]["records"][i]["output"] for name in recipes}},
                                ensure_ascii=False) + "\n")  # fmt: skip
    minutes = (time.perf_counter() - started) / 60
    stage = final["stages"][args.algo]
    print(f"\n[demo] {args.env}, {final['n']} held-out test samples, greedy, seed {args.seed}; {args.algo}: "
          f"{stage['updates']} updates, {stage['train_tokens']} tokens, final KL to the warm start "
          f"{stage['train_kl_to_start']:.2f}")  # fmt: skip
    print((out / "results.md").read_text())
    print(f"[demo] wrote {out / 'results.md'}, {out / 'results.json'}, {out / 'learning_curve.png'}, "
          f"{out / 'samples.jsonl'} ({minutes:.1f} min)")  # fmt: skip
    return results


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    run(parse_args(argv))


if __name__ == "__main__":
    main()
