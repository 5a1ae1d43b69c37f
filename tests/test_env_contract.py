"""TextEnv / TextVectorEnv behaviour: termination, rewards, observations, autoreset."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from tests.conftest import TINY
from textgym.tasks.copy import copy_scores


def word_token(env, word: str) -> int:
    ids = env.unwrapped.tokenizer.encode(" " + word, add_special_tokens=False)
    assert len(ids) == 1
    return ids[0]


def play_words(env, words: list[str], eos: bool = True):
    """Step the words (and EOS); returns the last step's result and the summed rewards."""
    total, result = 0.0, None
    tokens = [word_token(env, w) for w in words] + ([env.unwrapped.setup.eos_id] if eos else [])
    for tok in tokens:
        result = env.step(tok)
        total += result[1]
        if result[2] or result[3]:
            break
    return result, total


def test_eos_terminates_and_scores_the_text_without_eos() -> None:
    env = gym.make("textgym/Copy-v0", model=TINY, max_new_tokens=8)
    _, info = env.reset(seed=0)
    target = info["references"][0].split()
    (obs, reward, terminated, truncated, info), _ = play_words(env, target)
    assert terminated and not truncated
    assert reward == pytest.approx(1.0)
    assert info["generated_text"].strip() == " ".join(target)
    assert info["generated_tokens"] == len(target) + 1
    assert set(info["metrics"]) == {"copy_accuracy", "reward"}


def test_truncation_at_max_new_tokens_scores_the_episode() -> None:
    env = gym.make("textgym/Copy-v0", model=TINY, max_new_tokens=3)
    env.reset(seed=1)
    rewards = []
    for step in range(3):
        _, reward, terminated, truncated, info = env.step(word_token(env, "red"))
        rewards.append(reward)
        assert not terminated
        assert truncated == (step == 2)
    assert rewards[:2] == [0.0, 0.0]  # sparse: nothing before the end
    expected = copy_scores(["red red red"], [env.unwrapped.setup.samples[env.unwrapped._episodes.index[0]]], frozenset())
    assert rewards[2] == pytest.approx(expected["copy_accuracy"][0])
    assert info["metrics"]["reward"] == rewards[2]


@pytest.mark.parametrize("env_id", ["textgym/Copy-v0", "textgym/Translation-v0"])
def test_dense_rewards_sum_to_the_sparse_reward(env_id: str) -> None:
    rng = np.random.default_rng(0)
    for seed in range(3):
        sparse = gym.make(env_id, model=TINY, max_new_tokens=8)
        dense = gym.make(env_id, model=TINY, max_new_tokens=8, reward_mode="dense")
        sparse.reset(seed=seed)
        dense.reset(seed=seed)
        allowed = np.flatnonzero(sparse.unwrapped.action_masks())
        total, done = 0.0, False
        while not done:
            action = int(rng.choice(allowed))
            _, r_s, te, tr, info_s = sparse.step(action)
            _, r_d, _, _, info_d = dense.step(action)
            total += r_d
            done = te or tr
        assert total == pytest.approx(r_s, abs=1e-9)
        assert info_s["metrics"] == info_d["metrics"]


def test_observation_layout_left_padded_prompt_then_generation() -> None:
    env = gym.make("textgym/Copy-v0", model=TINY, max_new_tokens=4, max_prompt_tokens=16)
    obs, info = env.reset(seed=2)
    ids, mask = obs["input_ids"], obs["attention_mask"]
    prompt = env.unwrapped.tokenizer(info["prompt_text"], add_special_tokens=False)["input_ids"]
    assert ids.shape == mask.shape == (20,)
    np.testing.assert_array_equal(ids[16 - len(prompt) : 16], prompt)
    assert mask[:16].sum() == len(prompt) and mask[16:].sum() == 0
    tok = word_token(env, "cat")
    obs, *_ = env.step(tok)
    assert obs["input_ids"][16] == tok and obs["attention_mask"][16] == 1 and obs["attention_mask"][17] == 0


def test_observations_are_fresh_arrays() -> None:
    env = gym.make("textgym/Copy-v0", model=TINY)
    obs0, _ = env.reset(seed=0)
    snapshot = obs0["input_ids"].copy()
    env.step(word_token(env, "dog"))
    np.testing.assert_array_equal(obs0["input_ids"], snapshot)


def test_action_mask_allows_only_word_tokens_and_eos() -> None:
    env = gym.make("textgym/Copy-v0", model=TINY)
    _, info = env.reset(seed=0)
    mask = env.unwrapped.action_masks()
    assert mask.dtype == bool and mask.shape == (env.action_space.n,)
    assert mask.sum() == 8 + 1 and mask[env.unwrapped.setup.eos_id]
    np.testing.assert_array_equal(info["action_mask"], mask)
    assert gym.make("textgym/Translation-v0", model=TINY).unwrapped.action_masks().all()


def test_reset_options_pick_a_sample() -> None:
    env = gym.make("textgym/Translation-v0", model=TINY)
    samples = env.unwrapped.setup.samples
    _, info = env.reset(options={"index": 5})
    assert info["sample_id"] == samples[5].id and info["references"] == list(samples[5].references)
    _, info = env.reset(options={"sample_id": samples[7].id})
    assert info["prompt"] == samples[7].prompt


def test_splits_differ_and_reset_draws_from_the_chosen_split() -> None:
    test_env = gym.make("textgym/Translation-v0", model=TINY, split="test")
    train_env = gym.make("textgym/Translation-v0", model=TINY, split="train")
    test_prompts = {s.prompt for s in test_env.unwrapped.setup.samples}
    train_prompts = {s.prompt for s in train_env.unwrapped.setup.samples}
    assert test_prompts and train_prompts and not test_prompts & train_prompts
    for seed in range(5):
        _, info = test_env.reset(seed=seed)
        assert info["prompt"] in test_prompts


def test_vector_next_step_autoreset() -> None:
    envs = gym.make_vec("textgym/Copy-v0", num_envs=2, model=TINY, max_new_tokens=2)
    assert envs.metadata["autoreset_mode"] == gym.vector.AutoresetMode.NEXT_STEP
    envs.reset(seed=0)
    red = word_token(envs, "red")
    envs.step(np.array([red, red]))
    _, rewards, term, trunc, infos = envs.step(np.array([red, red]))
    assert trunc.all() and "generated_text" in infos and infos["_generated_text"].all()
    obs, rewards, term, trunc, infos = envs.step(np.array([red, red]))  # reset step: action ignored
    assert (rewards == 0).all() and not (term | trunc).any() and infos["_sample_id"].all()
    assert (obs["attention_mask"][:, 16:] == 0).all()


def test_vector_same_step_autoreset_reports_final_obs_and_info() -> None:
    envs = gym.make_vec("textgym/Copy-v0", num_envs=2, model=TINY, max_new_tokens=1, autoreset_mode="SameStep")
    envs.reset(seed=0)
    red = word_token(envs, "red")
    obs, rewards, term, trunc, infos = envs.step(np.array([red, red]))
    assert trunc.all()
    assert infos["final_obs"][0]["input_ids"][16] == red  # the finished episode
    assert (obs["attention_mask"][:, 16:] == 0).all()  # already the next episode
    assert infos["final_info"]["metrics"]["reward"].shape == (2,)


def test_vector_disabled_autoreset_needs_reset_mask() -> None:
    envs = gym.make_vec("textgym/Copy-v0", num_envs=2, model=TINY, max_new_tokens=1, autoreset_mode="Disabled")
    envs.reset(seed=0)
    red = word_token(envs, "red")
    envs.step(np.array([red, red]))
    with pytest.raises(gym.error.ResetNeeded, match="slot 0"):
        envs.step(np.array([red, red]))
    envs.reset(options={"reset_mask": np.array([True, True])})
    envs.step(np.array([red, red]))


def test_vector_scores_finished_episodes_in_one_batch(monkeypatch) -> None:
    envs = gym.make_vec("textgym/Copy-v0", num_envs=4, model=TINY, max_new_tokens=2)
    reward = envs.unwrapped.setup.reward
    sizes = []
    original = reward.__call__

    def spy(texts, samples):
        sizes.append(len(texts))
        return original(texts, samples)

    monkeypatch.setattr(envs.unwrapped.setup, "reward", type("Spy", (), {"__call__": staticmethod(spy)})())
    envs.reset(seed=0)
    red = word_token(envs, "red")
    envs.step(np.full(4, red))
    envs.step(np.full(4, red))
    assert sizes == [4]


def test_sequence_level_wrapper_scores_a_whole_answer_like_token_steps() -> None:
    from textgym.wrappers import SequenceLevel

    env = SequenceLevel(gym.make("textgym/Translation-v0", model=TINY))
    _, info = env.reset(seed=1)
    answer = info["references"][0]
    _, reward, terminated, truncated, final = env.step(answer)
    assert terminated and not truncated
    assert reward == final["metrics"]["reward"] == 1.0 and final["generated_text"] == answer
    env.reset(seed=1)
    _, reward, *_ = env.step("")
    assert reward == 0.0
    with pytest.raises(gym.error.InvalidAction, match="response strings or lists of token ids, got int"):
        env.step(5)
    env.reset(seed=1)  # the same answer as token ids scores the same
    ids = env.unwrapped.tokenizer(answer, add_special_tokens=False)["input_ids"]
    _, reward, *_ = env.step(ids)
    assert reward == 1.0
    env.reset(seed=1)
    with pytest.raises(gym.error.InvalidAction, match="action -3 is out of range; allowed token ids: 0.."):
        env.step([1, -3])


def test_vector_reset_with_one_index_per_slot() -> None:
    envs = gym.make_vec("textgym/Translation-v0", num_envs=3, model=TINY)
    samples = envs.unwrapped.setup.samples
    _, infos = envs.reset(options={"index": [4, 0, 9]})
    assert list(infos["sample_id"]) == [samples[4].id, samples[0].id, samples[9].id]
    with pytest.raises(ValueError, match="index has 2 entries for 3 envs"):
        envs.reset(options={"index": [1, 2]})


def test_shard_keeps_every_nth_sample() -> None:
    envs = gym.make_vec("textgym/Translation-v0", num_envs=2, model=TINY)
    setup = envs.unwrapped.setup
    everything = list(setup.samples)
    setup.shard(1, 3)
    assert setup.samples == everything[1::3] and setup.shard_of == (1, 3)
    setup.shard(1, 3)  # same shard again: nothing changes
    assert setup.samples == everything[1::3]
    _, infos = envs.reset(options={"index": [0, 1]})
    assert list(infos["sample_id"]) == [everything[1].id, everything[4].id]
    with pytest.raises(ValueError, match=r"already sharded as rank 1 of 3"):
        setup.shard(0, 2)
