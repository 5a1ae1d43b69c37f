"""The reward contract shared by every task, and weighted composition.

One signature everywhere: a reward takes a batch of generated texts and the
batch of samples they answer, and returns one score per text plus the value
of every metric it computed::

    def my_reward(texts: Sequence[str], samples: Sequence[Sample]) -> RewardOutput | Sequence[float]

Built-in metrics are looked up by name, lazily: nothing is imported until a
metric is used, and a typo raises :class:`~textgym.errors.ConfigError` that
lists the valid names.  ``make_reward`` turns any of these into a
:class:`Reward`:

* ``"chrf"`` -- one metric;
* ``{"rougeL": 1.0, "length_penalty": 0.2}`` -- a weighted sum;
* a callable with the signature above.

``guards=`` names metrics with range [0, 1] that multiply the score, whatever
the reward is: a guard of 0 zeroes it (Translation's ``language_guard`` zeroes
answers not in the target language). The guards appear in
``info["metrics"]``; the other metrics stay unguarded, only the score
(``"reward"``) is multiplied.

A reward function written for Hugging Face TRL, ``f(prompts, completions,
**columns) -> list[float]``, has the other shape: :func:`reward_style` tells the
two apart (by signature, or by :func:`trl_reward`'s mark) and rejects a function
of neither shape. Tasks made by :func:`textgym.register_task` call TRL reward
functions the TRL way (:mod:`textgym.integrations.trl`); other tasks refuse them.
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import numpy as np

from textgym.data.base import Sample
from textgym.errors import ConfigError, RewardError
from textgym.rewards.pool import compute_group


class RewardOutput(NamedTuple):
    """Scores of a batch: ``scores[i]`` rewards ``texts[i]``.

    ``metrics`` maps a metric name to an array of the same length;
    ``details`` optionally holds one dict per text (e.g. why a program failed).
    """

    scores: np.ndarray
    metrics: dict[str, np.ndarray]
    details: list[dict[str, Any]] | None = None


RewardCallable = Callable[[Sequence[str], Sequence[Sample]], Any]
RewardSpec = str | Mapping[str, float] | RewardCallable


@dataclass(frozen=True)
class MetricInfo:
    """A built-in metric: where its (group) function lives and its range.

    ``function`` is ``"module:function"``; the function has the signature
    ``(texts, samples, names) -> {name: array}`` and computes every name it is
    asked for, so metrics computed together (ROUGE-1/2/L) cost one pass.
    """

    function: str
    low: float
    high: float
    description: str
    parallel: bool = True  # may run in scoring worker processes


METRICS: dict[str, MetricInfo] = {}


def register_metric(
    name: str, function: str, low: float, high: float, description: str, parallel: bool = True
) -> None:
    """Add a built-in metric (``function`` is imported on first use).

    ``parallel=False`` keeps it out of scoring worker processes (it holds a
    model or runs its own pool).
    """
    if name in METRICS and METRICS[name].function != function:
        raise ConfigError(f"metric {name!r} is already registered by {METRICS[name].function}")
    METRICS[name] = MetricInfo(function, float(low), float(high), description, parallel)


def metric_info(name: str) -> MetricInfo:
    if not isinstance(name, str) or name not in METRICS:
        raise ConfigError(f"unknown metric {name!r}; valid metric names: {sorted(METRICS)}")
    return METRICS[name]


def compute_metrics(
    names: Sequence[str], texts: Sequence[str], samples: Sequence[Sample], workers: int = 0
) -> dict[str, np.ndarray]:
    """Compute built-in metrics, one call per metric group (in ``workers`` processes if > 1)."""
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(metric_info(name).function, []).append(name)
    out: dict[str, np.ndarray] = {}
    for function, wanted in groups.items():
        parallel = workers if all(metric_info(n).parallel for n in wanted) else 0
        values = compute_group(function, frozenset(wanted), texts, samples, parallel)
        for name in wanted:
            out[name] = np.asarray(values[name], dtype=np.float64)
    return out


class TRLRewardFunction:
    """A reward function written for TRL, marked for textgym (what :func:`trl_reward` returns).

    Calling it calls the function unchanged, so the marked object still works in
    TRL's trainers; ``__name__`` (what TRL logs) is the function's.
    """

    def __init__(self, function: Callable[..., Any]) -> None:
        functools.update_wrapper(self, function)
        self.function = function

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.function(*args, **kwargs)

    def __repr__(self) -> str:
        return f"trl_reward({self.function!r})"


def signature_of(function: Callable[..., Any]) -> inspect.Signature | None:
    """``inspect.signature(function)``, or None when it has none."""
    try:
        return inspect.signature(function)
    except (TypeError, ValueError):  # some builtins and C callables have none
        return None


def _takes_keyword(signature: inspect.Signature, name: str) -> bool:
    param = signature.parameters.get(name)
    if param is not None:
        return param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY)
    return any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())


def _describe(function: Callable[..., Any]) -> str:
    name = getattr(function, "__name__", type(function).__name__)
    signature = signature_of(function)
    return f"{name}{signature}" if signature is not None else name


def trl_reward(function: Callable[..., Any]) -> TRLRewardFunction:
    """Mark ``function`` as a TRL reward function: ``f(prompts, completions, **columns) -> list[float]``.

    Needed only when the signature does not tell (a ``completions`` parameter
    does), e.g. for ``f(**kwargs)``. A function that cannot take ``prompts=``
    and ``completions=`` as keywords is refused here.

    Example:
        >>> import textgym
        >>> def short(**kwargs):
        ...     return [float(len(c) < 20) for c in kwargs["completions"]]
        >>> textgym.trl_reward(short)(prompts=["Hi"], completions=["Hello!"])
        [1.0]
    """
    if isinstance(function, TRLRewardFunction):
        return function
    if not callable(function):
        raise ConfigError(f"trl_reward() takes a function, got {type(function).__name__} {function!r}")
    signature = signature_of(function)
    if signature is not None and not all(_takes_keyword(signature, k) for k in ("prompts", "completions")):
        raise ConfigError(
            f"trl_reward(): {_describe(function)} cannot be called the TRL way, "
            "f(prompts=..., completions=..., **columns); give it those parameters or **kwargs"
        )
    return TRLRewardFunction(function)


def reward_style(function: Callable[..., Any], owner: str = "task") -> Literal["textgym", "trl"]:
    """Which contract a reward callable follows: ``"textgym"`` (``f(texts, samples)``) or ``"trl"``.

    TRL's: marked by :func:`trl_reward`, or a signature with a ``completions``
    parameter. A function that fits neither raises :class:`ConfigError`; one
    without an inspectable signature is taken as textgym's.

    Example:
        >>> reward_style(lambda texts, samples: [1.0] * len(texts))
        'textgym'
        >>> reward_style(lambda prompts, completions, **kwargs: [1.0] * len(completions))
        'trl'
    """
    if isinstance(function, TRLRewardFunction):
        return "trl"
    signature = signature_of(function)
    if signature is None:
        return "textgym"
    completions = signature.parameters.get("completions")
    if completions is not None and completions.kind is not completions.POSITIONAL_ONLY:
        return "trl"
    try:
        signature.bind([], [])
    except TypeError:
        raise ConfigError(
            f"reward of {owner}: {_describe(function)} has the wrong shape: textgym calls a reward function "
            "as f(texts, samples), TRL as f(prompts=..., completions=..., **columns) (a `completions` "
            "parameter, or mark it with textgym.trl_reward(f))"
        ) from None
    return "textgym"


def _check_scores(values: Any, n: int, owner: str) -> np.ndarray:
    try:
        scores = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise RewardError(f"reward of {owner} returned {values!r}, which is not numbers ({err})") from None
    if scores.shape != (n,):
        raise RewardError(
            f"reward of {owner} returned shape {scores.shape} for a batch of {n} texts; expected ({n},)"
        )
    bad = np.flatnonzero(~np.isfinite(scores))
    if bad.size:
        raise RewardError(
            f"reward of {owner} returned a non-finite value {float(scores[bad[0]])!r} at batch index {int(bad[0])}"
        )
    return scores


class Reward:
    """A composed reward: weighted built-in metrics or a user callable.

    ``extra_metrics`` are computed for ``info["metrics"]`` without weighting.
    ``guards`` are metrics with range [0, 1] that multiply the score (weighted
    or the callable's): a guard of 0 zeroes it.  They are computed with the
    other metrics and reported beside them; only the score is guarded.

    Example:
        >>> from textgym.data.base import Sample
        >>> s = Sample("s", "Save the file", ("Enregistrer le fichier",), {"language": "fr", "source_language": "en"})
        >>> reward = Reward("chrf", guards=("language_guard",))
        >>> out = reward(["Save the file", "Enregistrer le fichier"], [s, s])  # a copy of the source, a translation
        >>> out.scores.tolist(), out.metrics["language_guard"].tolist(), bool(out.metrics["chrf"][0] > 0)
        ([0.0, 1.0], [0.0, 1.0], True)
    """

    def __init__(
        self,
        spec: RewardSpec,
        extra_metrics: Sequence[str] = (),
        owner: str = "task",
        workers: int = 0,
        guards: Sequence[str] = (),
    ) -> None:
        self.owner = owner
        self.workers = workers
        self.function: RewardCallable | None = None
        self.weights: dict[str, float] = {}
        if callable(spec):
            if reward_style(spec, owner) == "trl":
                raise ConfigError(
                    f"reward of {owner}: {_describe(spec)} is a TRL reward function, but this task calls its "
                    "reward as f(texts, samples); tasks made by textgym.register_task take TRL reward functions"
                )
            self.function = spec
        elif isinstance(spec, str):
            metric_info(spec)
            self.weights = {spec: 1.0}
        elif isinstance(spec, Mapping):
            if not spec:
                raise ConfigError(f"reward of {owner}: the weights dict is empty; name at least one metric")
            for name, weight in spec.items():
                metric_info(name)
                ok = isinstance(weight, numbers.Real) and not isinstance(weight, bool)
                if not ok or not math.isfinite(float(weight)):
                    raise ConfigError(
                        f"reward of {owner}: weight of {name!r} must be a finite number, got {weight!r}"
                    )
                self.weights[name] = float(weight)
        else:
            raise ConfigError(
                f"reward of {owner} must be a metric name, a dict name -> weight or a callable, "
                f"got {type(spec).__name__} {spec!r}; valid metric names: {sorted(METRICS)}"
            )
        for name in extra_metrics:
            metric_info(name)
        if isinstance(guards, str):
            raise ConfigError(f"reward guards of {owner} must be a sequence of metric names, got the string {guards!r}")
        for name in guards:
            if not isinstance(name, str) or name not in METRICS:
                raise ConfigError(f"reward guard {name!r} of {owner} is not a metric; valid metric names: {sorted(METRICS)}")
            info = METRICS[name]
            if not 0.0 <= info.low <= info.high <= 1.0:
                raise ConfigError(
                    f"reward guard {name!r} of {owner} has range [{info.low}, {info.high}]; a guard multiplies the "
                    "score, so its range must lie within [0, 1]"
                )
        self.guards = tuple(dict.fromkeys(guards))
        self.metric_names = tuple(dict.fromkeys([*self.weights, *extra_metrics, *self.guards]))

    @property
    def range(self) -> tuple[float, float]:
        """Bounds of the score (``(-inf, inf)`` for a user callable); with guards, 0 is always inside."""
        if self.function is not None:
            return (-math.inf, math.inf)
        low = sum(w * (metric_info(n).low if w >= 0 else metric_info(n).high) for n, w in self.weights.items())
        high = sum(w * (metric_info(n).high if w >= 0 else metric_info(n).low) for n, w in self.weights.items())
        return (min(low, 0.0), max(high, 0.0)) if self.guards else (low, high)

    def __call__(self, texts: Sequence[str], samples: Sequence[Sample]) -> RewardOutput:
        n = len(texts)
        if n != len(samples):
            raise RewardError(f"reward of {self.owner}: {n} texts but {len(samples)} samples")
        metrics = compute_metrics(self.metric_names, texts, samples, self.workers) if n else {
            name: np.zeros(0) for name in self.metric_names
        }
        details = None
        if self.function is not None:
            result = self.function(list(texts), list(samples))
            if isinstance(result, RewardOutput):
                scores = _check_scores(result.scores, n, self.owner)
                for name, values in result.metrics.items():
                    metrics[name] = _check_scores(values, n, f"{self.owner} (metric {name!r})")
                details = result.details
            else:
                scores = _check_scores(result, n, self.owner)
        else:
            scores = np.zeros(n, dtype=np.float64)
            for name, weight in self.weights.items():
                scores = scores + weight * metrics[name]
        for name in self.guards:
            scores = scores * metrics[name]
        metrics["reward"] = scores
        return RewardOutput(scores, metrics, details)
