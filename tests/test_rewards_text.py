"""ROUGE, semantic similarity and diversity rewards: equal to their reference implementations."""

from __future__ import annotations

import collections
import functools

import gymnasium as gym
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import textgym  # noqa: F401
from textgym.data.base import Sample
from textgym.errors import ConfigError
from textgym.rewards import compute_metrics
from textgym.rewards import semantic as semantic_module
from textgym.rewards.diversity import diversity_scores
from textgym.rewards.rouge import rouge_scores
from textgym.rewards.semantic import encoder_dir, semantic_scores

PAIRS = [
    ("The cats were sitting on the mats.", ("A cat sat on the mat.",)),
    ("We propose a new parser that improves accuracy.", ("They propose a parser.", "The parser improves accuracy a lot.")),
    ("Completely unrelated words here", ("Nothing in common at all",)),
    ("running runs ran", ("run running",)),
]
ROUGE = frozenset({"rouge1", "rouge2", "rougeL"})


def _samples(pairs=PAIRS) -> tuple[list[str], list[Sample]]:
    return [t for t, _ in pairs], [Sample(f"s{i}", "doc", refs) for i, (_, refs) in enumerate(pairs)]


# -- equality with the reference libraries ------------------------------------------
def test_rouge_equals_rouge_score_best_over_references():
    from rouge_score.rouge_scorer import RougeScorer

    scorer = RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    texts, samples = _samples()
    ours = rouge_scores(texts, samples, ROUGE)
    for i, (text, sample) in enumerate(zip(texts, samples, strict=True)):
        per_ref = [scorer.score(ref, text) for ref in sample.references]
        for name in ROUGE:
            assert ours[name][i] == pytest.approx(max(s[name].fmeasure for s in per_ref), abs=1e-12)


def test_rouge_computes_only_the_names_asked_for():
    texts, samples = _samples()
    assert set(rouge_scores(texts, samples, frozenset({"rouge2"}))) == {"rouge2"}


def test_chrf_and_bleu_equal_sacrebleu():
    from sacrebleu.metrics import BLEU, CHRF

    texts, samples = _samples()
    ours = compute_metrics(["chrf", "bleu"], texts, samples)
    for i, (text, sample) in enumerate(zip(texts, samples, strict=True)):
        refs = list(sample.references)
        assert ours["chrf"][i] == pytest.approx(CHRF().sentence_score(text, refs).score / 100, abs=1e-12)
        assert ours["bleu"][i] == pytest.approx(
            BLEU(effective_order=True).sentence_score(text, refs).score / 100, abs=1e-12
        )


@functools.lru_cache(maxsize=1)
def _reference_encoder():
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(encoder_dir()), local_files_only=True)
    return tok, AutoModel.from_pretrained(str(encoder_dir()), local_files_only=True).eval()


def _reference_embedding(text: str) -> np.ndarray:
    """all-MiniLM-L6-v2 as sentence-transformers defines it, one text at a time."""
    import torch

    tok, model = _reference_encoder()
    enc = tok([text], truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        states = model(**enc).last_hidden_state[0]
    vec = states.mean(dim=0).numpy()  # one text, no padding: a plain mean
    return vec / np.linalg.norm(vec)


def test_semantic_similarity_equals_mean_pooled_cosine():
    texts, samples = _samples(PAIRS[:2])
    ours = semantic_scores(texts, samples, frozenset({"semantic_similarity"}))["semantic_similarity"]
    for i, (text, sample) in enumerate(zip(texts, samples, strict=True)):
        out = _reference_embedding(text)
        expected = max(float(out @ _reference_embedding(r)) for r in sample.references)
        assert ours[i] == pytest.approx(expected, abs=1e-5)


def test_semantic_similarity_batch_equals_one_by_one_and_encodes_once(monkeypatch):
    texts, samples = _samples()
    calls = []
    real = semantic_module.embed
    monkeypatch.setattr(semantic_module, "embed", lambda strings: calls.append(len(strings)) or real(strings))
    batched = semantic_scores(texts, samples, frozenset({"semantic_similarity"}))["semantic_similarity"]
    assert len(calls) == 1, "the whole batch (outputs and references) is encoded in one call"
    single = [semantic_scores([t], [s], frozenset({"semantic_similarity"}))["semantic_similarity"][0]
              for t, s in zip(texts, samples, strict=True)]
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_embed_batches_by_padded_tokens_and_matches_one_text_at_a_time():
    """Texts of very different lengths: every forward stays within the padded-token budget (a text
    longer than it goes alone), and each row equals the text encoded alone, in input order."""
    texts = ["Hi.", "word " * 300, "How are you today?", "A longer sentence about the weather " * 3, "Ok", "Yes!"]
    _, model = semantic_module._encoder()
    shapes = []
    hook = model.register_forward_pre_hook(lambda _m, _a, kw: shapes.append(tuple(kw["input_ids"].shape)), with_kwargs=True)
    try:
        vectors = semantic_module.embed(texts, max_batch_tokens=40)
    finally:
        hook.remove()
    assert sorted(rows for rows, _ in shapes) != [1] * len(texts), "short texts share a forward"
    assert sum(rows for rows, _ in shapes) == len(texts)
    assert all(rows * width <= 40 or rows == 1 for rows, width in shapes), shapes
    assert (1, 256) in shapes, "the long text is cut at 256 tokens and encoded alone"
    for text, vector in zip(texts, vectors, strict=True):
        np.testing.assert_allclose(vector, _reference_embedding(text), atol=1e-5)
    with pytest.raises(ValueError, match="max_batch_tokens must be >= 1, got 0"):
        semantic_module.embed(texts, max_batch_tokens=0)


# -- extremes ------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["rouge1", "rouge2", "rougeL", "chrf", "bleu", "semantic_similarity"])
def test_reference_against_itself_scores_the_maximum(name):
    refs = ["The proposed method outperforms strong baselines on three benchmarks.", "hello there, how are you?"]
    samples = [Sample(f"s{i}", "doc", (r,)) for i, r in enumerate(refs)]
    values = compute_metrics([name], refs, samples)[name]
    np.testing.assert_allclose(values, textgym.rewards.metric_info(name).high, atol=1e-5)


@pytest.mark.parametrize("name", ["rouge1", "rouge2", "rougeL", "chrf", "bleu", "semantic_similarity", "distinct_2"])
@pytest.mark.parametrize("empty", ["", "   "])
def test_empty_output_scores_the_minimum(name, empty):
    samples = [Sample("s", "doc", ("The proposed method outperforms strong baselines.",))]
    values = compute_metrics([name], [empty], samples)[name]
    assert values[0] == textgym.rewards.metric_info(name).low


def test_empty_output_has_no_repetition_and_no_reference_is_not_an_error():
    samples = [Sample("s", "doc", ())]
    out = compute_metrics(["repetition", "rougeL"], [""], samples)
    assert out["repetition"][0] == 0.0 and out["rougeL"][0] == 0.0
    assert compute_metrics(["semantic_similarity"], ["some words"], samples)["semantic_similarity"][0] == 0.0


# -- diversity -----------------------------------------------------------------------
def _by_definition(text: str) -> tuple[float, float]:
    words = text.lower().split()
    bigrams = list(zip(words, words[1:], strict=False))
    trigrams = list(zip(words, words[1:], words[2:], strict=False))
    distinct = len(set(bigrams)) / len(bigrams) if bigrams else 0.0
    repeated = sum(c - 1 for c in collections.Counter(trigrams).values())
    return distinct, -(repeated / len(trigrams)) if trigrams else 0.0


@pytest.mark.parametrize(
    "text", ["", "yes", "yes no", "a b a b a b", "I think I think I think so", "The the THE the", "all words differ here"]
)
def test_diversity_follows_its_definition(text):
    out = diversity_scores([text], [Sample("s", "p")], frozenset({"distinct_2", "repetition"}))
    distinct, repetition = _by_definition(text)
    assert out["distinct_2"][0] == pytest.approx(distinct)
    assert out["repetition"][0] == pytest.approx(repetition)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "c", "dog", "Dog"]), max_size=30))
def test_diversity_stays_in_its_registered_range(words):
    out = diversity_scores([" ".join(words)], [Sample("s", "p")], frozenset({"distinct_2", "repetition"}))
    assert 0.0 <= out["distinct_2"][0] <= 1.0
    assert -1.0 <= out["repetition"][0] <= 0.0


def test_looping_text_is_penalised_and_varied_text_is_not():
    out = diversity_scores(["go go go go go go go go", "we could meet for lunch tomorrow"], [Sample("s", "p")] * 2,
                           frozenset({"distinct_2", "repetition"}))
    assert out["repetition"][0] < -0.8 and out["repetition"][1] == 0.0
    assert out["distinct_2"][0] < 0.2 and out["distinct_2"][1] == 1.0


# -- reward= errors ---------------------------------------------------------------------
@pytest.mark.parametrize("env_id", ["textgym/Summarization-v0", "textgym/Dialogue-v0"])
def test_unknown_metric_name_lists_the_valid_names(env_id):
    with pytest.raises(ConfigError, match=r"unknown metric 'rouge_l'.*valid metric names.*'rougeL'"):
        gym.make(env_id, model="tiny-random", split="validation", reward={"rouge_l": 1.0})


@pytest.mark.parametrize("weight", ["high", None, float("nan"), True])
def test_weights_that_are_not_numbers_are_rejected(weight):
    with pytest.raises(ConfigError, match=r"weight of 'rougeL' must be a finite number"):
        gym.make("textgym/Summarization-v0", model="tiny-random", reward={"rougeL": weight})
