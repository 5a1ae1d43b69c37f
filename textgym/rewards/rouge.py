"""ROUGE-1, ROUGE-2 and ROUGE-L F1, equal to Google's ``rouge-score`` package.

Values are exactly ``RougeScorer(types, use_stemmer=True).score_multi(references,
output)[type].fmeasure``: the F1 against the best-scoring reference (per
metric).  A sample without references scores 0.  rouge-score's tokenizer keeps
only ASCII letters and digits (lower-cased), so text in other scripts scores 0:
use ``chrf`` for those languages.

rouge-score itself is slow for scoring episodes in a loop: it runs NLTK's
Porter stemmer on every word and fills a full LCS table in Python.  This
module tokenizes the same way, computes each reference's tokens and n-gram
counts once (cached by reference string), stems only the output words whose
stem could be a reference token (memoized), and gets the LCS length with a
bit-parallel algorithm; the F1 arithmetic is rouge-score's, so the floats are
identical (``tests/test_fast_metrics.py``).

Example:
    >>> from textgym.data.base import Sample
    >>> out = rouge_scores(["the cat sat"], [Sample("s", "doc", ("the cat sat",))], frozenset({"rougeL"}))
    >>> float(out["rougeL"][0])
    1.0
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from rouge_score.tokenize import NON_ALPHANUM_RE, VALID_TOKEN_RE

from textgym.data.base import Sample

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")

_CACHE_SIZE = 4096  # references kept
_STEM_CACHE_SIZE = 1 << 16  # distinct words kept
# NLTK's Porter stemmer only rewrites the end of a word, and its rules keep
# most of the suffix they replace ("enci" -> "ence", "ational" -> "ate"): a stem
# agrees with its word except in at most its last _STEM_TAIL characters, and it
# keeps the first one.  Rule by rule: step 1 leaves at most 1 new character
# ("at" -> "ate", an added "e", "y" -> "i"), step 2 at most 2 ("biliti" ->
# "ble"), steps 3 and 4 remove the new characters and step 5 adds none; the
# irregular forms add at most 2 ("dying" -> "die"); only "sses" -> "ss" removes
# a whole word, and keeps its "s".  So a word can only stem to the reference
# token r if it starts with r[:max(1, len(r) - _STEM_TAIL)]
# (test_stems_keep_the_start_of_the_word checks it on random and real words).
_STEM_TAIL = 2


@functools.cache
def _stemmer():
    """NLTK's Porter stemmer, as rouge-score's ``DefaultTokenizer(use_stemmer=True)`` builds it."""
    from nltk.stem import porter

    return porter.PorterStemmer()


@functools.lru_cache(maxsize=_STEM_CACHE_SIZE)
def _token(word: str) -> str:
    """rouge-score's token for one word: its Porter stem if it has more than 3 characters."""
    return _stemmer().stem(word) if len(word) > 3 else word


def tokenize(text: str) -> list[str]:
    """``rouge_score.tokenize.tokenize(text, PorterStemmer())``, with the stems memoized."""
    words = NON_ALPHANUM_RE.sub(" ", text.lower()).split()
    return [token for token in map(_token, words) if VALID_TOKEN_RE.match(token)]


def _ngrams(tokens: Sequence[str | None], n: int) -> Counter:
    return Counter(zip(*(tokens[i:] for i in range(n))))


class _Reference(NamedTuple):
    tokens: list[str]
    unigrams: Counter
    bigrams: Counter
    positions: dict[str, int]  # token -> bit mask of its positions in ``tokens``
    stem_starts: frozenset[str]  # how a word must start to possibly stem to one of ``tokens``


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _reference(text: str) -> _Reference:
    tokens = tokenize(text)
    positions: dict[str, int] = {}
    for i, token in enumerate(tokens):
        positions[token] = positions.get(token, 0) | (1 << i)
    stem_starts = frozenset(token[: max(1, len(token) - _STEM_TAIL)] for token in tokens)
    return _Reference(tokens, _ngrams(tokens, 1), _ngrams(tokens, 2), positions, stem_starts)


def _output_tokens(text: str, refs: Sequence[_Reference]) -> list[str | None]:
    """``tokenize(text)``, except that tokens which cannot equal a token of ``refs`` may be None.

    Only equality with reference tokens and the number of tokens enter ROUGE,
    so this gives the same scores while skipping the stemmer for most words of
    an unrelated output.  (Every word yields one token: the stem of an ASCII
    letter/digit word is a non-empty ASCII letter/digit string.)
    """
    starts = frozenset().union(*(ref.stem_starts for ref in refs))
    lengths = {len(start) for start in starts}
    tokens: list[str | None] = []
    for word in NON_ALPHANUM_RE.sub(" ", text.lower()).split():
        if len(word) <= 3 or any(word[:n] in starts for n in lengths):
            tokens.append(_token(word))
        else:
            tokens.append(None)
    return tokens


def _lcs_length(ref: _Reference, tokens: Sequence[str | None]) -> int:
    """Length of the longest common subsequence of ``ref.tokens`` and ``tokens``.

    Bit-parallel (Allison & Dix 1986; Crochemore et al. 2001): bit i of ``v``
    is 0 where row i of the LCS table steps up, so the LCS length is the number
    of zero bits among the low ``len(ref.tokens)`` bits after every token.
    Carries may set bits above them; they never reach back down.
    """
    size = len(ref.tokens)
    v = (1 << size) - 1
    for token in tokens:
        u = v & ref.positions.get(token, 0)
        if u:
            v = (v + u) | (v - u)
    return size - (v & ((1 << size) - 1)).bit_count()


def _fmeasure(precision: float, recall: float) -> float:
    # rouge_score.scoring.fmeasure
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def _ngram_f1(ref_grams: Counter, grams: Counter) -> float:
    # rouge_score.rouge_scorer._score_ngrams
    overlap = sum(min(count, grams[gram]) for gram, count in ref_grams.items())
    precision = overlap / max(sum(grams.values()), 1)
    recall = overlap / max(sum(ref_grams.values()), 1)
    return _fmeasure(precision, recall)


def _lcs_f1(ref: _Reference, tokens: Sequence[str | None]) -> float:
    # rouge_score.rouge_scorer._score_lcs
    if not ref.tokens or not tokens:
        return 0.0
    lcs = _lcs_length(ref, tokens)
    return _fmeasure(lcs / len(tokens), lcs / len(ref.tokens))


def rouge_scores(texts: Sequence[str], samples: Sequence[Sample], names: frozenset[str]) -> dict[str, np.ndarray]:
    """ROUGE F1 of each text against the best reference of its sample, for the types in ``names``."""
    types = tuple(t for t in ROUGE_TYPES if t in names)
    if not types:
        return {}
    out = {name: np.zeros(len(texts), dtype=np.float64) for name in types}
    for i, (text, sample) in enumerate(zip(texts, samples, strict=True)):
        refs = [_reference(r) for r in sample.references if r.strip()]
        if not refs or not text.strip():
            continue  # nothing to compare: 0, the minimum
        tokens = _output_tokens(text, refs)
        if "rouge1" in names:
            unigrams = _ngrams(tokens, 1)
            out["rouge1"][i] = max(_ngram_f1(ref.unigrams, unigrams) for ref in refs)
        if "rouge2" in names:
            bigrams = _ngrams(tokens, 2)
            out["rouge2"][i] = max(_ngram_f1(ref.bigrams, bigrams) for ref in refs)
        if "rougeL" in names:
            out["rougeL"][i] = max(_lcs_f1(ref, tokens) for ref in refs)
    return out
