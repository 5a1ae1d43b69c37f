"""The textgym demo: zero-shot eval -> PPO for a few minutes -> eval again, with a table and a plot.

Run ``python -m agents.demo --out demo_output`` (what ``make demo`` does).  With
the defaults it takes about 12 minutes on a 2-core CPU: the default model
(SmolLM2-135M-Instruct) on English -> French software strings
(``textgym/Translation-v0``, chrF reward), 10 minutes of full fine-tuning with
16 episodes per update (4 prompts x 4 completions, ``group_size=4``); the whole
held-out test split (91 strings) is scored greedily before and after.
Outputs in ``--out``: ``results.json`` (before/after metrics, paired standard
error, final KL to the reference, history), ``learning_curve.png``,
``samples.jsonl`` and the trained agent in ``agent/``.

What to expect (4 seeds, ``benchmarks/ppo_real_task.py``): test chrF 0.112 ->
0.175-0.236 (+0.063 to +0.123, 4.6-5.6 paired standard errors) after 17
updates, with a final KL to the reference of 8-14 nats.  The KL says what
happened: the 135M model cannot translate (zero-shot it writes unrelated
French), and what chrF rewards most within its reach is the English source
copied verbatim (0.336 on the test split); after PPO 26-61 of the 91 answers
start with the source, 2 before.  A larger model is what turns the same
reward into translations.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m agents.demo", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="demo_output", help="output directory")
    p.add_argument("--env", default="textgym/Translation-v0", help="env id")
    p.add_argument("--model", default=None, help="model spec (default: $TEXTGYM_MODEL or smollm2-135m-instruct)")
    p.add_argument("--minutes", type=float, default=10.0, help="PPO training time budget")
    p.add_argument(
        "--eval-episodes",
        type=int,
        default=None,
        help="the first N test samples are scored before and after (default: the whole test split)",
    )
    p.add_argument(
        "--env-kwargs",
        type=json.loads,
        default={},
        help='extra env keyword arguments as JSON, e.g. \'{"aspect": "approach"}\'',
    )
    p.add_argument("--num-envs", type=int, default=16, help="episodes per rollout")
    p.add_argument(
        "--group-size",
        type=int,
        default=4,
        help="completions per prompt (a multiple of it fills --num-envs); each is scored against the "
        "mean of the others, and the prompt is encoded once per group",
    )
    p.add_argument("--n-rollouts", type=int, default=1, help="rollout batches (of --num-envs episodes) per update")
    p.add_argument("--batch-size", type=int, default=None, help="sequences per optimizer step (default: --num-envs)")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument(
        "--learning-rate",
        type=float,
        default=2e-5,
        help="Adam step size of the full-model updates (see benchmarks/ppo_real_task.py for what 1e-5 and "
        "3e-5 did)",
    )
    p.add_argument("--n-epochs", type=int, default=4)
    p.add_argument("--kl-coef", type=float, default=0.01)
    p.add_argument("--gae-lambda", type=float, default=0.95)
    p.add_argument("--vf-coef", type=float, default=0.1, help="value loss weight (0: the zero-initialised critic stays 0)")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument(
        "--missing-eos-penalty",
        type=float,
        default=0.1,
        help="subtracted from the reward of answers cut at max-new-tokens (never emitted EOS); use 0 when "
        "the references run close to max-new-tokens (Summarization-v0 at 48: it taught short answers)",
    )
    p.add_argument("--lora", action="store_true", help="train LoRA adapters instead of the full model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads",
        type=int,
        default=1 if (os.cpu_count() or 1) <= 2 else None,
        help="torch threads (default: 1 on a machine with <= 2 cores, where OpenMP spin-waiting "
        "under load made 2 threads 10x slower; else torch's choice)",
    )
    return p.parse_args(argv)


def plot_curve(history: list[dict[str, float]], path: Path, metric: str, before: float, after: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["time/total_timesteps"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(steps, [h["rollout/ep_rew_mean"] for h in history], marker="o", label="train reward (sampled)")
    ax1.axhline(before, color="gray", linestyle="--", label=f"test {metric} before ({before:.3f})")
    ax1.axhline(after, color="green", linestyle="--", label=f"test {metric} after ({after:.3f})")
    ax1.set_xlabel("generated tokens")
    ax1.set_ylabel("reward")
    ax1.legend(fontsize=8)
    ax2.plot(steps, [h["rollout/kl_ref"] for h in history], marker="o", color="tab:red")
    ax2.set_xlabel("generated tokens")
    ax2.set_ylabel("KL(policy || reference) per sequence")
    fig.suptitle("TextPPO learning curve")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _Deadline(deadline: float) -> Any:
    """A Stable-Baselines3 callback that aborts the rollout in progress once ``deadline`` has passed
    (never before the first update)."""
    from stable_baselines3.common.callbacks import BaseCallback

    class Deadline(BaseCallback):
        def _on_step(self) -> bool:
            return self.model.n_updates < 1 or time.perf_counter() < deadline  # always one update at least

    return Deadline()


def run(args: argparse.Namespace) -> dict[str, Any]:
    import gymnasium as gym
    import torch

    import textgym  # noqa: F401  (registers the env ids)
    from agents import TextPPO
    from agents.evaluation import evaluate_policy_on_env
    from textgym.models import default_model

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = args.model or default_model()
    env_kwargs = {**args.env_kwargs, "model": model, "max_new_tokens": args.max_new_tokens}
    started = time.perf_counter()
    batch_size = args.batch_size or args.num_envs
    train_env = gym.make_vec(args.env, num_envs=args.num_envs, split="train", **env_kwargs)
    test_env = gym.make_vec(args.env, num_envs=16, split="test", **env_kwargs)
    agent = TextPPO(
        "LMPolicy", train_env, model=model, seed=args.seed, verbose=1,
        learning_rate=args.learning_rate, n_epochs=args.n_epochs, kl_coef=args.kl_coef,
        gae_lambda=args.gae_lambda, vf_coef=args.vf_coef,
        temperature=args.temperature, n_rollouts=args.n_rollouts, group_size=args.group_size, batch_size=batch_size,
        micro_batch_size=min(4, batch_size),
        missing_eos_penalty=args.missing_eos_penalty, lora=True if args.lora else None,
        reward_scaling=False,  # the demo's kl_coef and learning rate were measured on raw chrF scores
    )  # fmt: skip
    metric = train_env.text_spec.main_metric
    n_test = test_env.text_spec.num_samples
    n_eval = n_test if args.eval_episodes is None else min(args.eval_episodes, n_test)
    print(f"[demo] {args.env} with {model}: zero-shot eval on {n_eval} test samples ...", flush=True)
    before = evaluate_policy_on_env(agent.policy, test_env, args.eval_episodes, seed=args.seed)
    print(f"[demo] before: {metric} = {before['metrics'].get(metric, before['reward_mean']):.4f} "
          f"({before['seconds']:.0f} s); training for {args.minutes} min ...", flush=True)  # fmt: skip
    # one learn() call (so Ctrl-C / SIGTERM stops training after the current update and the demo still
    # evaluates and saves); the first rollout that starts after the deadline is abandoned at its first token
    agent.learn(total_timesteps=10**12, callback=_Deadline(time.perf_counter() + 60 * args.minutes))
    after = evaluate_policy_on_env(agent.policy, test_env, args.eval_episodes, seed=args.seed)
    agent.save(str(out / "agent"))
    rows = [("metric", "zero-shot", "after PPO", "change")]
    names = sorted(set(before["metrics"]) | {metric})
    for name in [metric] + [n for n in names if n not in (metric, "reward")]:
        b, a = before["metrics"].get(name, float("nan")), after["metrics"].get(name, float("nan"))
        rows.append((name, f"{b:.4f}", f"{a:.4f}", f"{a - b:+.4f}"))
    rows.append(("reward", f"{before['reward_mean']:.4f}", f"{after['reward_mean']:.4f}",
                 f"{after['reward_mean'] - before['reward_mean']:+.4f}"))  # fmt: skip
    rows.append(("tokens/answer", f"{before['tokens_mean']:.1f}", f"{after['tokens_mean']:.1f}", ""))
    table = "\n".join(f"{r[0]:<16}{r[1]:>12}{r[2]:>12}{r[3]:>10}" for r in rows)
    last = agent.history[-1] if agent.history else {}
    diffs = [ra["metrics"].get(metric, ra["reward"]) - rb["metrics"].get(metric, rb["reward"])
             for rb, ra in zip(before["records"], after["records"])]  # fmt: skip
    change_se = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else float("nan")
    results = {
        "env": args.env,
        "model": model,
        "seed": args.seed,
        "test_samples": before["n"],
        "main_metric": metric,
        "before": {k: v for k, v in before.items() if k != "records"},
        "after": {k: v for k, v in after.items() if k != "records"},
        "updates": agent.n_updates,
        "train_tokens": agent.num_timesteps,
        "train_episodes": agent.n_updates * args.num_envs * args.n_rollouts,
        "final_kl_to_reference": last.get("rollout/kl_ref"),
        "change_standard_error": change_se,  # of the paired per-sample change of the main metric
        "history": agent.history,
        "config": vars(args),
        "total_seconds": time.perf_counter() - started,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    with open(out / "samples.jsonl", "w", encoding="utf-8") as fh:
        for rb, ra in zip(before["records"], after["records"]):
            fh.write(json.dumps({"prompt": rb["prompt"], "references": rb["references"], "before": rb["output"],
                                 "after": ra["output"]}, ensure_ascii=False) + "\n")  # fmt: skip
    plot_curve(agent.history, out / "learning_curve.png", metric,
               before["metrics"].get(metric, 0.0), after["metrics"].get(metric, 0.0))  # fmt: skip
    print(f"\n[demo] {args.env}, {model}, {before['n']} held-out test samples, greedy, seed {args.seed}")
    print(f"[demo] PPO: {agent.n_updates} updates, {results['train_episodes']} episodes, {agent.num_timesteps} tokens; "
          f"final KL to reference {results['final_kl_to_reference']}")  # fmt: skip
    print(table)
    print(f"[demo] paired standard error of the {metric} change: {change_se:.4f}")
    print(f"[demo] wrote {out / 'results.json'}, {out / 'learning_curve.png'}, {out / 'samples.jsonl'} "
          f"({results['total_seconds'] / 60:.1f} min)")  # fmt: skip
    return results


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    run(parse_args(argv))


if __name__ == "__main__":
    main()
