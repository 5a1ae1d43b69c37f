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


def hash_split(key: str, fractions: Sequence[float] = (0.8, 0.1, 0.1)) -> str:
    """Assign ``key`` to a split from a stable hash (same answer on every machine)."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64
    cumulative = 0.0
    for name, frac in zip(SPLITS, fractions):
        cumulative += frac
        if u < cumulative:
            return name
    return SPLITS[-1]


def split_samples(
    samples: Sequence[Sample], split: str, key: Any = None, fractions: Sequence[float] = (0.8, 0.1, 0.1)
) -> list[Sample]:
    """The samples of one split, chosen by a hash of ``key(sample)`` (default: id)."""
    split = check_split(split)
    key = key or (lambda s: s.id)
    return [s for s in samples if hash_split(str(key(s)), fractions) == split]


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
