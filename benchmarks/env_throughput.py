"""Env throughput: token-steps/s of gym.make_vec(..., num_envs=64) with random actions.

No model: actions are uniform over the allowed tokens, so episodes run to
``max_new_tokens`` and every step includes observation building; the
end-of-episode decoding and scoring are included.  The baseline printed
beside it is a bare numpy loop doing the minimum any env must do (write the
token into a preallocated array), measured in the same run, so the ratio
says what the Gym API and scoring cost.

    python benchmarks/env_throughput.py [--ids textgym/Copy-v0,...] [--num-envs 64] [--seconds 3] [--scoring-workers 0,2]
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np

import textgym


def bare_loop(num_envs: int, length: int, vocab: int, seconds: float) -> float:
    ids = np.zeros((num_envs, length), dtype=np.int64)
    rng = np.random.default_rng(0)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        ids[:, steps % length] = rng.integers(vocab, size=num_envs)
        steps += 1
    return steps * num_envs / (time.perf_counter() - start)


def env_rate(env_id: str, num_envs: int, seconds: float, model: str, workers: int = 0) -> tuple[float, int]:
    envs = gym.make_vec(env_id, num_envs=num_envs, model=model, scoring_workers=workers)
    setup = envs.unwrapped.setup
    allowed = np.flatnonzero(envs.unwrapped.action_masks()[0])
    rng = np.random.default_rng(0)
    actions = rng.choice(allowed, size=(4096, num_envs))
    envs.reset(seed=0)
    steps, episodes, start = 0, 0, time.perf_counter()
    while time.perf_counter() - start < seconds or episodes == 0:
        _, _, terminated, truncated, _ = envs.step(actions[steps % len(actions)])
        episodes += int((terminated | truncated).sum())
        steps += 1
    del setup
    return steps * num_envs / (time.perf_counter() - start), episodes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ids", default=",".join(sorted(i for i, e in textgym.ENVS.items() if e.source == "textgym")))
    parser.add_argument("--num-envs", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--model", default="tiny-random", help="only its tokenizer is used")
    parser.add_argument("--scoring-workers", default="0,2", help="comma-separated values of scoring_workers to compare")
    args = parser.parse_args()
    workers = [int(w) for w in args.scoring_workers.split(",")]
    print(f"{'env id':<28} {'workers':>7} {'token-steps/s':>14} {'episodes':>9} {'bare numpy':>12} {'ratio':>7}")
    for env_id in args.ids.split(","):
        for w in workers:
            rate, episodes = env_rate(env_id, args.num_envs, args.seconds, args.model, w)
            base = bare_loop(args.num_envs, 512, 49152, 1.0)
            print(f"{env_id:<28} {w:>7} {rate:>14,.0f} {episodes:>9} {base:>12,.0f} {rate / base:>7.3f}")


if __name__ == "__main__":
    main()
