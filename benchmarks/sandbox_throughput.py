"""Sandbox throughput: HumanEval canonical solutions, batch of 64 vs one at a time.

Prints programs/s both ways and the ratio (the issue asks for >= 1.5 on 2 cores)::

    python benchmarks/sandbox_throughput.py [--programs 64] [--repeats 2] [--workers N]
"""

from __future__ import annotations

import argparse
import os
import time

from textgym.sandbox import Program, Sandbox, SandboxLimits, isolation_mode
from textgym.tasks.code import CodeGenerationTask, load_humaneval, program_for


def canonical_programs(n: int) -> list[Program]:
    task = CodeGenerationTask()
    samples = [task.shape(p) for p in load_humaneval()][:n]
    return [program_for(s.meta["canonical_solution"], s) for s in samples]  # type: ignore[misc]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--programs", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()
    programs = canonical_programs(args.programs)
    sandbox = Sandbox(SandboxLimits(timeout=10.0), workers=args.workers)
    sandbox.run(programs[0])  # warm-up (namespace probe, page cache)
    print(f"cores: {os.cpu_count()}  isolation: {isolation_mode()}  workers: {sandbox.max_workers}  "
          f"programs: {len(programs)}")
    best_seq, best_batch = float("inf"), float("inf")
    for _ in range(args.repeats):
        start = time.perf_counter()
        sequential = [sandbox.run(p) for p in programs]
        best_seq = min(best_seq, time.perf_counter() - start)
        start = time.perf_counter()
        batch = sandbox.run_batch(programs)
        best_batch = min(best_batch, time.perf_counter() - start)
        if not all(r.all_pass for r in sequential + batch):
            bad = [r for r in sequential + batch if not r.all_pass]
            raise SystemExit(f"a canonical solution failed: {bad[0]}")
    seq_rate, batch_rate = len(programs) / best_seq, len(programs) / best_batch
    print(f"one at a time: {seq_rate:6.1f} programs/s  ({best_seq:.2f} s)")
    print(f"batch of {len(programs)}:   {batch_rate:6.1f} programs/s  ({best_batch:.2f} s)")
    print(f"ratio: {batch_rate / seq_rate:.2f}x  (floor 1.5 on 2 cores)")


if __name__ == "__main__":
    main()
