"""Multi-turn episodes: Task.followup continues an episode with a new turn."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from tests.conftest import TINY
from textgym import Sample, TextEnv
from textgym.tasks.copy import CopyTask


class TwoTurnCopy(CopyTask):
    """Turn 1: copy the words; turn 2: copy them in reverse order."""

    multi_turn = True

    def followup(self, sample: Sample, responses):
        if len(responses) >= 2:
            return None
        words = " ".join(reversed(sample.prompt.split()))
        return Sample(id=sample.id + "/2", prompt=words, references=(words,))


def say(env, text: str):
    tok = env.unwrapped.tokenizer
    result = None
    for token in tok.encode(" " + text, add_special_tokens=False) + [tok.eos_token_id]:
        result = env.step(token)
    return result


def test_two_turn_episode_rewards_each_turn_and_reprompts() -> None:
    env = TextEnv(TwoTurnCopy, model=TINY, max_new_tokens=8, max_prompt_tokens=16)
    obs0, info = env.reset(seed=0)
    words = info["references"][0]
    obs, reward, terminated, truncated, turn = env.step(env.tokenizer.encode(" " + words.split()[0])[0])
    obs, reward, terminated, truncated, turn = say(env, " ".join(words.split()[1:]))
    assert reward == 1.0 and not terminated and not truncated
    assert turn["turn"] == 1 and turn["turn_text"].strip() == words
    reversed_words = " ".join(reversed(words.split()))
    assert turn["references"] == [reversed_words]
    assert obs["attention_mask"][16:].sum() == 0  # the answer area starts empty again
    assert reversed_words.split()[0] in env.tokenizer.decode(obs["input_ids"][obs["attention_mask"] == 1])
    obs, reward, terminated, truncated, final = say(env, words)  # wrong order
    assert terminated and reward < 1.0
    assert final["turns"] == 2 and [t.strip() for t in final["turn_texts"]] == [words, words]
    assert final["metrics"]["reward"] == pytest.approx((1.0 + reward) / 2)


def test_multi_turn_dense_rewards_sum_to_the_sum_of_turn_rewards() -> None:
    rng = np.random.default_rng(0)
    for seed in range(3):
        sparse = TextEnv(TwoTurnCopy, model=TINY, max_new_tokens=4, max_prompt_tokens=16)
        dense = TextEnv(TwoTurnCopy, model=TINY, max_new_tokens=4, max_prompt_tokens=16, reward_mode="dense")
        sparse.reset(seed=seed)
        dense.reset(seed=seed)
        allowed = np.flatnonzero(sparse.action_masks())
        total_s = total_d = 0.0
        done = False
        while not done:
            action = int(rng.choice(allowed))
            _, r_s, te, tr, _ = sparse.step(action)
            _, r_d, *_ = dense.step(action)
            total_s, total_d, done = total_s + r_s, total_d + r_d, te or tr
        assert total_d == pytest.approx(total_s, abs=1e-9)


@pytest.mark.parametrize("mode", ["NextStep", "SameStep"])
def test_vector_env_runs_multi_turn_episodes(mode: str) -> None:
    gym.register("test/TwoTurnCopy-v0", entry_point="textgym.env:TextEnv", vector_entry_point="textgym.vector:TextVectorEnv",
                 kwargs={"task": TwoTurnCopy, "max_new_tokens": 2, "max_prompt_tokens": 16})
    try:
        envs = gym.make_vec("test/TwoTurnCopy-v0", num_envs=2, model=TINY, autoreset_mode=mode)
        envs.reset(seed=0)
        red = envs.unwrapped.tokenizer.encode(" red", add_special_tokens=False)[0]
        ends = []
        for _ in range(4):
            _, _, term, trunc, infos = envs.step(np.array([red, red]))
            ends.append((term | trunc).tolist())
        assert ends == [[False, False], [False, False], [False, False], [True, True]]
        final = infos["final_info"] if mode == "SameStep" else infos
        assert list(final["turns"]) == [2, 2]
    finally:
        del gym.registry["test/TwoTurnCopy-v0"]


def test_dialogue_multi_turn_appends_the_real_reply_and_asks_again() -> None:
    env = gym.make("textgym/Dialogue-v0", model=TINY, split="test", turns=2, max_new_tokens=3)
    task = env.unwrapped.task
    _, info = env.reset(seed=0)
    sample = env.unwrapped.setup.samples[env.unwrapped._episodes.index[0]]
    conversation = task._by_id[sample.meta["conversation"]]
    i = sample.meta["turn"]
    hello = env.unwrapped.tokenizer.encode(" hello", add_special_tokens=False)[0]
    for _ in range(3):
        _, reward, terminated, truncated, turn = env.step(hello)
    assert not (terminated or truncated) and turn["turn"] == 1
    assert turn["references"] == [conversation[i + 2]]
    assert turn["prompt"].split("\n")[-2:] == ["hello hello hello", conversation[i + 1]]
    assert reward == pytest.approx(turn["turn_metrics"]["reward"])
    for _ in range(3):
        _, reward, terminated, truncated, final = env.step(hello)
    assert truncated and final["turns"] == 2
    with pytest.raises(ValueError, match=r"turns must be an integer >= 1 \(agent turns per episode\), got 0"):
        gym.make("textgym/Dialogue-v0", model=TINY, turns=0)


def test_textppo_refuses_multi_turn_envs_clearly() -> None:
    from agents import TextPPO

    envs = gym.make_vec("textgym/Dialogue-v0", num_envs=2, model=TINY, turns=2, max_new_tokens=2)
    agent = TextPPO("LMPolicy", envs, model=TINY, seed=0, verbose=0)
    with pytest.raises(ValueError, match="multi-turn .* single-turn episodes only"):
        agent.learn(total_timesteps=4)
