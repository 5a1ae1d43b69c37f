"""textgym/Dialogue-v0: chit-chat samples, splits by conversation, roles, truncation, rewards."""

from __future__ import annotations

import json
import math

import gymnasium as gym
import numpy as np
import pytest

import textgym  # noqa: F401
from textgym.errors import ConfigError, DataError
from textgym.tasks.dialogue import DEFAULT_WEIGHTS, DialogueTask, chitchat_conversations, chitchat_path, merge_turns

ENV_ID = "textgym/Dialogue-v0"
SPLITS = ("train", "validation", "test")


@pytest.fixture(scope="module")
def task() -> DialogueTask:
    return DialogueTask()


def _write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


# -- default data ---------------------------------------------------------------------
def test_no_conversation_is_in_two_splits_and_every_turn_is_used(task):
    conversations = {split: {s.meta["conversation"] for s in task.samples(split)} for split in SPLITS}
    assert not conversations["train"] & conversations["validation"]
    assert not conversations["train"] & conversations["test"]
    assert not conversations["validation"] & conversations["test"]
    corpus = chitchat_conversations(str(chitchat_path()))
    assert sum(len(task.samples(split)) for split in SPLITS) == sum(len(turns) - 1 for _, turns in corpus)
    sizes = task.splits_info()
    assert sizes["train"] > 5 * sizes["test"] > 0 and sizes["validation"] > 0


def test_splits_are_deterministic_across_instances(task):
    assert [s.id for s in DialogueTask(context_turns=2).samples("test")] == [s.id for s in task.samples("test")]


def test_sample_is_the_last_context_turns_and_the_next_turn(task):
    corpus = dict(chitchat_conversations(str(chitchat_path())))
    for sample in task.samples("validation")[:300]:
        turns, i = corpus[sample.meta["conversation"]], sample.meta["turn"]
        assert sample.references == (turns[i],)
        assert sample.prompt.split("\n") == list(turns[max(0, i - 4) : i])


def test_merge_turns_joins_one_speakers_messages_and_drops_empty_ones():
    pairs = [("a", "hi"), ("a", "there"), ("b", ""), ("a", "you?"), ("b", "fine\nthanks")]
    assert merge_turns(pairs) == ("hi there you?", "fine thanks")


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "4"])
def test_context_turns_below_one_is_a_clear_error(bad):
    with pytest.raises(ConfigError, match=r"context_turns must be an integer >= 1.*got"):
        gym.make(ENV_ID, model="tiny-random", context_turns=bad)


# -- roles and prompt -----------------------------------------------------------------
def test_agent_speaks_as_assistant_and_the_context_ends_with_the_user(tmp_path):
    path = _write_jsonl(tmp_path / "c.jsonl", [{"id": "c1", "turns": ["t0", "t1", "t2", "t3", "t4", "t5"]}])
    task = DialogueTask(context_turns=3, data_files={"test": path})
    sample = task.samples("test")[-1]  # context t2 t3 t4 -> reply t5
    assert sample.references == ("t5",)
    messages = task.messages(sample)
    assert messages[0]["role"] == "system"
    assert [(m["role"], m["content"]) for m in messages[1:]] == [("user", "t2"), ("assistant", "t3"), ("user", "t4")]
    # t3 was written by the agent's speaker, t5 too: same role on both
    first = task.samples("test")[0]  # context t0 -> reply t1
    assert [(m["role"], m["content"]) for m in task.messages(first)[1:]] == [("user", "t0")]


def test_prompt_text_uses_the_chat_template():
    env = gym.make(ENV_ID, model="tiny-random", split="test", context_turns=3)
    _, info = env.reset(seed=0)
    text = info["prompt_text"]
    assert text.startswith("<|im_start|>system\nYou are chatting casually")
    assert text.rstrip().endswith("<|im_end|>\n<|im_start|>assistant")
    last_turn = info["prompt"].split("\n")[-1]
    assert f"<|im_start|>user\n{last_turn}<|im_end|>" in text


def test_without_a_chat_template_the_prompt_is_a_transcript(tmp_path):
    path = _write_jsonl(tmp_path / "c.jsonl", [{"turns": ["hello", "hi, how are you?", "good, you?", "great"]}])
    task = DialogueTask(data_files={"train": path})
    plain = type("Plain", (), {"chat_template": None})()
    assert task.format_prompt(task.samples("train")[-1], plain).endswith(
        "Friend: hello\nYou: hi, how are you?\nFriend: good, you?\nYou:"
    )


def test_long_context_is_cut_on_the_left_keeping_the_latest_turn(tmp_path):
    turns = [" ".join(f"old{j}" for j in range(400)), "the latest message", "reply"]
    path = _write_jsonl(tmp_path / "c.jsonl", [{"turns": turns}])
    env = gym.make(ENV_ID, model="tiny-random", data_files={"train": path}, max_prompt_tokens=80)
    obs, info = env.reset(options={"sample_id": "c.jsonl:1:2"})
    text = info["prompt_text"]
    assert "You are chatting casually with a friend" in text  # the instruction is never cut
    assert "<|im_start|>user\nthe latest message<|im_end|>" in text
    assert "old0 " not in text and "old399" in text
    assert obs["attention_mask"][:80].sum() <= 80


# -- data files ---------------------------------------------------------------------------
def test_data_file_missing_field_names_the_field_and_the_line(tmp_path):
    path = _write_jsonl(tmp_path / "bad.jsonl", [{"turns": ["a", "b"]}, {"messages": ["a", "b"]}])
    with pytest.raises(DataError, match=r"bad\.jsonl:2: missing field 'turns'"):
        DialogueTask(data_files={"train": path}).samples("train")


def test_data_file_turns_must_be_a_list_of_strings(tmp_path):
    path = _write_jsonl(tmp_path / "bad.jsonl", [{"dialog": ["a", 3]}])
    with pytest.raises(DataError, match=r"bad\.jsonl:1: field 'dialog' must be a list of strings"):
        DialogueTask(data_files={"train": path}, fields={"turns": "dialog"}).samples("train")


def test_one_data_file_is_split_by_conversation(tmp_path):
    rows = [{"id": f"conv{i}", "turns": [f"a{i}", f"b{i}", f"c{i}"]} for i in range(100)]
    task = DialogueTask(data_files=_write_jsonl(tmp_path / "all.jsonl", rows))
    owners = {split: {s.meta["conversation"] for s in task.samples(split)} for split in SPLITS}
    assert sum(map(len, owners.values())) == 100
    assert not owners["train"] & owners["test"] and not owners["train"] & owners["validation"]


# -- episodes and rewards --------------------------------------------------------------------
def test_random_episode_gives_finite_rewards_and_every_metric():
    env = gym.make(ENV_ID, model="tiny-random", split="test")
    env.reset(seed=2)
    rewards, done, info = [], False, {}
    while not done:
        _, reward, terminated, truncated, info = env.step(env.action_space.sample())
        rewards.append(reward)
        done = terminated or truncated
    metrics = info["metrics"]
    assert np.isfinite(rewards).all() and all(math.isfinite(v) for v in metrics.values())
    assert set(DEFAULT_WEIGHTS) | set(DialogueTask.info_metrics) | {"reward"} == set(metrics)
    assert rewards[-1] == pytest.approx(sum(w * metrics[name] for name, w in DEFAULT_WEIGHTS.items()))


def _reply(env: gym.Env, text: str) -> dict:
    tokens = env.unwrapped.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
    for token in [*tokens, env.unwrapped.setup.eos_id]:
        *_, terminated, truncated, info = env.step(token)
        if terminated or truncated:
            return info
    raise AssertionError("episode did not end")


def test_the_real_next_turn_beats_an_empty_reply():
    env = gym.make(ENV_ID, model="tiny-random", split="test")
    _, info = env.reset(seed=4)
    real = _reply(env, info["references"][0])["metrics"]
    env.reset(seed=4)
    empty = _reply(env, "")["metrics"]
    assert real["chrf"] == pytest.approx(1.0) and real["semantic_similarity"] == pytest.approx(1.0, abs=1e-5)
    assert empty["reward"] == pytest.approx(env.unwrapped.setup.reward.range[0] + 0.1)  # -0.5: no repetition
    assert real["reward"] > 0.8 > 0 > empty["reward"]


def test_reward_weights_can_be_changed():
    env = gym.make(ENV_ID, model="tiny-random", split="test", reward={"rougeL": 0.5, "semantic_similarity": 0.5})
    env.reset(seed=0)
    info = _reply(env, "that sounds like fun, what did you do?")
    m = info["metrics"]
    assert m["reward"] == pytest.approx(0.5 * m["rougeL"] + 0.5 * m["semantic_similarity"])
    assert "chrf" in m and "distinct_2" in m  # the info metrics are still there
