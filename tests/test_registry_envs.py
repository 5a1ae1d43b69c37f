"""The contract every registered id must keep (new ids are covered automatically)."""

from __future__ import annotations

import pickle

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from tests.conftest import TINY, builtin_ids

IDS = builtin_ids()
SHORT = {"model": TINY, "max_new_tokens": 6}


def rollout(env, seed: int, episodes: int = 2, p_eos: float = 0.15):
    """Random (allowed) actions with occasional EOS; returns everything observable."""
    rng = np.random.default_rng(seed)
    setup = env.unwrapped.setup
    allowed = np.flatnonzero(env.unwrapped.action_masks())
    trace = []
    obs, info = env.reset(seed=seed)
    trace.append((obs["input_ids"].copy(), info["sample_id"]))
    for _ in range(episodes):
        done = False
        while not done:
            action = setup.eos_id if rng.random() < p_eos else int(rng.choice(allowed))
            obs, reward, terminated, truncated, info = env.step(action)
            done = terminated or truncated
            trace.append((obs["input_ids"].copy(), reward, terminated, truncated))
        trace.append(info["metrics"])
        obs, info = env.reset()
        trace.append((obs["input_ids"].copy(), info["sample_id"]))
    return trace


def assert_traces_equal(a, b) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        if isinstance(x, dict):
            assert x == y
        else:
            for u, v in zip(x, y):
                np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("env_id", IDS)
def test_gymnasium_check_env(env_id: str) -> None:
    env = gym.make(env_id, model=TINY)
    gym_check_env(env.unwrapped, skip_render_check=True)


@pytest.mark.parametrize("env_id", IDS)
def test_sb3_check_env(env_id: str) -> None:
    env = gym.make(env_id, model=TINY)
    sb3_check_env(env.unwrapped, warn=False)


@pytest.mark.parametrize("env_id", IDS)
def test_same_seed_same_episodes(env_id: str) -> None:
    a = rollout(gym.make(env_id, **SHORT), seed=3)
    b = rollout(gym.make(env_id, **SHORT), seed=3)
    assert_traces_equal(a, b)


@pytest.mark.parametrize("env_id", IDS)
def test_make_vec_equals_single_envs(env_id: str) -> None:
    n, seed = 3, 11
    vec = gym.make_vec(env_id, num_envs=n, **SHORT)
    singles = [gym.make(env_id, **SHORT) for _ in range(n)]
    obs_v, info_v = vec.reset(seed=seed)
    for i, env in enumerate(singles):
        obs_s, info_s = env.reset(seed=seed + i)
        np.testing.assert_array_equal(obs_v["input_ids"][i], obs_s["input_ids"])
        assert info_v["sample_id"][i] == info_s["sample_id"]
    rng = np.random.default_rng(0)
    eos = vec.unwrapped.setup.eos_id
    allowed = np.flatnonzero(vec.unwrapped.action_masks()[0])
    pending = [False] * n  # single env i needs reset() (vec autoresets on the next step)
    for _ in range(20):
        actions = np.where(rng.random(n) < 0.2, eos, rng.choice(allowed, size=n))
        obs_v, rew_v, term_v, trunc_v, infos = vec.step(actions)
        for i, env in enumerate(singles):
            if pending[i]:
                obs_s, info_s = env.reset()
                r, te, tr = 0.0, False, False
                pending[i] = False
            else:
                obs_s, r, te, tr, info_s = env.step(actions[i])
                pending[i] = te or tr
                if pending[i]:
                    assert infos["generated_text"][i] == info_s["generated_text"]
                    assert infos["metrics"]["reward"][i] == info_s["metrics"]["reward"]
            np.testing.assert_array_equal(obs_v["input_ids"][i], obs_s["input_ids"])
            assert (rew_v[i], term_v[i], trunc_v[i]) == (r, te, tr)


@pytest.mark.parametrize("env_id", IDS)
def test_pickle_round_trip_keeps_the_episode(env_id: str) -> None:
    env = gym.make(env_id, **SHORT).unwrapped
    env.reset(seed=5)
    copy = pickle.loads(pickle.dumps(env))
    action = int(np.flatnonzero(env.action_masks())[-1])
    a, b = env.step(action), copy.step(action)
    np.testing.assert_array_equal(a[0]["input_ids"], b[0]["input_ids"])
    assert a[1:4] == b[1:4]


@pytest.mark.parametrize("env_id", IDS)
def test_render_ansi_shows_prompt_and_output(env_id: str) -> None:
    env = gym.make(env_id, render_mode="ansi", **SHORT)
    _, info = env.reset(seed=0)
    env.step(int(np.flatnonzero(env.unwrapped.action_masks())[-1]))
    text = env.render()
    assert isinstance(text, str) and info["sample_id"] in text and "output (1/6 tokens)" in text
