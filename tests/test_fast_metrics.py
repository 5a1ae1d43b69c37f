"""The fast chrF / BLEU / TER / ROUGE give exactly the reference implementations' numbers.

Every comparison is exact equality of floats: the fast paths perform the same
float operations as sacrebleu and rouge-score, so any difference is a bug.
"""

from __future__ import annotations

import functools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rouge_score.rouge_scorer import RougeScorer, _lcs_table
from rouge_score.tokenize import NON_ALPHANUM_RE
from sacrebleu.metrics import BLEU, CHRF, TER
from sacrebleu.metrics.lib_ter import translation_edit_rate

from textgym.data.base import Sample
from textgym.rewards import fast_metrics
from textgym.rewards.rouge import _STEM_TAIL, ROUGE_TYPES, _lcs_length, _reference, _stemmer, rouge_scores, tokenize
from textgym.tasks.summarization import SummarizationTask
from textgym.tasks.translation import TranslationTask

SACREBLEU = {"chrf": CHRF(), "bleu": BLEU(effective_order=True), "ter": TER()}
FAST = {"chrf": fast_metrics.chrf_scores, "bleu": fast_metrics.bleu_scores, "ter": fast_metrics.ter_scores}


def assert_sacrebleu_equal(hyps: list[str], refs: list[list[str]]) -> None:
    """The batch scores equal sacrebleu's sentence scores, one by one, exactly."""
    for name, fast in FAST.items():
        ours = fast(hyps, refs)
        for hyp, r, value in zip(hyps, refs, ours, strict=True):
            expected = SACREBLEU[name].sentence_score(hyp, r).score
            assert value == expected, f"{name}({hyp!r}, {r!r}) = {value!r}, sacrebleu: {expected!r}"


# -- hand-picked edge cases ----------------------------------------------------------------
EDGE_CASES = [
    ("", ["Le chat est assis."]),  # empty hypothesis
    ("Le chat est assis.", [""]),  # empty reference
    ("", [""]),
    ("   \t\n ", ["  "]),  # whitespace only
    ("Le chat", ["Le chat est assis.", "Un chat s'assied.", "Le chat"]),  # several references, one exact
    ("chat chat chat chat", ["chat", "chat chat"]),  # clipped counts
    ("aaaaaaaaaa", ["aaaaaa", "aaa"]),  # overlapping character n-grams
    ("abab abab", ["babab"]),
    ("Hello, world! (x+y)/2 = 3.14; a-1 1-a 1,000 .5 5. x.y", ["Hello world: (x + y) / 2 = 3,14 - a-1 1 - a"]),
    ("&quot;Tom&quot; &amp; &lt;Jerry&gt; <skipped> end-\nof-line\nnext", ['"Tom" & <Jerry> end-of-line next']),
    ("%(name)s a {count} messages %s", ["%(name)s, vous avez {count} messages %s"]),
    ("déjà vu — l'été à Noël… « très » ｆｕｌｌ", ["Déjà vu, l'été à Noël « très »"]),
    ("猫が座った。猫", ["猫が座っている。", "座った猫"]),
    ("🙂🙂 🙃 x\u00a0y\u2003z", ["🙂 x y z"]),
    ("lone \ud800 surrogate", ["lone \ud800 surrogate!"]),
    ("the cat sat on the mat", ["on the mat the cat sat"]),  # TER shifts
    ("a b c d e f g h", ["h g f e d c b a"]),
    ("x", ["y"]),
    ("one two", ["one two three four five six seven eight nine ten eleven twelve thirteen fourteen"]),
]


@pytest.mark.parametrize(("hyp", "refs"), EDGE_CASES)
def test_edge_cases_equal_sacrebleu(hyp, refs):
    assert_sacrebleu_equal([hyp], [refs])


def test_a_batch_of_edge_cases_equals_sacrebleu():
    """Scored together, pairs must not leak into each other (the chrF batch counts n-grams jointly)."""
    assert_sacrebleu_equal([h for h, _ in EDGE_CASES], [r for _, r in EDGE_CASES])


def test_references_must_be_a_non_empty_sequence():
    for bad in ([], "a reference"):
        with pytest.raises(ValueError, match="non-empty sequence of reference strings"):
            fast_metrics.chrf_scores(["text"], [bad])


# -- random strings --------------------------------------------------------------------------
WORDS = ["le", "chat", "Chat", "est", "assis", ".", ",", "sur", "la", "natte", "1", "-", "2.5", "&amp;", "l'été"]
# few distinct characters, so that n-grams repeat and match; punctuation the tokenizers treat specially
SMALL_ALPHABET = "ab é.,-:;'\"&()/0123456789\n\t\u00a0"

word_text = st.lists(st.sampled_from(WORDS), max_size=25).map(" ".join)
small_text = st.text(alphabet=SMALL_ALPHABET, max_size=40)
any_text = st.text(max_size=40)  # any code point except surrogates
text = st.one_of(word_text, small_text, any_text)
pairs = st.lists(st.tuples(text, st.lists(text, min_size=1, max_size=3)), min_size=1, max_size=8)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pairs)
def test_random_batches_equal_sacrebleu(batch):
    assert_sacrebleu_equal([h for h, _ in batch], [r for _, r in batch])


@settings(max_examples=200, deadline=None)
@given(st.one_of(small_text, st.text(alphabet="a1-.,&;quotampltg<>skiped\n ", max_size=40)))
def test_13a_tokens_equal_sacrebleu(text):
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    assert fast_metrics._bleu_tokens(text) == tuple(Tokenizer13a()(text.rstrip()).split())


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from("abcd"), max_size=30), st.lists(st.sampled_from("abce"), max_size=30))
def test_ter_edits_equal_sacrebleu_on_word_lists(hyp, ref):
    """Few distinct words: many shifts to search; the id-mapped search must give the same count."""
    assert fast_metrics._edits(hyp, ref) == translation_edit_rate(hyp, ref)[0]


def test_ter_without_shared_words():
    """The closed form max(lengths) for disjoint words equals sacrebleu's beam search, up to 25x longer refs."""
    for n_hyp in range(0, 13):
        for n_ref in [*range(0, 40), 25 * n_hyp - 1, 25 * n_hyp, 25 * n_hyp + 1]:
            hyp, ref = [f"h{i % 3}" for i in range(n_hyp)], [f"r{i % 4}" for i in range(n_ref)]
            assert fast_metrics._edits(hyp, ref) == translation_edit_rate(hyp, ref)[0], (n_hyp, n_ref)


# -- real translations -----------------------------------------------------------------------
@functools.cache
def _french_pairs() -> list[tuple[str, list[str]]]:
    """Catalog strings of Translation-v0: exact, truncated, shuffled and mixed-up answers."""
    samples = TranslationTask().samples("test")[:50]
    out = []
    for i, s in enumerate(samples):
        ref = s.references[0]
        words = ref.split()
        other = samples[(i + 1) % len(samples)].references[0]
        out += [
            (ref, list(s.references)),
            (" ".join(words[: len(words) // 2]), list(s.references)),
            (" ".join(words[1:] + words[:1]), list(s.references)),
            (f"{other[: len(other) // 2]} {ref[: len(ref) // 3]}", [ref, other]),
            (s.prompt, list(s.references)),  # the English source
        ]
    # sacrebleu's TER shift search takes seconds on the longest mixed-up pairs
    return [(hyp, refs) for hyp, refs in out if sum(len(r.split()) for r in refs) <= 40]


def test_french_translations_equal_sacrebleu():
    pairs = _french_pairs()
    assert len(pairs) >= 200
    assert_sacrebleu_equal([h for h, _ in pairs], [r for _, r in pairs])


# -- ROUGE ---------------------------------------------------------------------------------------
ROUGE = frozenset(ROUGE_TYPES)


@functools.cache
def _rouge_scorer() -> RougeScorer:
    return RougeScorer(list(ROUGE_TYPES), use_stemmer=True)


def assert_rouge_equal(texts: list[str], samples: list[Sample]) -> None:
    ours = rouge_scores(texts, samples, ROUGE)
    for i, (text, sample) in enumerate(zip(texts, samples, strict=True)):
        refs = [r for r in sample.references if r.strip()]
        expected = _rouge_scorer().score_multi(refs, text) if refs and text.strip() else None
        for name in ROUGE_TYPES:
            value = expected[name].fmeasure if expected else 0.0
            assert ours[name][i] == value, f"{name}({text!r}, {sample.references!r}) = {ours[name][i]!r}, rouge-score: {value!r}"


ENGLISH = ["the", "cats", "cat", "running", "runs", "ran", "generalization", "generalize", "models", "model",
           "of", "a", "baseline", "baselines", "improves", "improved", "3", "x2", "dying", "die", "skies", "sky",
           "possibility", "possible", "relational", "relate"]
english_text = st.lists(st.sampled_from(ENGLISH), max_size=30).map(" ".join)
rouge_text = st.one_of(english_text, st.text(alphabet="aAbB1 .,-é\n", max_size=40), st.text(max_size=30))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(rouge_text, st.lists(rouge_text, max_size=3)), min_size=1, max_size=6))
def test_random_rouge_equals_rouge_score(batch):
    samples = [Sample(f"s{i}", "doc", tuple(refs)) for i, (_, refs) in enumerate(batch)]
    assert_rouge_equal([t for t, _ in batch], samples)


def test_rouge_on_aclsum_equals_rouge_score():
    samples = SummarizationTask().samples("test")[:40]
    texts = []
    for s in samples:
        abstract = s.prompt.split("\n\n", 1)[-1]
        texts.append(abstract[:400])  # lead of the abstract: a real, partly matching summary
    texts += [s.references[0] for s in samples[:10]] + [" ".join(s.references[0].split()[::-1]) for s in samples[:10]]
    assert_rouge_equal(texts, samples + samples[:10] + samples[:10])


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from("abcdef"), max_size=80), st.lists(st.sampled_from("abcxyz"), max_size=80))
def test_bit_parallel_lcs_equals_the_table(ref, can):
    """Including references longer than 64 tokens (several machine words in the bit vector)."""
    reference = _reference(" ".join(ref))
    assert reference.tokens == ref
    assert _lcs_length(reference, can) == _lcs_table(ref, can)[-1][-1]


def test_tokenize_equals_rouge_score():
    from rouge_score.tokenizers import DefaultTokenizer

    text = "The Generalization of RUNNING models improved 3x baselines; naïve café-style x_y 2.5% it's"
    assert tokenize(text) == DefaultTokenizer(use_stemmer=True).tokenize(text)


# Porter suffixes (and parts of them), so that words go through every step of the stemmer
SUFFIXES = ["", "s", "es", "ies", "sses", "ied", "eed", "ed", "ing", "ating", "bling", "izing", "ly", "y", "ational",
            "tional", "enci", "anci", "izer", "bli", "alli", "entli", "eli", "ousli", "ization", "ation", "ator",
            "alism", "iveness", "fulness", "ousness", "aliti", "iviti", "biliti", "fulli", "logi", "icate", "ative",
            "alize", "iciti", "ical", "ful", "ness", "al", "ance", "ence", "er", "ic", "able", "ible", "ant", "ement",
            "ment", "ent", "sion", "tion", "ou", "ism", "ate", "iti", "ous", "ive", "ize", "e", "ll", "fully"]
porter_words = st.one_of(
    st.sampled_from(["dying", "lying", "tying", "skies", "innings", "outings", "cannings", "proceed", "sses"]),
    st.text(alphabet="abcdeilnorstuyz0", min_size=4, max_size=14),
    st.builds(lambda stem, a, b: stem + a + b, st.text(alphabet="abcdeilmnoprstuvyz", min_size=1, max_size=6),
              st.sampled_from(SUFFIXES), st.sampled_from(SUFFIXES)),
)


def _check_stem(word: str) -> None:
    stem = _stemmer().stem(word)
    keep = max(1, len(stem) - _STEM_TAIL)
    assert stem[:keep] == word[:keep], (word, stem)
    assert stem and stem.isalnum() and stem.isascii(), (word, stem)


@settings(max_examples=1000, deadline=None)
@given(porter_words)
def test_stems_keep_the_start_of_the_word(word):
    """What rouge.py relies on to skip the stemmer: a stem keeps its word's first character and
    agrees with the word except in at most its last _STEM_TAIL characters."""
    _check_stem(word)


def test_stems_of_real_words_keep_the_start_of_the_word():
    text = " ".join(s.prompt for s in SummarizationTask().samples("test"))
    words = {w for w in NON_ALPHANUM_RE.sub(" ", text.lower()).split() if len(w) > 3}
    assert len(words) > 2000
    for word in sorted(words):
        _check_stem(word)
