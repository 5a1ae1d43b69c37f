"""Reference-based text metrics through sacrebleu, scaled to [0, 1].

``chrf`` and ``bleu`` are sacrebleu's sentence-level chrF and BLEU (default
settings: chrF with char order 6 and beta 2, BLEU with exponential smoothing)
divided by 100; ``ter`` is sacrebleu's sentence TER divided by 100 (lower is
better, can exceed 1).  Values equal sacrebleu's own on the same strings.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from textgym.data.base import Sample


@functools.lru_cache(maxsize=1)
def _scorers() -> dict[str, object]:
    from sacrebleu.metrics import BLEU, CHRF, TER

    return {"chrf": CHRF(), "bleu": BLEU(effective_order=True), "ter": TER()}


def _refs(sample: Sample) -> list[str]:
    return list(sample.references) or [""]


def sacrebleu_scores(texts: Sequence[str], samples: Sequence[Sample], names: frozenset[str]) -> dict[str, np.ndarray]:
    """Sentence-level sacrebleu scores / 100 for the metrics in ``names``."""
    scorers = _scorers()
    out = {}
    for name in names:
        scorer = scorers[name]
        out[name] = np.array(
            [scorer.sentence_score(text, _refs(s)).score / 100.0 for text, s in zip(texts, samples)],
            dtype=np.float64,
        )
    return out


def length_scores(texts: Sequence[str], samples: Sequence[Sample], names: frozenset[str]) -> dict[str, np.ndarray]:
    """``length_ratio``: words in the output / words in the shortest reference (0 without one).

    ``length_penalty``: ``-|1 - length_ratio|`` clipped at -1, so 0 is best.
    """
    ratios = []
    for text, sample in zip(texts, samples):
        ref_len = min((len(r.split()) for r in sample.references), default=0)
        ratios.append(len(text.split()) / ref_len if ref_len else 0.0)
    ratio = np.array(ratios, dtype=np.float64)
    out = {"length_ratio": ratio, "length_penalty": -np.minimum(np.abs(1.0 - ratio), 1.0)}
    return {name: out[name] for name in names}
