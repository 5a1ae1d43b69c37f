"""Sentence-level chrF, BLEU and TER with exactly sacrebleu's numbers, faster.

sacrebleu's ``sentence_score`` rebuilds every n-gram of the hypothesis and of
the references as Python objects on each call; scoring an env's finished
episodes spent most of its time there.  The batch functions here return the
same floats, bit for bit (``tests/test_fast_metrics.py`` checks it), for the
settings textgym uses -- ``CHRF()``, ``BLEU(effective_order=True)`` and
``TER()`` -- and only look at what can change the result:

* chrF: the character n-grams of a whole batch are counted with numpy
  (``_batch_char_matches``), and an n-gram of the hypothesis is only looked up
  if its (n-1)-gram prefix occurs in the reference;
* BLEU: each reference's n-gram counts are computed once (an LRU cache keyed
  by the references: a task scores the same references many times); the
  hypothesis is tokenized as sacrebleu's 13a tokenizer does (its per-character
  rule with ``str.translate`` instead of a regular expression) and its n-grams
  are pruned the same way as chrF's;
* TER: sacrebleu's own search runs (its edit-distance beam and shift
  heuristics are intricate, so they are reused, not reimplemented), on word ids
  in which every word absent from the other sentence shares one id.  TER only
  tests words for equality, so the result is unchanged, and hypotheses that
  differ only in unmatched words share one memoized result.  A hypothesis
  without any word of the reference needs no search at all (closed form).

Scores are on sacrebleu's 0-100 scale.  Each function takes a batch of
hypotheses and, for each, a non-empty sequence of references (like
``Metric.sentence_score``).
"""

from __future__ import annotations

import functools
import math
import re
from collections import Counter
from collections.abc import Sequence

import numpy as np
from sacrebleu.metrics.lib_ter import translation_edit_rate

CHRF_CHAR_ORDER = 6  # sacrebleu CHRF defaults: char_order=6, word_order=0, beta=2
CHRF_BETA = 2
BLEU_MAX_ORDER = 4  # sacrebleu BLEU default max_ngram_order

_CACHE_SIZE = 4096  # references (or reference tuples) kept per metric
_TER_BEAM_WIDTH = 25  # sacrebleu's TER edit-distance beam: cells kept on either side of the diagonal


def _check_refs(refs: Sequence[str]) -> None:
    if isinstance(refs, str) or not refs:
        raise ValueError(f"expected a non-empty sequence of reference strings, got {refs!r}")


# -- chrF -------------------------------------------------------------------------------


def _code_points(strings: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Code points of the concatenated ``strings`` and the end offset of each string in them."""
    # surrogatepass: a lone surrogate (e.g. from undecodable bytes) is a character like any other
    joined = "".join(strings).encode("utf-32-le", "surrogatepass")
    codes = np.frombuffer(joined, dtype=np.uint32).astype(np.int64)
    ends = np.cumsum(np.fromiter(map(len, strings), dtype=np.int64, count=len(strings)))
    return codes, ends


def _positions(ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each position of concatenated segments: its segment and the end offset of that segment."""
    lengths = np.diff(ends, prepend=0)
    segment = np.repeat(np.arange(len(ends)), lengths)
    return segment, ends[segment]


def _batch_char_matches(hyps: Sequence[str], refs: Sequence[str], max_order: int) -> np.ndarray:
    """Clipped character n-gram matches of ``hyps[p]`` against ``refs[p]``, shape (pairs, max_order).

    ``matches[p, n - 1]`` is the sum over the order-n n-grams g of min(count of
    g in hyps[p], count of g in refs[p]), computed for all pairs at once.  Each
    distinct reference n-gram gets a rank; an order-n n-gram is then the exact
    integer key ``rank of its (n-1)-gram prefix * UNIT + its last code point``
    (the "(0)-gram" of pair p has rank p, so keys never mix pairs).  Reference
    keys are ranked with ``np.unique``; hypothesis keys are looked up in them,
    and only the hypothesis positions whose (n-1)-gram was found go on to the
    next order.  Ranks are below the number of reference characters, so the
    keys fit in int64 for any realistic batch.
    """
    pairs = len(hyps)
    matches = np.zeros((pairs, max_order), dtype=np.int64)
    ref_codes, ref_ends = _code_points(refs)
    hyp_codes, hyp_ends = _code_points(hyps)
    unit = 0x110000  # one more than the largest code point
    ref_pos = np.arange(len(ref_codes))
    ref_seg, ref_end = _positions(ref_ends)
    ref_rank = ref_seg  # rank of the (n-1)-gram starting at each of ref_pos
    owner = np.arange(pairs)  # pair of each ranked (n-1)-gram
    hyp_pos = np.arange(len(hyp_codes))
    hyp_seg, hyp_end = _positions(hyp_ends)
    hyp_rank = hyp_seg
    for n in range(1, max_order + 1):
        # positions where an n-gram fits in its segment
        keep = ref_pos + n <= ref_end[ref_pos]
        ref_pos, ref_rank = ref_pos[keep], ref_rank[keep]
        keep = hyp_pos + n <= hyp_end[hyp_pos]
        hyp_pos, hyp_rank = hyp_pos[keep], hyp_rank[keep]
        if not len(ref_pos) or not len(hyp_pos):
            break  # no n-gram of this order (or higher) can match
        ref_keys = ref_rank * unit + ref_codes[ref_pos + n - 1]
        grams, ref_rank, ref_counts = np.unique(ref_keys, return_inverse=True, return_counts=True)
        owner = owner[grams // unit]
        hyp_keys = hyp_rank * unit + hyp_codes[hyp_pos + n - 1]
        found = np.minimum(np.searchsorted(grams, hyp_keys), len(grams) - 1)
        hit = grams[found] == hyp_keys
        hyp_pos, hyp_rank = hyp_pos[hit], found[hit]
        hyp_counts = np.bincount(hyp_rank, minlength=len(grams))
        clipped = np.minimum(hyp_counts, ref_counts)
        matches[:, n - 1] = np.bincount(owner, weights=clipped, minlength=pairs)  # exact: integers < 2**53
    return matches


def chrf_scores(hyps: Sequence[str], refs: Sequence[Sequence[str]]) -> list[float]:
    """``[CHRF().sentence_score(h, r).score for h, r in zip(hyps, refs)]``: chrF2 against the best reference.

    The F-score is sacrebleu's default (eps_smoothing=False): precision and
    recall averaged over the orders both sides have ("effective order"), then
    F-beta; the array arithmetic below performs the same float operations in
    the same order as sacrebleu's scalar code, so the results are identical.
    """
    for r in refs:
        _check_refs(r)
    # chrF ignores whitespace (sacrebleu's whitespace=False); one (hyp, ref) pair per reference
    pair_hyps = ["".join(h.split()) for h, r in zip(hyps, refs, strict=True) for _ in r]
    pair_refs = ["".join(ref.split()) for r in refs for ref in r]
    matches = _batch_char_matches(pair_hyps, pair_refs, CHRF_CHAR_ORDER)
    order = np.arange(1, CHRF_CHAR_ORDER + 1)
    n_ref = np.maximum(np.fromiter(map(len, pair_refs), np.int64, len(pair_refs))[:, None] - order + 1, 0)
    n_hyp = np.maximum(np.fromiter(map(len, pair_hyps), np.int64, len(pair_hyps))[:, None] - order + 1, 0)
    n_hyp[n_ref == 0] = 0  # sacrebleu counts no hypothesis n-grams of an order the reference lacks
    both = (n_hyp > 0) & (n_ref > 0)
    avg_prec = np.zeros(len(pair_hyps))
    avg_rec = np.zeros(len(pair_hyps))
    for k in range(CHRF_CHAR_ORDER):  # accumulate order by order, as sacrebleu (adding 0.0 changes nothing)
        avg_prec += np.divide(matches[:, k], n_hyp[:, k], out=np.zeros(len(pair_hyps)), where=both[:, k])
        avg_rec += np.divide(matches[:, k], n_ref[:, k], out=np.zeros(len(pair_hyps)), where=both[:, k])
    effective_order = both.sum(axis=1)
    np.divide(avg_prec, effective_order, out=avg_prec, where=effective_order > 0)
    np.divide(avg_rec, effective_order, out=avg_rec, where=effective_order > 0)
    factor = CHRF_BETA**2
    f_score = np.zeros(len(pair_hyps))
    nonzero = (avg_prec + avg_rec) != 0
    f_score[nonzero] = (1 + factor) * avg_prec[nonzero] * avg_rec[nonzero]
    f_score[nonzero] /= (factor * avg_prec[nonzero]) + avg_rec[nonzero]
    f_score *= 100
    # best reference per hypothesis (sacrebleu recomputes the winner's F: the same float)
    first_pair = np.cumsum([0, *map(len, refs)])[:-1]
    return np.maximum.reduceat(f_score, first_pair).tolist() if len(refs) else []


# -- BLEU -------------------------------------------------------------------------------


def _matched_counts(units: Sequence, ref_grams: dict, n: int, starts: list[int]) -> tuple[int, list[int]]:
    """Clipped matches of the order-``n`` n-grams of ``units`` against ``ref_grams``.

    Only n-grams starting at ``starts`` (the positions whose (n-1)-gram matched)
    are looked at; returns the clipped count sum(min(hyp count, ref count))
    and the positions whose n-gram matched, for the next order.
    """
    kept = [i for i in starts if units[i : i + n] in ref_grams]
    counts = Counter([units[i : i + n] for i in kept])
    return sum(min(c, ref_grams[g]) for g, c in counts.items()), kept


# mteval-v13a tokenization, sacrebleu's default for BLEU.  Its first rule puts
# spaces around every character of a class of ASCII punctuation (and around
# spaces); done with re.sub that costs a Python call per match, so it is done
# with str.translate here.  The other rules are regular expressions as in mteval.
_13A_SPACED = str.maketrans(
    {
        chr(code): f" {chr(code)} "
        for low, high in (("{", "~"), ("[", "`"), (" ", "&"), ("(", "+"), (":", "@"), ("/", "/"))
        for code in range(ord(low), ord(high) + 1)
    }
)
_13A_RULES = (
    (re.compile(r"([^0-9])([\.,])"), r"\1 \2 "),  # period and comma unless preceded by a digit
    (re.compile(r"([\.,])([^0-9])"), r" \1 \2"),  # period and comma unless followed by a digit
    (re.compile(r"([0-9])(-)"), r"\1 \2 "),  # dash preceded by a digit
)


def _bleu_tokens(text: str) -> tuple[str, ...]:
    """Words of ``text`` after sacrebleu's default BLEU preprocessing (rstrip, then 13a tokenization)."""
    line = text.rstrip().replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    if "&" in line:
        line = line.replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
    line = f" {line} ".translate(_13A_SPACED)
    for pattern, replacement in _13A_RULES:
        line = pattern.sub(replacement, line)
    return tuple(line.split())


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _bleu_references(refs: tuple[str, ...]) -> tuple[tuple[int, ...], list[dict[tuple[str, ...], int]]]:
    """Token counts of each reference and, per order, the max count of each n-gram over the references."""
    lengths = []
    grams: list[dict[tuple[str, ...], int]] = [{} for _ in range(BLEU_MAX_ORDER)]
    for ref in refs:
        tokens = _bleu_tokens(ref)
        lengths.append(len(tokens))
        for n, merged in enumerate(grams, start=1):
            for gram, count in Counter([tokens[i : i + n] for i in range(len(tokens) - n + 1)]).items():
                merged[gram] = max(merged.get(gram, 0), count)
    return tuple(lengths), grams


def bleu_scores(hyps: Sequence[str], refs: Sequence[Sequence[str]]) -> list[float]:
    """``[BLEU(effective_order=True).sentence_score(h, r).score for h, r in zip(hyps, refs)]``."""
    return [_bleu(h, r) for h, r in zip(hyps, refs, strict=True)]


def _bleu(hyp: str, refs: Sequence[str]) -> float:
    """Sentence BLEU with sacrebleu's defaults: 13a tokens, exp smoothing, effective order."""
    _check_refs(refs)
    ref_lens, ref_grams = _bleu_references(tuple(refs))
    tokens = _bleu_tokens(hyp)
    sys_len = len(tokens)
    # closest reference length, the shorter one on ties
    ref_len = min(ref_lens, key=lambda length: (abs(sys_len - length), length))

    correct, starts = [], list(range(sys_len))
    for n, grams in enumerate(ref_grams, start=1):
        matches, starts = _matched_counts(tokens, grams, n, starts)
        correct.append(matches)
    if not any(correct):
        return 0.0
    total = [max(sys_len - n + 1, 0) for n in range(1, BLEU_MAX_ORDER + 1)]

    brevity = 1.0
    if sys_len < ref_len:
        brevity = math.exp(1 - ref_len / sys_len)  # sys_len > 0: some n-gram matched
    # exp smoothing: the k-th order without a match gets precision 100 / (2^k * total);
    # effective order: orders the hypothesis is too short for are left out
    log_precisions = []
    smooth = 1.0
    for n_correct, n_total in zip(correct, total):
        if n_total == 0:
            break
        if n_correct == 0:
            smooth *= 2
            log_precisions.append(math.log(100.0 / (smooth * n_total)))
        else:
            log_precisions.append(math.log(100.0 * n_correct / n_total))
    return brevity * math.exp(sum(log_precisions) / len(log_precisions))


# -- TER --------------------------------------------------------------------------------


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _ter_words(ref: str) -> tuple[str, ...]:
    # sacrebleu's TER() defaults: lower-case, split on whitespace, no normalization
    return tuple(ref.lower().split())


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _ter_edits(hyp_ids: tuple[int, ...], ref_ids: tuple[int, ...]) -> int:
    return translation_edit_rate(list(hyp_ids), list(ref_ids))[0]


def _edits(hyp_words: Sequence[str], ref_words: Sequence[str]) -> int:
    """sacrebleu's TER edit count (shifts + edit distance) of ``hyp_words`` against ``ref_words``.

    TER only compares hypothesis words with reference words for equality, so
    words are replaced by ids: one per word the two sides share, -1 for every
    other hypothesis word and -2 for every other reference word.
    """
    hyp_set = set(hyp_words)
    shared: dict[str, int] = {}
    for word in ref_words:
        if word in hyp_set:
            shared.setdefault(word, len(shared))
    if not shared and (not hyp_words or len(ref_words) <= _TER_BEAM_WIDTH * len(hyp_words)):
        # No word in common: no shift applies and every pair of words is a
        # mismatch, so the edit distance is max(lengths) (a substitution per
        # aligned pair, plus the surplus).  sacrebleu's beam keeps, in row i,
        # the columns within 25 of floor(i * len(ref) / len(hyp)); the path
        # that ends row i at that column (diagonal steps, plus insertions when
        # the reference is longer) has that cost and stays inside the beam as
        # long as a row advances at most 25 columns, i.e. for references up to
        # 25 times longer (and checked against sacrebleu in test_ter_without_shared_words).
        return max(len(hyp_words), len(ref_words))
    hyp_ids = tuple(shared.get(word, -1) for word in hyp_words)
    ref_ids = tuple(shared.get(word, -2) for word in ref_words)
    return _ter_edits(hyp_ids, ref_ids)


def ter_scores(hyps: Sequence[str], refs: Sequence[Sequence[str]]) -> list[float]:
    """``[TER().sentence_score(h, r).score for h, r in zip(hyps, refs)]`` (lower is better)."""
    return [_ter(h, r) for h, r in zip(hyps, refs, strict=True)]


def _ter(hyp: str, refs: Sequence[str]) -> float:
    """Fewest edits over the references / mean reference length, times 100."""
    _check_refs(refs)
    hyp_words = tuple(hyp.lower().split())
    best_edits = None
    ref_words_total = 0
    for ref in refs:
        ref_words = _ter_words(ref)
        edits = _edits(hyp_words, ref_words)
        ref_words_total += len(ref_words)
        best_edits = edits if best_edits is None else min(best_edits, edits)
    avg_ref_len = ref_words_total / len(refs)
    if avg_ref_len > 0:
        score = best_edits / avg_ref_len
    else:
        score = 1.0 if best_edits > 0 else 0.0  # empty references
    return 100 * score
