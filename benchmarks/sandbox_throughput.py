"""Sandbox throughput: the sandbox of this checkout vs the one before issue 15 (commit 5d84036), same run.

Both run the same HumanEval canonical solutions, in a batch and one at a
time, in interleaved repeats (old, new, old, new ...); the best time of each
counts.  The old sandbox is loaded from git (``git show 5d84036:...``) into a
temporary folder as a standalone module whose ``HARNESS`` is the temporary
copy of its harness, so no old code stays in the package.  Prints programs/s
of both and the ratio new/old (issue 15's floor: at most 20% slower, ratio >= 0.8)::

    python benchmarks/sandbox_throughput.py [--programs 64] [--repeats 3] [--workers N]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from textgym.sandbox import Program, Sandbox, SandboxLimits, isolation_mode
from textgym.tasks.code import CodeGenerationTask, load_humaneval, program_for

ROOT = Path(__file__).resolve().parents[1]
OLD_COMMIT = "5d84036"  #: the sandbox before issue 15: namespaces by unshare, no seccomp, per-process limits


def canonical_programs(n: int) -> list[Program]:
    task = CodeGenerationTask()
    samples = [task.shape(p) for p in load_humaneval()][:n]
    return [program_for(s.meta["canonical_solution"], s) for s in samples]  # type: ignore[misc]


def load_old_sandbox(folder: str):
    """The launcher module of ``OLD_COMMIT``, its ``HARNESS`` pointing at that commit's harness in ``folder``."""
    for name in ("launcher.py", "harness.py"):
        text = subprocess.run(["git", "show", f"{OLD_COMMIT}:textgym/sandbox/{name}"], cwd=ROOT, check=True,
                              capture_output=True, text=True).stdout
        Path(folder, name).write_text(text, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("textgym_sandbox_old", Path(folder, "launcher.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look the module up
    spec.loader.exec_module(module)
    assert module.HARNESS == Path(folder, "harness.py")
    return module


def timed(run, programs: list) -> float:
    start = time.perf_counter()
    results = run(programs)
    elapsed = time.perf_counter() - start
    bad = [r for r in results if not r.all_pass]
    if bad:
        raise SystemExit(f"a canonical solution failed: {bad[0]}")
    return elapsed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--programs", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args(argv)
    programs = canonical_programs(args.programs)
    limits = SandboxLimits(timeout=10.0)
    new = Sandbox(limits, workers=args.workers)
    with tempfile.TemporaryDirectory(prefix="textgym-old-sandbox-") as folder:
        old_module = load_old_sandbox(folder)
        old = old_module.Sandbox(old_module.SandboxLimits(timeout=10.0), workers=args.workers)
        old_programs = [old_module.Program(p.program, p.test, p.entry_point, p.context) for p in programs]
        sides = {"old": (old, old_programs), "new": (new, programs)}
        for box, progs in sides.values():
            box.run(progs[0])  # warm-up (namespace probe, page cache)
        print(f"cores: {os.cpu_count()}  isolation: new {isolation_mode()}, old {old_module.isolation_mode()}  "
              f"workers: {new.max_workers}  programs: {len(programs)}  repeats: {args.repeats}")
        best = {(side, how): float("inf") for side in sides for how in ("one at a time", "batch")}
        for _ in range(args.repeats):
            for side, (box, progs) in sides.items():
                best[side, "one at a time"] = min(best[side, "one at a time"],
                                                  timed(lambda ps, b=box: [b.run(p) for p in ps], progs))
                best[side, "batch"] = min(best[side, "batch"], timed(box.run_batch, progs))
    for how in ("one at a time", "batch"):
        old_rate, new_rate = (len(programs) / best[side, how] for side in ("old", "new"))
        print(f"{how:>13}: old {old_rate:6.1f} programs/s  new {new_rate:6.1f} programs/s  "
              f"ratio new/old {new_rate / old_rate:.2f}  (floor 0.8)")


if __name__ == "__main__":
    main()
