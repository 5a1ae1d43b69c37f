"""textgym/Summarization-v0: ACLSum splits, other data sources, truncation, rewards."""

from __future__ import annotations

import json
import math

import gymnasium as gym
import numpy as np
import pytest

import textgym  # noqa: F401
from textgym.data.files import iter_records
from textgym.errors import ConfigError, DataError
from textgym.tasks.summarization import ACLSUM_FILES, ASPECTS, SummarizationTask, aclsum_dir

ENV_ID = "textgym/Summarization-v0"
INFO_METRICS = {"rouge1", "rouge2", "rougeL", "length_ratio", "words", "distinct_2", "reward"}


def _rows(split: str) -> list[dict]:
    return [row for _, row in iter_records(aclsum_dir() / ACLSUM_FILES[split])]


def _run(env: gym.Env, token_ids: list[int]) -> tuple[float, dict]:
    """Play ``token_ids`` (then EOS) and return the summed reward and the final info."""
    total, info = 0.0, {}
    for token in [*token_ids, env.unwrapped.setup.eos_id]:
        _, reward, terminated, truncated, info = env.step(token)
        total += reward
        if terminated or truncated:
            break
    return total, info


# -- default data ---------------------------------------------------------------------
def test_aclsum_splits_are_the_datasets_own_and_disjoint():
    task = SummarizationTask()
    ids = {split: [s.id for s in task.samples(split)] for split in ACLSUM_FILES}
    for split, file_ids in ids.items():
        assert file_ids == [row["id"] for row in _rows(split)]
        assert len(set(file_ids)) == len(file_ids)
    assert not set(ids["train"]) & set(ids["validation"])
    assert not set(ids["train"]) & set(ids["test"])
    assert not set(ids["validation"]) & set(ids["test"])
    assert task.splits_info() == {split: len(_rows(split)) for split in ACLSUM_FILES}


@pytest.mark.parametrize("aspect", ASPECTS)
def test_aspect_picks_its_human_summary_and_its_instruction(aspect):
    task = SummarizationTask(aspect=aspect)
    sample, row = task.samples("validation")[3], _rows("validation")[3]
    assert sample.references == (row["summary"][aspect].strip(),)
    assert row["title"] in sample.prompt
    assert f"the {aspect} of this paper" in task.messages(sample)[0]["content"]


def test_aspect_all_asks_for_the_three_summaries_in_order():
    task = SummarizationTask(aspect="all")
    sample, row = task.samples("test")[0], _rows("test")[0]
    assert sample.references == (" ".join(row["summary"][a].strip() for a in ASPECTS),)
    assert "three sentences" in task.messages(sample)[0]["content"]


def test_more_sections_make_a_longer_document():
    short = SummarizationTask().samples("test")[0]
    long = SummarizationTask(sections=("abstract", "introduction", "conclusion")).samples("test")[0]
    assert long.prompt.startswith(short.prompt) and len(long.prompt) > 2 * len(short.prompt)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"aspect": "method"}, r"aspect must be one of \['challenge', 'approach', 'outcome', 'all'\], got 'method'"),
        ({"sections": ("abstract", "related work")}, r"sections must be distinct names from"),
        ({"sections": ()}, r"sections must be distinct names from"),
        ({"instruction": "  "}, r"instruction must be a non-empty string"),
        ({"data_files": "a.jsonl", "dataset": "xsum"}, r"at most one of data_files= and dataset="),
    ],
)
def test_bad_arguments_say_what_is_allowed(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        SummarizationTask(**kwargs)


# -- other data sources -------------------------------------------------------------------
def _write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_data_files_per_split_with_field_mapping(tmp_path):
    rows = [{"uid": f"d{i}", "text": f"Document number {i} about topic {i}.", "abstract": f"Topic {i}."} for i in range(6)]
    files = {"train": _write_jsonl(tmp_path / "train.jsonl", rows[:4]), "test": _write_jsonl(tmp_path / "test.jsonl", rows[4:])}
    env = gym.make(ENV_ID, model="tiny-random", split="test", data_files=files,
                   fields={"id": "uid", "prompt": "text", "references": "abstract"})
    samples = env.unwrapped.setup.samples
    assert [(s.id, s.prompt, s.references) for s in samples] == [
        (r["uid"], r["text"], (r["abstract"],)) for r in rows[4:]
    ]
    _, info = env.reset(seed=0)
    assert "Summarize the following document" in info["prompt_text"]


def test_one_data_file_is_split_without_overlap(tmp_path):
    rows = [{"id": f"d{i}", "document": f"Document {i}.", "summary": f"S{i}."} for i in range(200)]
    path = _write_jsonl(tmp_path / "all.jsonl", rows)
    task = SummarizationTask(data_files=path)
    splits = {split: {s.id for s in task.samples(split)} for split in ("train", "validation", "test")}
    assert sum(map(len, splits.values())) == len(rows)
    assert not (splits["train"] & splits["test"]) and not (splits["validation"] & splits["test"])
    assert len(splits["train"]) > len(splits["test"]) > 0


def test_csv_data_file(tmp_path):
    path = tmp_path / "docs.csv"
    path.write_text('id,document,summary\nd1,"A long, comma-laden document.",Short.\n', encoding="utf-8")
    task = SummarizationTask(data_files={"test": str(path)})
    sample = task.samples("test")[0]
    assert (sample.id, sample.prompt, sample.references) == ("d1", "A long, comma-laden document.", ("Short.",))


def test_missing_field_names_the_field_and_the_line(tmp_path):
    rows = [{"document": "One.", "summary": "1"}, {"document": "Two.", "summary": "2"}, {"document": "Three."}]
    path = _write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError, match=r"bad\.jsonl:3: missing field 'summary'"):
        gym.make(ENV_ID, model="tiny-random", data_files={"train": path})


def test_dataset_saved_to_disk(tmp_path):
    datasets = pytest.importorskip("datasets")
    data = {"article": [f"Article {i} says something new." for i in range(5)], "highlights": [f"News {i}." for i in range(5)]}
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict(data), "validation": datasets.Dataset.from_dict(data)}
    ).save_to_disk(str(tmp_path / "news"))
    env = gym.make(ENV_ID, model="tiny-random", split="validation", dataset=str(tmp_path / "news"),
                   fields={"prompt": "article", "references": "highlights"})
    samples = env.unwrapped.setup.samples
    assert [s.prompt for s in samples] == data["article"]
    assert [s.references for s in samples] == [(h,) for h in data["highlights"]]
    with pytest.raises(DataError, match=r"has no 'test' split; it has \['train', 'validation'\]"):
        SummarizationTask(dataset=str(tmp_path / "news")).samples("test")


# -- truncation ---------------------------------------------------------------------------
def test_long_document_is_cut_on_the_right_and_the_instruction_stays(tmp_path):
    words = [f"w{i}" for i in range(3000)]
    path = _write_jsonl(tmp_path / "long.jsonl", [{"document": "BEGIN " + " ".join(words) + " END", "summary": "x"}])
    env = gym.make(ENV_ID, model="tiny-random", data_files={"train": path}, max_prompt_tokens=96,
                   instruction="Summarize this, please, in one line.")
    obs, info = env.reset(seed=0)
    assert "Summarize this, please, in one line." in info["prompt_text"]
    assert "BEGIN w0 w1" in info["prompt_text"] and "END" not in info["prompt_text"]
    assert info["prompt_text"].rstrip().endswith("<|im_start|>assistant")
    assert 0 < obs["attention_mask"][:96].sum() <= 96


def test_instruction_that_cannot_fit_is_a_clear_error(tmp_path):
    path = _write_jsonl(tmp_path / "d.jsonl", [{"document": "Some document.", "summary": "x"}])
    with pytest.raises(ConfigError, match=r"max_prompt_tokens=8 is too small"):
        gym.make(ENV_ID, model="tiny-random", data_files={"train": path}, max_prompt_tokens=8)


# -- episodes and rewards --------------------------------------------------------------------
def test_random_episode_gives_finite_rewards_and_every_metric():
    env = gym.make(ENV_ID, model="tiny-random", split="test")
    env.reset(seed=1)
    rewards, done, info = [], False, {}
    while not done:
        _, reward, terminated, truncated, info = env.step(env.action_space.sample())
        rewards.append(reward)
        done = terminated or truncated
    assert np.isfinite(rewards).all() and set(info["metrics"]) == INFO_METRICS
    assert rewards[-1] == info["metrics"]["rougeL"]
    assert all(math.isfinite(v) for v in info["metrics"].values())


def test_writing_the_reference_scores_rouge_one():
    env = gym.make(ENV_ID, model="tiny-random", split="test")
    _, info = env.reset(seed=0)
    tokens = env.unwrapped.tokenizer(info["references"][0], add_special_tokens=False)["input_ids"]
    total, final = _run(env, tokens)
    assert total == pytest.approx(1.0) and final["metrics"]["rouge1"] == pytest.approx(1.0)
    assert final["metrics"]["length_ratio"] == pytest.approx(1.0)


def test_weighted_reward_is_the_weighted_sum_of_its_metrics():
    env = gym.make(ENV_ID, model="tiny-random", split="test", reward={"rougeL": 1.0, "length_penalty": 0.2})
    _, info = env.reset(seed=0)
    words = info["references"][0].split()
    tokens = env.unwrapped.tokenizer(" ".join(words[: len(words) // 2]), add_special_tokens=False)["input_ids"]
    total, final = _run(env, tokens)
    m = final["metrics"]
    assert total == pytest.approx(m["rougeL"] + 0.2 * m["length_penalty"])
    assert 0 < m["rougeL"] < 1 and m["length_penalty"] < 0


def test_dense_rewards_sum_to_the_sparse_reward():
    sparse = gym.make(ENV_ID, model="tiny-random", split="test")
    dense = gym.make(ENV_ID, model="tiny-random", split="test", reward_mode="dense")
    _, info = sparse.reset(seed=3)
    dense.reset(seed=3)
    tokens = sparse.unwrapped.tokenizer(info["references"][0], add_special_tokens=False)["input_ids"][:12]
    assert _run(dense, tokens)[0] == pytest.approx(_run(sparse, tokens)[0])
