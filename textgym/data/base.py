"""The sample type every task works with, and deterministic splitting."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from textgym.errors import ConfigError, DataError

SPLITS = ("train", "validation", "test")
_SPLIT_ALIASES = {"val": "validation", "valid": "validation", "dev": "validation"}


@dataclass(frozen=True)
class Sample:
    """One episode's worth of data.

    Attributes:
        id: stable identifier (used for deterministic splits and in ``info``).
        prompt: the task input (a source string, a document, a context ...);
            the task's prompt formatter turns it into the text the model sees.
        references: target texts the output is scored against (may be empty,
            e.g. for code tasks scored by execution).
        meta: anything else the task or its reward needs (tests, turns ...).
    """

    id: str
    prompt: str
    references: tuple[str, ...] = ()
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise DataError(f"Sample.id must be a non-empty string, got {self.id!r}")
        if not isinstance(self.prompt, str):
            raise DataError(
                f"Sample {self.id!r}: prompt must be a string, got {type(self.prompt).__name__}"
            )
        refs = (self.references,) if isinstance(self.references, str) else self.references
        if not all(isinstance(r, str) for r in refs):
            raise DataError(f"Sample {self.id!r}: references must be strings, got {refs!r}")
        object.__setattr__(self, "references", tuple(refs))
        object.__setattr__(self, "meta", MappingProxyType(dict(self.meta)))

    def __reduce__(self) -> tuple[Any, ...]:  # MappingProxyType does not pickle
        return (Sample, (self.id, self.prompt, self.references, dict(self.meta)))


def check_split(split: str) -> str:
    """Normalise a split name; unknown names raise with the allowed ones."""
    name = _SPLIT_ALIASES.get(split, split) if isinstance(split, str) else split
    if name not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; allowed: {list(SPLITS)}")
    return name


#: The default split: 80 % train, 10 % validation, 10 % test, by a stable hash.
DEFAULT_SPLIT_SIZES = (0.8, 0.1, 0.1)

SplitSizes = Sequence[float | int | None] | Mapping[str, float | int | None]
"""``split_sizes=``: fractions ``(0.8, 0.1, 0.1)`` or row counts ``(8, 1, 1)`` for (train, validation, test).

A mapping ``{"train": ..., "test": ...}`` works too (missing splits get 0). Fractions
(any float) must sum to 1; counts (all ints) take rows in their stable-hash order, and
one count may be ``None`` for "the rest". Rows beyond the counts are left out.
"""


def check_split_sizes(sizes: SplitSizes | None) -> tuple[str, tuple[Any, ...]]:
    """Normalise ``split_sizes=`` to ``("fractions", (f, f, f))`` or ``("counts", (n, n, n))``."""
    if sizes is None:
        return "fractions", DEFAULT_SPLIT_SIZES
    given = sizes
    if isinstance(sizes, Mapping):
        named = {check_split(k): v for k, v in sizes.items()}
        sizes = tuple(named.get(name, 0) for name in SPLITS)
    if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence) or len(sizes) != len(SPLITS):
        raise ConfigError(
            f"split_sizes must be 3 fractions or 3 row counts for {list(SPLITS)}, "
            f"e.g. (0.8, 0.1, 0.1) or (8, 1, 1); got {given!r}"
        )
    numbers = [v for v in sizes if v is not None]
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0 for v in numbers):
        raise ConfigError(f"split_sizes must hold non-negative numbers, got {given!r}")
    if all(isinstance(v, int) for v in numbers):
        if len(numbers) < len(sizes) - 1:
            raise ConfigError(f"split_sizes: at most one count may be None (the rest), got {given!r}")
        return "counts", tuple(sizes)
    if len(numbers) != len(sizes):
        raise ConfigError(f"split_sizes: None (the rest) is for counts, not fractions; got {given!r}")
    if abs(sum(numbers) - 1.0) > 1e-6:
        raise ConfigError(f"split_sizes fractions must sum to 1, got {given!r} (sum {sum(numbers):g})")
    return "fractions", tuple(float(v) for v in sizes)


def _unit(key: str) -> float:
    """A stable number in [0, 1) for a key (same on every machine and Python version)."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def _bucket(u: float, fractions: Sequence[float]) -> str:
    cumulative = 0.0
    for name, frac in zip(SPLITS, fractions):
        cumulative += frac
        if frac > 0 and u < cumulative:
            return name
    # float rounding can leave a sliver below 1.0: it belongs to the last split that takes rows
    return [name for name, frac in zip(SPLITS, fractions) if frac > 0][-1]


def hash_split(key: str, fractions: Sequence[float] = DEFAULT_SPLIT_SIZES) -> str:
    """Assign ``key`` to a split from a stable hash (same answer on every machine)."""
    return _bucket(_unit(key), fractions)


def _fill_empty_splits(assigned: dict[str, str], units: Mapping[str, float], fractions: Sequence[float]) -> None:
    """Move keys so that every split with a positive fraction has one, when there are enough keys.

    Only splits that the hash left empty change: the donor is the largest split,
    the key moved is the donor's key whose hash lies nearest the empty split's
    range. Deterministic, and a no-op for data sets large enough to fill every split.
    """
    wanted = [name for name, frac in zip(SPLITS, fractions) if frac > 0]
    if len(assigned) < len(wanted) or set(wanted) <= set(assigned.values()):
        return
    bounds, low = {}, 0.0
    for name, frac in zip(SPLITS, fractions):
        bounds[name] = (low, low + frac)
        low += frac
    for name in wanted:
        members = {s: sorted(k for k, v in assigned.items() if v == s) for s in SPLITS}
        if members[name]:
            continue
        donor = max(SPLITS, key=lambda s: (len(members[s]), -SPLITS.index(s)))
        lo, hi = bounds[name]
        moved = min(members[donor], key=lambda k: (max(lo - units[k], units[k] - hi, 0.0), k))
        assigned[moved] = name


def assign_splits(keys: Sequence[str], sizes: SplitSizes | None = None) -> dict[str, str | None]:
    """Split name of every distinct key under ``sizes`` (see :data:`SplitSizes`).

    Fractions: each key goes where its stable hash falls; then, if a split with a
    positive fraction got no key while there are enough keys, the nearest key of the
    largest split moves there, so a 10-row file still has a validation and a test
    row. Counts: keys in hash order fill train, validation, test; leftovers map to None.
    """
    kind, values = check_split_sizes(sizes)
    units = {k: _unit(k) for k in dict.fromkeys(keys)}
    if kind == "fractions":
        assigned = {k: _bucket(u, values) for k, u in units.items()}
        _fill_empty_splits(assigned, units, values)
        return dict(assigned)
    ordered = sorted(units, key=lambda k: (units[k], k))
    fixed = sum(v for v in values if v is not None)
    if fixed > len(ordered):
        raise DataError(
            f"split_sizes {tuple(values)} asks for {fixed} rows but the data has {len(ordered)} distinct rows"
        )
    counts = [len(ordered) - fixed if v is None else v for v in values]
    out: dict[str, str | None] = dict.fromkeys(ordered)
    start = 0
    for name, count in zip(SPLITS, counts):
        for k in ordered[start : start + count]:
            out[k] = name
        start += count
    return out


def split_samples(
    samples: Sequence[Sample], split: str, key: Any = None, sizes: SplitSizes | None = None
) -> list[Sample]:
    """The samples of one split, chosen by a stable hash of ``key(sample)`` (default: id).

    ``sizes`` defaults to 80/10/10 fractions; samples with the same key always
    share a split. With at least 3 distinct keys no split is empty (see
    :func:`assign_splits`); built-in data sets are large enough that this never moves a row.
    """
    split = check_split(split)
    key = key or (lambda s: s.id)
    keys = [str(key(s)) for s in samples]
    assigned = assign_splits(keys, sizes)
    return [s for s, k in zip(samples, keys) if assigned[k] == split]


def require_samples(samples: Sequence[Sample], what: str, split: str) -> list[Sample]:
    """Fail clearly on an empty split instead of at the first ``reset``."""
    if not samples:
        raise DataError(f"{what} has zero samples in split {split!r}; an env needs at least one")
    return list(samples)


def as_samples(rows: Sequence[Sample | Mapping[str, Any]], source: str = "samples") -> list[Sample]:
    """Accept ready Samples or plain dicts with prompt / references / id / meta keys."""
    out = []
    for i, row in enumerate(rows):
        if isinstance(row, Sample):
            out.append(row)
            continue
        if not isinstance(row, Mapping) or "prompt" not in row:
            raise DataError(f"{source}[{i}]: expected a Sample or a dict with a 'prompt' key, got {row!r}")
        refs = row.get("references", row.get("reference", ()))
        extra = {k: v for k, v in row.items() if k not in ("id", "prompt", "references", "reference", "meta")}
        out.append(
            Sample(
                id=str(row.get("id", i)),
                prompt=row["prompt"],
                references=refs,
                meta={**extra, **dict(row.get("meta", {}))},
            )
        )
    return out
