"""OpenEnv server throughput: episodes/s through `textgym serve` vs the same env in-process.

One episode = ``reset(seed=i)`` and one whole answer (the sample's first
reference, so every episode is scored in full; sequence level, as the server
plays it).  In-process: ``SequenceLevel(gym.make(env))`` in a loop.  Served:
a ``textgym serve`` subprocess on a free port, played by 1 client and by
``--clients`` concurrent clients (``TextGymClient``, one WebSocket session
each; the seeds are split between them), measured in the same run on the
same seeds.  Rewards are checked to be the in-process ones.

    OMP_NUM_THREADS=1 python benchmarks/openenv_throughput.py [--env textgym/Translation-v0] [--episodes 200] [--clients 8]
"""

from __future__ import annotations

import argparse
import asyncio
import select
import signal
import subprocess
import sys
import time

import gymnasium as gym

import textgym  # noqa: F401
from textgym.integrations.openenv import TextGymClient
from textgym.wrappers import SequenceLevel


def in_process(env_id: str, model: str, split: str, seeds: range) -> tuple[float, list[float]]:
    env = SequenceLevel(gym.make(env_id, model=model, split=split))
    for seed in seeds[:5]:  # warm-up: caches, first scoring call
        _, info = env.reset(seed=seed)
        env.step(info["references"][0])
    rewards, start = [], time.perf_counter()
    for seed in seeds:
        _, info = env.reset(seed=seed)
        rewards.append(env.step(info["references"][0])[1])
    return len(seeds) / (time.perf_counter() - start), rewards


async def served(url: str, seeds: range, clients: int) -> tuple[float, list[float]]:
    sessions = [TextGymClient(base_url=url) for _ in range(clients)]
    await asyncio.gather(*(s.connect() for s in sessions))

    async def play(session: TextGymClient, share: list[int]) -> list[tuple[int, float]]:
        out = []
        for seed in share:
            result = await session.reset(seed=seed)
            result = await session.step(result.observation.info["references"][0])
            out.append((seed, result.reward))
        return out

    try:
        await asyncio.gather(*(play(s, list(seeds[:5])) for s in sessions))  # warm-up
        start = time.perf_counter()
        shares = [list(seeds[k::clients]) for k in range(clients)]
        results = await asyncio.gather(*(play(s, share) for s, share in zip(sessions, shares)))
        rate = len(seeds) / (time.perf_counter() - start)
    finally:
        await asyncio.gather(*(s.close() for s in sessions))
    by_seed = dict(pair for result in results for pair in result)
    return rate, [by_seed[seed] for seed in seeds]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="textgym/Translation-v0")
    parser.add_argument("--model", default="tiny-random", help="only its tokenizer is used")
    parser.add_argument("--split", default="test")
    parser.add_argument("--episodes", type=int, default=500)
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients of the second served run")
    args = parser.parse_args()
    seeds = range(args.episodes)

    proc = subprocess.Popen(
        [sys.executable, "-m", "textgym", "serve", args.env, "--model", args.model, "--split", args.split,
         "--port", "0", "--num-envs", str(args.clients)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 120)
        line = proc.stdout.readline() if ready else ""
        if " on http" not in line:
            sys.exit(f"the server did not start: {line!r}")
        url = line.split(" on ")[1].split()[0]
        local_rate, local_rewards = in_process(args.env, args.model, args.split, seeds)
        rows = [("in-process (SequenceLevel)", local_rate)]
        for clients in sorted({1, args.clients}):
            rate, rewards = asyncio.run(served(url, seeds, clients))
            if rewards != local_rewards:
                sys.exit(f"served rewards differ from the in-process ones with {clients} client(s)")
            rows.append((f"textgym serve, {clients} client{'s' if clients > 1 else ''}", rate))
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)

    print(f"{args.env}, {args.episodes} episodes (reset + one whole answer), tokenizer {args.model}, split {args.split}")
    print(f"{'':<32} {'episodes/s':>10} {'vs in-process':>14}")
    for name, rate in rows:
        print(f"{name:<32} {rate:>10,.1f} {rate / local_rate:>13.2f}x")


if __name__ == "__main__":
    main()
