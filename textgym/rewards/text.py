"""Reference-based text metrics through sacrebleu, scaled to [0, 1].

``chrf`` and ``bleu`` are sacrebleu's sentence-level chrF and BLEU (default
settings: chrF with char order 6 and beta 2, BLEU with exponential smoothing)
divided by 100; ``ter`` is sacrebleu's sentence TER divided by 100 (lower is
better, can exceed 1).  Values equal sacrebleu's own on the same strings; they
are computed by :mod:`textgym.rewards.fast_metrics`, which returns sacrebleu's
numbers several times faster.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from textgym.data.base import Sample


def _refs(sample: Sample) -> list[str]:
    return list(sample.references) or [""]


def sacrebleu_scores(texts: Sequence[str], samples: Sequence[Sample], names: frozenset[str]) -> dict[str, np.ndarray]:
    """Sentence-level sacrebleu scores / 100 for the metrics in ``names``."""
    from textgym.rewards import fast_metrics  # imports sacrebleu: only when these metrics are used

    scorers = {"chrf": fast_metrics.chrf_scores, "bleu": fast_metrics.bleu_scores, "ter": fast_metrics.ter_scores}
    refs = [_refs(s) for s in samples]
    return {name: np.array(scorers[name](texts, refs), dtype=np.float64) / 100.0 for name in names}


def length_scores(texts: Sequence[str], samples: Sequence[Sample], names: frozenset[str]) -> dict[str, np.ndarray]:
    """``length_ratio``: words in the output / words in the shortest reference (0 without one).

    ``length_penalty``: ``-|1 - length_ratio|`` clipped at -1, so 0 is best.
    ``words``: whitespace-separated words of the output (no reference needed).
    """
    ratios = []
    for text, sample in zip(texts, samples):
        ref_len = min((len(r.split()) for r in sample.references), default=0)
        ratios.append(len(text.split()) / ref_len if ref_len else 0.0)
    ratio = np.array(ratios, dtype=np.float64)
    out = {
        "length_ratio": ratio,
        "length_penalty": -np.minimum(np.abs(1.0 - ratio), 1.0),
        "words": np.array([len(text.split()) for text in texts], dtype=np.float64),
    }
    return {name: out[name] for name in names}
