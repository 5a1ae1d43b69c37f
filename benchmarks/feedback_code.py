"""Execution feedback: SmolLM2's pass rate after each attempt on CodeRepairFeedback-v0, zero-shot and after a short RL run.

    python benchmarks/feedback_code.py                       # SmolLM2-135M-Instruct, test split, then 3 GRPO updates
    python benchmarks/feedback_code.py --updates 0           # the zero-shot table only
    python benchmarks/feedback_code.py --model tiny-random --updates 1 --max-new-tokens 16   # a smoke run

Greedy answers to every problem of ``--split`` (13 test problems): the env shows each failing
attempt's first failure (the expected values of the hidden asserts redacted) and asks again, up to 3
attempts; an attempt that passes ends the episode.  "after attempt k" is the score of the episode's
k-th attempt (its last one when it ended earlier, having passed): the mean fraction of asserts passed,
and the share of problems solved (every assert).  Then ``--updates`` updates of TextGRPO (groups of
4 conversations of one training problem, ``--episodes`` per update, the env's replies masked out of
the loss) from the same model, and the same evaluation.  Standard errors are over problems (13 are
few: say so when quoting them).
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np
import torch

import textgym  # noqa: F401  (registers the env ids)
from agents import TextGRPO
from agents.evaluation import evaluate_policy_on_env

ENV_ID = "textgym/CodeRepairFeedback-v0"


def per_attempt(records: list[dict], attempts: int) -> list[tuple[float, float, float, float]]:
    """(mean pass rate, its SE, solved share, its SE) after attempt 1..attempts."""
    rows = []
    for k in range(1, attempts + 1):
        scores = np.array([r["turn_scores"][min(k, len(r["turn_scores"])) - 1] for r in records])
        solved = (scores >= 1.0).astype(float)
        se = lambda x: float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float("nan")  # noqa: E731
        rows.append((float(scores.mean()), se(scores), float(solved.mean()), se(solved)))
    return rows


def table(name: str, records: list[dict], attempts: int) -> str:
    cells = [f"{m:.3f} ± {s:.3f} (solved {p:.0%} ± {q:.0%})" for m, s, p, q in per_attempt(records, attempts)]
    return f"| {name} | " + " | ".join(cells) + " |"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--split", default="test")
    p.add_argument("--updates", type=int, default=3, help="TextGRPO updates after the zero-shot evaluation")
    p.add_argument("--episodes", type=int, default=8, help="conversations per update (groups of 4)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="per attempt (default: the env's)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast for the RL run")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    kwargs = {"model": args.model, **({"max_new_tokens": args.max_new_tokens} if args.max_new_tokens else {})}
    test_env = gym.make_vec(ENV_ID, num_envs=gym.make(ENV_ID, split=args.split, **kwargs).unwrapped.text_spec.num_samples,
                            split=args.split, **kwargs)  # fmt: skip
    spec = test_env.text_spec
    train_env = gym.make_vec(ENV_ID, num_envs=args.episodes, **kwargs)
    agent = TextGRPO("LMPolicy", train_env, model=args.model, seed=args.seed, group_size=4, n_rollouts=1, n_epochs=1,
                     micro_batch_size=2, bf16=args.bf16, verbose=0)  # fmt: skip
    started = time.perf_counter()
    before = evaluate_policy_on_env(agent.policy, test_env)
    print(f"zero-shot evaluation: {time.perf_counter() - started:.0f} s", flush=True)
    rl_seconds, kl = 0.0, float("nan")
    if args.updates:
        started = time.perf_counter()
        while agent.n_updates < args.updates:
            agent.learn(1, reset_num_timesteps=False)
            h = agent.history[-1]
            print(f"update {agent.n_updates}: return {h['rollout/ep_rew_mean']:.3f}, KL {h['rollout/kl_ref']:.3f}, "
                  f"{time.perf_counter() - started:.0f} s", flush=True)  # fmt: skip
        rl_seconds, kl = time.perf_counter() - started, agent.history[-1]["rollout/kl_ref"]
        after = evaluate_policy_on_env(agent.policy, test_env)
    attempts = spec.max_turns
    print(f"\n{args.model} on {ENV_ID}, {args.split} split ({before['n']} problems), greedy, max_new_tokens "
          f"{spec.max_new_tokens} per attempt, up to {attempts} attempts; pass rate = mean fraction of asserts passed")
    print("| agent | " + " | ".join(f"after attempt {k}" for k in range(1, attempts + 1)) + " |")
    print("|---|" + "---|" * attempts)
    print(table("zero-shot", before["records"], attempts))
    if args.updates:
        print(table(f"TextGRPO, {args.updates} updates x {args.episodes} conversations ({rl_seconds / 60:.1f} min, "
                    f"{agent.num_timesteps} tokens, KL {kl:.2f})", after["records"], attempts))  # fmt: skip


if __name__ == "__main__":
    main()
