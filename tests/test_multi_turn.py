"""Multi-turn episodes: the conversation grows in one row, replies, turn rewards, wrappers and rollouts."""

from __future__ import annotations

import copy

import gymnasium as gym
import numpy as np
import pytest

from tests.conftest import TINY
from textgym import Sample, TextEnv
from textgym.errors import ConfigError
from textgym.models import load_tokenizer
from textgym.rollout import left_packed, play_episodes
from textgym.tasks.copy import CopyTask
from textgym.wrappers import SequenceLevel


class TwoTurnCopy(CopyTask):
    """Turn 1: copy the words; turn 2: copy them in reverse order (the message shows them reversed)."""

    max_turns = 2

    def followup(self, sample: Sample, responses):
        words = " ".join(reversed(sample.prompt.split()))
        return Sample(id=sample.id + "/2", prompt=words, references=(words,))


class FinalTwoTurnCopy(TwoTurnCopy):
    turn_rewards = "final"


class ChatTwoTurnCopy(TwoTurnCopy):
    chat = True


def words_ids(env, text: str) -> list[int]:
    return env.unwrapped.tokenizer.encode(" " + text, add_special_tokens=False)


def play(env, tokens):
    result, total = None, 0.0
    for token in tokens:
        result = env.step(token)
        total += result[1]
        if result[2] or result[3] or "turn" in result[4]:
            break
    return result, total


def attended(obs) -> list[int]:
    return obs["input_ids"][obs["attention_mask"] == 1].tolist()


def test_two_turn_episode_grows_the_conversation_exactly_as_emitted() -> None:
    env = TextEnv(TwoTurnCopy, model=TINY, max_new_tokens=8, max_prompt_tokens=16, max_reply_tokens=12)
    eos = env.setup.eos_id
    three = next(i for i, s in enumerate(env.setup.samples) if len(set(s.prompt.split())) == len(s.prompt.split()) == 3)
    obs0, info = env.reset(options={"index": three})
    assert obs0["input_ids"].shape == (16 + 2 * 8 + 12,) and env.text_spec.conversation_tokens == 28
    words = info["references"][0]
    answer1 = words_ids(env, words) + [eos]
    (obs, reward, terminated, truncated, turn), _ = play(env, answer1)
    assert reward == 1.0 and not terminated and not truncated
    assert turn["turn"] == 1 and turn["turn_text"].strip() == words and turn["turn_score"] == 1.0
    backwards = " ".join(reversed(words.split()))
    assert turn["prompt"] == backwards and turn["references"] == [backwards]
    # no chat template for Copy: the reply is format_reply's text, right after the answer and its EOS
    assert turn["reply_text"] == "\n\n" + backwards + "\n"
    assert turn["reply_ids"] == env.tokenizer.encode(turn["reply_text"], add_special_tokens=False)
    assert attended(obs) == attended(obs0) + answer1 + turn["reply_ids"]
    conversation = obs["input_ids"][16:]
    assert (obs["input_ids"][:16] == obs0["input_ids"][:16]).all()  # the prompt stays where it was
    assert conversation[: len(answer1)].tolist() == answer1
    answer2 = words_ids(env, words) + [eos]  # the wrong order: only the middle word is right
    (obs, reward, terminated, truncated, final), _ = play(env, answer2)
    assert terminated and reward == pytest.approx(1 / 3)
    assert attended(obs) == attended(obs0) + answer1 + turn["reply_ids"] + answer2
    assert final["turns"] == 2 and [t.strip() for t in final["turn_texts"]] == [words, words]
    assert final["turn_scores"] == [1.0, reward]
    assert final["metrics"]["reward"] == pytest.approx((1.0 + reward) / 2)  # "sum": means over turns
    assert final["generated_text"].strip() == words and final["generated_tokens"] == len(answer2)


def template_continuation(tokenizer, prompt_messages, answer: str, message: str) -> str:
    head = tokenizer.apply_chat_template(prompt_messages, add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(
        [*prompt_messages, {"role": "assistant", "content": answer}, {"role": "user", "content": message}],
        add_generation_prompt=True, tokenize=False,
    )
    assert full.startswith(head + answer)
    return full[len(head) + len(answer):]


@pytest.mark.parametrize("with_eos", [True, False])
def test_chat_reply_is_the_templates_continuation_and_a_cut_answer_gets_the_closing(with_eos: bool) -> None:
    env = TextEnv(ChatTwoTurnCopy, model=TINY, max_new_tokens=3, max_prompt_tokens=48, max_reply_tokens=24)
    tok = env.tokenizer
    obs0, info = env.reset(seed=1)
    words = info["references"][0].split()
    answer = words_ids(env, words[0]) + [env.setup.eos_id] if with_eos else words_ids(env, words[0]) * 3
    (obs, _, terminated, truncated, turn), _ = play(env, answer)
    assert not (terminated or truncated) and turn["turn"] == 1
    sample = env.setup.samples[env._episodes.index[0]]
    expected = template_continuation(tok, env.task.messages(sample), "ANSWER", turn["prompt"])
    assert expected.startswith("<|im_end|>\n<|im_start|>user\n") and expected.endswith("<|im_start|>assistant\n")
    # the EOS (<|im_end|>) the agent emitted closed its turn; a cut answer gets the closing from the env
    assert turn["reply_text"] == (expected[len("<|im_end|>"):] if with_eos else expected)
    assert tok.decode(turn["reply_ids"]) == turn["reply_text"]
    assert attended(obs) == attended(obs0) + answer + turn["reply_ids"]
    # the whole row is the chat template's rendering of the conversation
    answer_text = tok.decode(answer[:-1] if with_eos else answer)
    rendered = tok.apply_chat_template(
        [*env.task.messages(sample), {"role": "assistant", "content": answer_text}, {"role": "user", "content": turn["prompt"]}],
        add_generation_prompt=True, tokenize=False,
    )
    assert tok.decode(attended(obs)) == rendered


def test_the_message_is_cut_to_max_reply_tokens_never_the_template() -> None:
    class LongMessage(ChatTwoTurnCopy):
        def followup(self, sample, responses):
            return Sample(sample.id + "/2", " ".join(["blue"] * 100) + " END", ("blue",))

    env = TextEnv(LongMessage, model=TINY, max_new_tokens=2, max_prompt_tokens=48, max_reply_tokens=20)
    env.reset(seed=0)
    (_, _, _, _, turn), _ = play(env, [env.setup.eos_id])
    assert len(turn["reply_ids"]) <= 20 and "END" not in turn["prompt"] and turn["prompt"].startswith("blue blue")
    assert turn["reply_text"].endswith(f"{turn['prompt']}<|im_end|>\n<|im_start|>assistant\n")
    with pytest.raises(ConfigError, match=r"max_reply_tokens=4 is too small: the turn change alone .* needs \d+ tokens"):
        TextEnv(ChatTwoTurnCopy, model=TINY, max_reply_tokens=4)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ConfigError, match=r"max_reply_tokens must be a positive integer, got"):
            TextEnv(TwoTurnCopy, model=TINY, max_reply_tokens=bad)


def test_a_template_that_rewrites_earlier_turns_is_refused(monkeypatch) -> None:
    last_only = copy.deepcopy(load_tokenizer(TINY))
    last_only.chat_template = (
        "{% for m in messages %}{% if loop.last %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    monkeypatch.setattr("textgym.envsetup.load_tokenizer", lambda model: last_only)
    with pytest.raises(ConfigError, match="chat template is not prefix-stable"):
        TextEnv(ChatTwoTurnCopy, model=TINY)
    TextEnv(CopyTask, model=TINY)  # single-turn tasks never render a second turn


def test_a_task_saying_multi_turn_without_max_turns_is_told_what_to_set() -> None:
    class Old(CopyTask):
        multi_turn = True

    with pytest.raises(ConfigError, match="multi_turn = True but max_turns = 1: set max_turns"):
        TextEnv(Old, model=TINY)


def random_episode(env, rng, allowed) -> tuple[list[float], dict]:
    rewards, done, info = [], False, {}
    while not done:
        action = int(rng.choice(allowed))
        _, reward, terminated, truncated, info = env.step(action)
        rewards.append(reward)
        done = terminated or truncated
    return rewards, info


@pytest.mark.parametrize("task", [TwoTurnCopy, FinalTwoTurnCopy])
def test_turn_rewards_add_up_as_documented_and_dense_equals_sparse(task) -> None:
    kwargs = {"model": TINY, "max_new_tokens": 4, "max_prompt_tokens": 16, "max_reply_tokens": 12}
    sparse, dense = TextEnv(task, **kwargs), TextEnv(task, reward_mode="dense", **kwargs)
    allowed = np.flatnonzero(sparse.action_masks())
    returns = []
    for seed in range(4):
        sparse.reset(seed=seed)
        dense.reset(seed=seed)
        r_sparse, final = random_episode(sparse, np.random.default_rng(seed), allowed)
        r_dense, final_dense = random_episode(dense, np.random.default_rng(seed), allowed)
        scores = final["turn_scores"]
        assert final["turns"] == 2 and final_dense["turn_scores"] == scores
        assert sum(r_dense) == pytest.approx(sum(r_sparse), abs=1e-9)
        if task.turn_rewards == "sum":
            assert sum(r_sparse) == pytest.approx(sum(scores))
            assert final["metrics"]["copy_accuracy"] == pytest.approx(np.mean(scores))
        else:
            assert sum(r_sparse) == pytest.approx(scores[-1])
            assert final["metrics"]["copy_accuracy"] == scores[-1]
        returns.append(sum(r_sparse))
    assert len(set(returns)) > 1  # the equalities above compared different episodes


def test_step_limit_counts_every_turn_and_cuts_a_conversation_with_turns_left() -> None:
    env = gym.wrappers.TimeLimit(gym.make("textgym/GuessNumber-v0", model=TINY), max_episode_steps=3)
    tok = env.unwrapped.tokenizer
    env.reset(options={"index": next(i for i, s in enumerate(env.unwrapped.setup.samples) if s.meta["target"] == 9)})
    zero = tok.convert_tokens_to_ids("0")
    _, _, _, _, turn = env.step(zero)
    _, _, _, _, turn = env.step(tok.eos_token_id)
    assert turn["turn"] == 1 and turn["prompt"] == "higher"
    _, reward, terminated, truncated, final = env.step(zero)  # the 3rd step: inside turn 2
    assert truncated and not terminated and final["turns"] == 2 and final["turn_scores"] == [0.0, 0.0]


@pytest.mark.parametrize("mode", ["NextStep", "SameStep"])
def test_vector_env_slots_equal_single_envs_over_turns(mode: str) -> None:
    gym.register("test/TwoTurnCopy-v0", entry_point="textgym.env:TextEnv", vector_entry_point="textgym.vector:TextVectorEnv",
                 kwargs={"task": TwoTurnCopy, "max_new_tokens": 2, "max_prompt_tokens": 16, "max_reply_tokens": 8})
    try:
        envs = gym.make_vec("test/TwoTurnCopy-v0", num_envs=2, model=TINY, autoreset_mode=mode)
        singles = [gym.make("test/TwoTurnCopy-v0", model=TINY) for _ in range(2)]
        envs.reset(seed=0)
        for i, env in enumerate(singles):
            env.reset(seed=i)
        red = envs.unwrapped.tokenizer.encode(" red", add_special_tokens=False)[0]
        eos = envs.unwrapped.setup.eos_id
        script = np.array([[red, red], [eos, red], [red, red], [eos, red]])  # slot 0 ends its turns with EOS, slot 1 is cut
        ends = []
        for actions in script:
            obs, rewards, term, trunc, infos = envs.step(actions)
            for i, env in enumerate(singles):
                obs_i, r_i, te_i, tr_i, info_i = env.step(actions[i])
                row = infos["final_obs"][i] if (te_i or tr_i) and mode == "SameStep" else {"input_ids": obs["input_ids"][i]}
                np.testing.assert_array_equal(row["input_ids"], obs_i["input_ids"])
                assert (rewards[i], term[i], trunc[i]) == (r_i, te_i, tr_i)
                if "reply_ids" in info_i:
                    assert list(infos["reply_ids"][i]) == info_i["reply_ids"]
            ends.append((term | trunc).tolist())
        assert ends == [[False, False], [False, False], [False, False], [True, True]]
        final = infos["final_info"] if mode == "SameStep" else infos
        assert list(final["turns"]) == [2, 2]
    finally:
        del gym.registry["test/TwoTurnCopy-v0"]


def test_dialogue_reply_is_the_other_persons_real_turn_and_the_conversation_grows() -> None:
    env = gym.make("textgym/Dialogue-v0", model=TINY, split="test", turns=2, max_new_tokens=3)
    task, setup = env.unwrapped.task, env.unwrapped.setup
    obs0, info = env.reset(seed=0)
    sample = setup.samples[env.unwrapped._episodes.index[0]]
    conversation = task._by_id[sample.meta["conversation"]]
    i = sample.meta["turn"]
    hello = env.unwrapped.tokenizer.encode(" hello", add_special_tokens=False)[0]
    for _ in range(3):
        obs, reward, terminated, truncated, turn = env.step(hello)
    assert not (terminated or truncated) and turn["turn"] == 1
    assert turn["prompt"] == conversation[i + 1] and turn["references"] == [conversation[i + 2]]
    assert f"<|im_start|>user\n{conversation[i + 1]}<|im_end|>" in turn["reply_text"]
    assert turn["reply_text"].startswith("<|im_end|>")  # the answer was cut at max_new_tokens
    assert attended(obs) == attended(obs0) + [hello] * 3 + turn["reply_ids"]
    assert reward == pytest.approx(turn["turn_metrics"]["reward"])
    for _ in range(3):
        _, reward, terminated, truncated, final = env.step(hello)
    assert truncated and final["turns"] == 2 and final["prompt"] == conversation[i + 1]
    with pytest.raises(ValueError, match=r"turns must be an integer >= 1 \(agent turns per episode\), got 0"):
        gym.make("textgym/Dialogue-v0", model=TINY, turns=0)


def test_dialogue_without_a_chat_template_replies_in_the_transcript(tmp_path) -> None:
    from textgym.tasks.dialogue import DialogueTask

    path = tmp_path / "c.jsonl"
    path.write_text('{"id": "c", "turns": ["hi", "hello", "how are you", "fine", "good"]}\n', encoding="utf-8")
    task = DialogueTask(data_files={"train": path}, turns=2)
    first = next(s for s in task.samples("train") if s.meta["turn"] == 1)
    following = task.next_turn(first, ["hey"], [{"score": 0.0, "metrics": {}}])
    assert (following.prompt, following.references) == ("how are you", ("fine",))
    assert task.format_reply(following) == "\nFriend: how are you\nYou:"
    assert task.next_turn(following, ["hey", "ok"], [{"score": 0.0, "metrics": {}}] * 2) is None


def test_single_turn_envs_keep_their_observation_and_infos() -> None:
    env = gym.make("textgym/Copy-v0", model=TINY)
    spec = env.unwrapped.text_spec
    assert (spec.max_turns, spec.max_reply_tokens, spec.multi_turn) == (1, 0, False)
    obs, info = env.reset(seed=0)
    assert obs["input_ids"].shape == (spec.max_prompt_tokens + spec.max_new_tokens,)
    (_, reward, terminated, _, final), _ = play(env, words_ids(env, info["references"][0]) + [spec.eos_id])
    assert terminated and reward == 1.0
    assert set(final) == {"sample_id", "prompt", "references", "generated_text", "generated_tokens", "metrics"}


def test_sequence_level_plays_one_turn_per_step_on_the_growing_row() -> None:
    kwargs = {"model": TINY, "max_new_tokens": 4, "max_prompt_tokens": 16, "max_reply_tokens": 12}
    env = SequenceLevel(TextEnv(TwoTurnCopy, **kwargs))
    obs0, info = env.reset(seed=2)
    words = info["references"][0]
    obs, reward, terminated, truncated, turn = env.step(words)
    assert reward == 1.0 and not (terminated or truncated) and turn["turn"] == 1
    sent = env.unwrapped.tokenizer(words, add_special_tokens=False)["input_ids"][:4]
    sent += [env.unwrapped.setup.eos_id] * (len(sent) < 4)
    assert attended(obs) == attended(obs0) + sent + turn["reply_ids"]
    _, reward, terminated, truncated, final = env.step(turn["references"][0])
    assert reward == 1.0 and (terminated or truncated) and final["turn_scores"] == [1.0, 1.0]


def test_play_episodes_asks_again_for_each_turn_with_the_conversation_so_far() -> None:
    envs = gym.make_vec("textgym/GuessNumber-v0", num_envs=3, model=TINY)
    tok = envs.unwrapped.tokenizer
    seen = []

    def always_zero(obs, infos, spec):
        ids, mask = left_packed(obs, spec.pad_id)
        seen.append(ids.shape[0])
        for row, m in zip(ids, mask):
            text = tok.decode(row[m == 1])
            assert text.count("<|im_start|>assistant") == text.count("<|im_start|>user")  # each ends with a question
        return np.array([[tok.convert_tokens_to_ids("0"), spec.eos_id]] * len(ids))

    infos = play_episodes(envs, always_zero, seed=0)
    target_of = {s.id: s.meta["target"] for s in envs.unwrapped.setup.samples}
    assert len(infos) == 3 and seen[0] == 3 and len(seen) > 1
    for info in infos:
        target = target_of[info["sample_id"]]
        assert info["turns"] == (1 if target == 0 else 4) and info["turn_texts"] == ["0"] * info["turns"]
        assert info["reward"] == pytest.approx(1 - target / 9)  # "final": the return is the last guess's score
