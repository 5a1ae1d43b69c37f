"""Soak test: PPO for a long time, RSS sampled every minute, and the slope after warm-up.

A leak shows as RSS that keeps growing after the first minutes (allocator
pools, caches and optimizer state are filled by then).  The run saves a
checkpoint every ``--save-every`` updates (into a temp dir) so the save path
is exercised too.  Prints one line per sample and, at the end, the least-squares
slope of RSS over time after ``--warmup`` minutes, in MB per minute and as the
projected growth per hour relative to the post-warm-up RSS.

    OMP_NUM_THREADS=1 python benchmarks/soak.py --minutes 30                      # tiny-random
    OMP_NUM_THREADS=1 python benchmarks/soak.py --minutes 10 --model smollm2-135m-instruct \\
        --env textgym/Translation-v0 --num-envs 8 --max-new-tokens 24 --warmup 3
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time

import gymnasium as gym
import numpy as np
import psutil
from stable_baselines3.common.callbacks import BaseCallback

import textgym  # noqa: F401
from agents import TextPPO


class RSSSampler(BaseCallback):
    """Samples the process RSS every ``every`` seconds (a thread: regular even when updates are long)
    and stops training after ``seconds``."""

    def __init__(self, every: float, seconds: float) -> None:
        super().__init__()
        self.every, self.seconds = every, seconds
        self.process = psutil.Process()
        self.samples: list[tuple[float, float, int]] = []  # (minutes, RSS MB, updates)
        self.start = time.monotonic()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def sample(self) -> None:
        minutes = (time.monotonic() - self.start) / 60
        rss = self.process.memory_info().rss / 2**20
        self.samples.append((minutes, rss, self.model.n_updates))
        print(f"{minutes:7.2f} min  RSS {rss:9.1f} MB  updates {self.model.n_updates:6d}  "
              f"tokens {self.model.num_timesteps:9d}", flush=True)  # fmt: skip

    def _loop(self) -> None:
        while not self._done.wait(self.every):
            self.sample()

    def _on_training_start(self) -> None:
        self.start = time.monotonic()
        self.sample()
        self._thread.start()

    def _on_training_end(self) -> None:
        self._done.set()
        self._thread.join()
        self.sample()

    def _on_step(self) -> bool:
        return time.monotonic() - self.start < self.seconds


def slope(samples: list[tuple[float, float, int]], warmup: float) -> tuple[float, float, int]:
    """(MB per minute, mean RSS MB, number of samples) of the samples after ``warmup`` minutes."""
    after = [(t, r) for t, r, _ in samples if t >= warmup]
    if len(after) < 3:
        return float("nan"), float("nan"), len(after)
    t, r = np.array(after).T
    return float(np.polyfit(t, r, 1)[0]), float(r.mean()), len(after)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--warmup", type=float, default=5.0, help="minutes left out of the slope")
    parser.add_argument("--every", type=float, default=60.0, help="seconds between RSS samples")
    parser.add_argument("--env", default="textgym/Copy-v0")
    parser.add_argument("--model", default="tiny-random")
    parser.add_argument("--num-envs", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--save-every", type=int, default=50, help="updates between checkpoints (0 = never)")
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--json", default=None, help="also write the samples and the slope to this file")
    args = parser.parse_args()

    env_kwargs = {"model": args.model}
    if args.max_new_tokens:
        env_kwargs["max_new_tokens"] = args.max_new_tokens
    env = gym.make_vec(args.env, num_envs=args.num_envs, **env_kwargs)
    agent = TextPPO("LMPolicy", env, model=args.model, seed=0, verbose=0, learning_rate=args.learning_rate)
    sampler = RSSSampler(args.every, args.minutes * 60)
    with tempfile.TemporaryDirectory(prefix="textgym-soak-") as run:
        agent.learn(10**12, callback=sampler, save_dir=run if args.save_every else None,
                    save_every=args.save_every or None)  # fmt: skip
    per_min, mean, n = slope(sampler.samples, args.warmup)
    print(f"\n{args.env} {args.model}: {agent.n_updates} updates, {agent.num_timesteps} tokens in {args.minutes:g} min")
    print(f"RSS slope after {args.warmup:g} min warm-up ({n} samples): {per_min:+.2f} MB/min "
          f"({60 * per_min / mean:+.2%} of {mean:.0f} MB per hour)")  # fmt: skip
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"args": vars(args), "samples": sampler.samples, "slope_mb_per_min": per_min}, f, indent=1)


if __name__ == "__main__":
    main()
