"""ROUGE-1, ROUGE-2 and ROUGE-L F1 through Google's ``rouge-score`` package.

Values are exactly ``RougeScorer(types, use_stemmer=True).score_multi(references,
output)[type].fmeasure``: the F1 against the best-scoring reference (per
metric).  A sample without references scores 0.  rouge-score's tokenizer keeps
only ASCII letters and digits (lower-cased), so text in other scripts scores 0:
use ``chrf`` for those languages.

Example:
    >>> from textgym.data.base import Sample
    >>> out = rouge_scores(["the cat sat"], [Sample("s", "doc", ("the cat sat",))], frozenset({"rougeL"}))
    >>> float(out["rougeL"][0])
    1.0
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

from textgym.data.base import Sample

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


@functools.lru_cache(maxsize=8)
def _scorer(types: tuple[str, ...]) -> Any:
    """One cached ``RougeScorer`` per set of ROUGE types (building one loads NLTK's stemmer)."""
    from rouge_score.rouge_scorer import RougeScorer

    return RougeScorer(list(types), use_stemmer=True)


def rouge_scores(texts: Sequence[str], samples: Sequence[Sample], names: frozenset[str]) -> dict[str, np.ndarray]:
    """ROUGE F1 of each text against the best reference of its sample, for the types in ``names``."""
    types = tuple(t for t in ROUGE_TYPES if t in names)
    if not types:
        return {}
    scorer = _scorer(types)
    out = {name: np.zeros(len(texts), dtype=np.float64) for name in types}
    for i, (text, sample) in enumerate(zip(texts, samples, strict=True)):
        refs = [r for r in sample.references if r.strip()]
        if not refs or not text.strip():
            continue  # nothing to compare: 0, the minimum
        scores = scorer.score_multi(refs, text)
        for name in types:
            out[name][i] = scores[name].fmeasure
    return out
