"""Scoring text metrics in worker processes.

sacrebleu and rouge-score are pure Python, so threads do not help; with
``scoring_workers=N`` an env splits each batch of finished episodes into N
chunks scored in N worker processes (started with ``spawn``, so they never
inherit torch or CUDA state).  Metrics that run their own pool (code
execution) or hold a model (semantic similarity) stay in-process.
"""

from __future__ import annotations

import functools
import importlib
import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np

#: Below this many texts per worker the pool costs more than it saves.
MIN_TEXTS_PER_WORKER = 8


def load_function(function: str) -> Callable[..., dict[str, np.ndarray]]:
    """The function a ``"module:attr"`` string names (how metric groups travel to worker processes)."""
    module, _, attr = function.partition(":")
    return getattr(importlib.import_module(module), attr)


def _run_group(function: str, names: frozenset[str], texts: list[str], samples: list[Any]) -> dict[str, np.ndarray]:
    values = load_function(function)(texts, samples, names)
    return {name: np.asarray(values[name], dtype=np.float64) for name in names}


@functools.cache
def get_pool(workers: int) -> ProcessPoolExecutor:
    """One pool per worker count, shared by every env of the process."""
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))


def compute_group(
    function: str, names: frozenset[str], texts: Sequence[str], samples: Sequence[Any], workers: int
) -> dict[str, np.ndarray]:
    """``function(texts, samples, names)`` over ``workers`` processes, results in input order."""
    n = len(texts)
    if workers < 2 or n < 2 * MIN_TEXTS_PER_WORKER:
        return _run_group(function, names, list(texts), list(samples))
    bounds = np.linspace(0, n, min(workers, n // MIN_TEXTS_PER_WORKER) + 1).astype(int)
    pool = get_pool(workers)
    futures = [
        pool.submit(_run_group, function, names, list(texts[a:b]), list(samples[a:b]))
        for a, b in zip(bounds[:-1], bounds[1:])
    ]
    parts = [f.result() for f in futures]
    return {name: np.concatenate([p[name] for p in parts]) for name in names}
