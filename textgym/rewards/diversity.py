"""Reference-free diversity metrics of the output itself.

Words are the lower-cased, whitespace-separated tokens of the text.

* ``distinct_2``: distinct word bigrams / word bigrams (0 for fewer than 2
  words, 1 when no bigram repeats).
* ``repetition``: minus the fraction of word 3-grams that repeat an earlier
  3-gram of the same text, ``-(n_trigrams - n_distinct) / n_trigrams``; 0
  means no repetition (also for fewer than 3 words), -1 is the limit of a
  text that loops one phrase forever.

Example:
    >>> from textgym.data.base import Sample
    >>> s = Sample("s", "hi")
    >>> out = diversity_scores(["a b a b a b"], [s], frozenset({"distinct_2", "repetition"}))
    >>> round(float(out["distinct_2"][0]), 2), round(float(out["repetition"][0]), 2)
    (0.4, -0.5)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from textgym.data.base import Sample


def _ngrams(words: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def distinct_n(text: str, n: int = 2) -> float:
    """Distinct word n-grams / word n-grams of ``text`` (0 when it has none)."""
    grams = _ngrams(text.lower().split(), n)
    return len(set(grams)) / len(grams) if grams else 0.0


def repeated_fraction(text: str, n: int = 3) -> float:
    """Fraction of the word n-grams of ``text`` that repeat an earlier one (0 when it has none)."""
    grams = _ngrams(text.lower().split(), n)
    return (len(grams) - len(set(grams))) / len(grams) if grams else 0.0


def diversity_scores(texts: Sequence[str], samples: Sequence[Sample], names: frozenset[str]) -> dict[str, np.ndarray]:
    """``distinct_2`` and ``repetition`` of each text (the samples are not used)."""
    del samples
    out: dict[str, np.ndarray] = {}
    if "distinct_2" in names:
        out["distinct_2"] = np.array([distinct_n(t, 2) for t in texts], dtype=np.float64)
    if "repetition" in names:
        out["repetition"] = np.array([0.0 - repeated_fraction(t, 3) for t in texts], dtype=np.float64)
    return out
