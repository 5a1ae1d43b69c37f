"""Shared test helpers: the registry's ids, the tiny model, and the CLI trainings that run beside the suite."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

# One torch thread for the whole suite and every process it starts (before torch is imported).  The CLI
# trainings below run on the other core the whole time; a 2-thread torch beside them oversubscribed the two
# cores and its threads waited on each other: the all-envs bench fixture took 67 s instead of 37 s beside one
# busy process, and the suite 19 minutes.  Tiny models gain nothing from a second thread.  A value set
# outside (OMP_NUM_THREADS=2 make test) is kept.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import textgym  # noqa: E402

TINY = "tiny-random"


def builtin_ids() -> list[str]:
    """Every id textgym itself registers (plugins excluded)."""
    return sorted(i for i, e in textgym.ENVS.items() if e.source == "textgym")


def random_actions(env, rng: np.random.Generator, n: int | None = None) -> np.ndarray:
    """Actions a sensible random agent takes: uniform over the allowed tokens, never EOS."""
    setup = env.unwrapped.setup
    allowed = np.ones(setup.vocab_size, bool) if setup.action_mask is None else setup.action_mask.copy()
    allowed[setup.eos_id] = False
    choices = np.flatnonzero(allowed)
    return rng.choice(choices, size=n) if n is not None else rng.choice(choices)


@pytest.fixture
def tiny() -> str:
    return TINY


@pytest.fixture
def one_thread():
    """One torch thread for the test: tiny matrices gain nothing from threads and contend on a shared CPU."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


class BackgroundTrainings:
    """``textgym train textgym/Copy-v0 --model tiny-random --algo X`` for every algorithm, no other flag, one
    process at a time (one torch thread) in a background thread, while the rest of the suite runs on the other
    core.  The tests that read them (fixture ``cli_runs``) are moved to the end of the session."""

    def __init__(self, algos: list[str]) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="textgym-cli-runs-"))
        self.algos = algos
        self.results: dict[str, tuple[Path, float, int, str]] = {}
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        for algo in self.algos:
            cmd = [sys.executable, "-m", "textgym", "train", "textgym/Copy-v0", "--model", TINY, "--algo", algo,
                   "--out", str(self.root / algo)]  # fmt: skip
            with tempfile.TemporaryFile("w+") as err:
                proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, text=True, env=env)
                # CPU seconds of that process (os.wait4's rusage), not wall-clock: the rest of the suite shares the
                # cores, so a wall-clock figure measured the load as much as the training
                _, status, usage = os.wait4(proc.pid, 0)
                proc.returncode = os.waitstatus_to_exitcode(status)
                err.seek(0)
                seconds = usage.ru_utime + usage.ru_stime
                self.results[algo] = (self.root / algo, seconds, proc.returncode, err.read()[-3000:])

    def wait(self) -> dict[str, tuple[Path, float, int, str]]:
        self.thread.join()
        return self.results

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


_TRAININGS: list[BackgroundTrainings] = []


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Start the CLI trainings when a selected test needs them, and run those tests last."""
    late = [item for item in items if "cli_runs" in getattr(item, "fixturenames", ())]
    if not late:
        return
    items[:] = [item for item in items if item not in late] + late
    from agents import ALGORITHMS

    _TRAININGS.append(BackgroundTrainings(sorted(ALGORITHMS)))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    for trainings in _TRAININGS:
        trainings.close()


@pytest.fixture(scope="session")
def cli_runs() -> dict[str, tuple[Path, float]]:
    """Run directory and CPU seconds of each algorithm's CLI training with default flags (see BackgroundTrainings)."""
    from agents import ALGORITHMS

    if not _TRAININGS:  # the fixture asked for outside a normal collection
        _TRAININGS.append(BackgroundTrainings(sorted(ALGORITHMS)))
    out = {}
    for algo, (run, seconds, code, stderr) in _TRAININGS[0].wait().items():
        assert code == 0, f"textgym train --algo {algo} exited {code}: {stderr}"
        out[algo] = (run, seconds)
    return out
