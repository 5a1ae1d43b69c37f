"""Execution rewards: run the answer's code against the problem's tests in the sandbox.

Two metrics, computed together from one sandbox run per answer:

* ``pass_rate`` -- the fraction of the problem's test units (the statements of
  ``check`` that call the candidate, e.g. HumanEval's individual asserts)
  that pass: partial credit;
* ``all_pass`` -- 1.0 when every unit passes (HumanEval's pass@1 criterion).

The code tasks' default reward is an :class:`ExecutionReward` instance: a
callable that returns a full :class:`~textgym.rewards.base.RewardOutput`
whose ``details`` (status, passed/total, first failing assert, reason) the
env merges into the final ``info["execution"]`` (:func:`execution_info`: the
same keys and types for every outcome), and ``info["code"]`` (``""`` when the
answer held no code).  ``reward="pass_rate"`` /
``reward="all_pass"`` by name go through :func:`execution_scores` (same
scores, default sandbox limits; the names carry no per-sample details).

Example:
    >>> import gymnasium as gym, textgym
    >>> env = gym.make("textgym/CodeGeneration-v0", model="tiny-random")
    >>> reward = env.unwrapped.setup.reward.function  # the ExecutionReward
    >>> sample = env.unwrapped.setup.samples[0]
    >>> out = reward([sample.meta["canonical_solution"]], [sample])
    >>> float(out.scores[0]), out.details[0]["execution"]["status"]
    (1.0, 'ok')
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from textgym.data.base import Sample
from textgym.errors import ConfigError
from textgym.rewards.base import RewardOutput
from textgym.rewards.programs import program_for
from textgym.sandbox import ExecutionResult, Isolation, Sandbox, SandboxLimits

ExecutionMetric = Literal["pass_rate", "all_pass"]
METRIC_NAMES = ("pass_rate", "all_pass")


class ExecutionReward:
    """Score answers by running them in a :class:`~textgym.sandbox.Sandbox`.

    Args:
        metric: which metric is the score: ``"pass_rate"`` (partial credit) or
            ``"all_pass"`` (strict 0/1); both are always in ``metrics``.
        limits: the sandbox's resource limits (timeout, memory ...).
        workers: programs run at once (default: 4 per core, at most 32).
        isolation: ``"auto"``, ``"namespace"`` or ``"none"`` (see :mod:`textgym.sandbox`).
        cache_size: results kept per (program, tests), so dense rewards and
            repeated answers do not run the same code twice.
        expose_solutions: keep the failing test and its message in the details
            (they can show the expected values; for debugging, not training).

    Each sample needs ``meta["test"]`` and ``meta["entry_point"]``; how the
    answer becomes a program is :func:`textgym.rewards.programs.program_for`.
    """

    def __init__(
        self,
        metric: ExecutionMetric = "pass_rate",
        limits: SandboxLimits | None = None,
        workers: int | None = None,
        isolation: Isolation = "auto",
        cache_size: int = 4096,
        expose_solutions: bool = False,
    ) -> None:
        if metric not in METRIC_NAMES:
            raise ConfigError(f"execution reward metric must be one of {list(METRIC_NAMES)}, got {metric!r}")
        self.metric = metric
        self.sandbox = Sandbox(limits or SandboxLimits(), workers=workers, isolation=isolation)
        self.cache_size = int(cache_size)
        self.expose_solutions = bool(expose_solutions)
        self._cache: collections.OrderedDict[tuple[str, str, str, str], ExecutionResult] = collections.OrderedDict()
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_lock")
        state["_cache"] = collections.OrderedDict()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ExecutionReward(metric={self.metric!r}, limits={self.sandbox.limits!r})"

    def with_metric(self, metric: ExecutionMetric) -> ExecutionReward:
        """The same sandbox settings scoring ``metric`` instead."""
        return ExecutionReward(metric, self.sandbox.limits, self.sandbox.workers, self.sandbox.isolation,
                               self.cache_size, self.expose_solutions)

    def results(self, texts: Sequence[str], samples: Sequence[Sample]) -> list[tuple[str | None, ExecutionResult]]:
        """(extracted program, sandbox result) per answer; programs run as one parallel batch."""
        if len(texts) != len(samples):
            raise ConfigError(f"{len(texts)} texts but {len(samples)} samples")
        programs = [program_for(text, sample) for text, sample in zip(texts, samples, strict=True)]
        out: list[ExecutionResult | None] = [None] * len(texts)
        todo: dict[tuple[str, str, str, str], list[int]] = {}
        for i, program in enumerate(programs):
            if program is None:
                out[i] = ExecutionResult("no_code", reason="no Python code found in the answer")
                continue
            key = (program.program, program.test, program.entry_point, program.context)
            with self._lock:
                hit = self._cache.get(key)
            if hit is not None:
                out[i] = hit
            else:
                todo.setdefault(key, []).append(i)
        keys = list(todo)
        fresh = self.sandbox.run_batch([programs[todo[k][0]] for k in keys])  # type: ignore[misc]
        with self._lock:
            for key, result in zip(keys, fresh, strict=True):
                for i in todo[key]:
                    out[i] = result
                if result.status != "timeout":  # a timeout may be load; try again next time
                    self._cache[key] = result
                    self._cache.move_to_end(key)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return [(p.program if p is not None else None, r) for p, r in zip(programs, out, strict=True)]  # type: ignore[misc]

    def __call__(self, texts: Sequence[str], samples: Sequence[Sample]) -> RewardOutput:
        results = self.results(texts, samples)
        pass_rate = np.array([r.pass_rate for _, r in results], dtype=np.float64)
        all_pass = np.array([float(r.all_pass) for _, r in results], dtype=np.float64)
        metrics = {"pass_rate": pass_rate, "all_pass": all_pass}
        details = [{"execution": execution_info(r, self.expose_solutions), "code": code or ""} for code, r in results]
        return RewardOutput(metrics[self.metric].copy(), metrics, details)


def execution_info(result: ExecutionResult, expose_solutions: bool = False) -> dict[str, Any]:
    """``info["execution"]`` of one answer: the same keys and value types for every outcome.

    Without ``expose_solutions`` the failing test statement (``first_failure``) is
    left out and a failed assert's or test's own message is cut to the exception's
    name: both can hold the hidden tests' expected values.

    ``total`` is 0 when no test ran (a syntax error, no code) and ``first_failure`` /
    ``reason`` are ``""`` when there is nothing to say, never None: Gymnasium's vector
    envs batch an info field into an array typed by its first value, so an int next to
    a None in one step crashed ``SyncVectorEnv``.
    """
    info = result.info()
    info["passed"] = int(info["passed"] or 0)
    info["total"] = int(info["total"] or 0)
    for key in ("status", "first_failure", "reason", "stderr_tail"):
        info[key] = str(info[key] or "")
    if not expose_solutions:
        info["first_failure"] = ""
        if info["status"] in ("assertion_failure", "test_error"):
            info["reason"] = info["reason"].split(":", 1)[0]
    return info


_DEFAULT: ExecutionReward | None = None


def execution_scores(texts: Sequence[str], samples: Sequence[Sample], names: frozenset[str]) -> dict[str, np.ndarray]:
    """Metric group function behind ``reward="pass_rate"`` / ``"all_pass"`` (default sandbox)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = ExecutionReward()
    metrics = _DEFAULT(texts, samples).metrics
    return {name: metrics[name] for name in names}
