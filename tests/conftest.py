"""Shared test helpers: the registry's ids, the tiny model, one torch thread."""

from __future__ import annotations

import os

# One torch thread for the whole suite and every process it starts (before torch is imported).  `make test` runs
# two pytest-xdist workers on CI's two cores; a 2-thread torch in each would oversubscribe them and its threads
# wait on each other (measured before xdist, beside one busy process: the all-envs bench fixture took 67 s
# instead of 37 s).  Tiny models gain nothing from a second thread.  A value set outside (OMP_NUM_THREADS=2
# make test) is kept.
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
