"""Property-based tests (Hypothesis) over every registered env.

* any valid token sequence (EOS anywhere, up to the length limit) never
  raises and gives finite rewards inside the env's reward range;
* random reset/step interleavings obey the Gymnasium contract;
* dense rewards always sum to the sparse reward.

Examples per env and property: ``EXAMPLES`` (12; ``TEXTGYM_HYPOTHESIS_EXAMPLES=500``
for a deeper hunt outside CI).
"""

from __future__ import annotations

import math
import os
from functools import cache

import gymnasium as gym
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import TINY, builtin_ids

IDS = builtin_ids()
EXAMPLES = int(os.environ.get("TEXTGYM_HYPOTHESIS_EXAMPLES", "12"))
MAX_NEW = 6
SETTINGS = settings(
    max_examples=EXAMPLES, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)


@cache
def make(env_id: str, reward_mode: str = "sparse"):
    return gym.make(env_id, model=TINY, max_new_tokens=MAX_NEW, reward_mode=reward_mode).unwrapped


def token_sequences(vocab: int, eos: int):
    """Lists of token ids where EOS may appear anywhere (or never)."""
    token = st.one_of(st.integers(0, vocab - 1), st.just(eos))
    return st.lists(token, min_size=1, max_size=MAX_NEW)


@pytest.mark.parametrize("env_id", IDS)
def test_any_token_sequence_gives_finite_rewards_in_range(env_id: str) -> None:
    env = make(env_id)
    low, high = env.reward_range

    @SETTINGS
    @given(seed=st.integers(0, 2**31 - 1), tokens=token_sequences(env.setup.vocab_size, env.setup.eos_id))
    def check(seed: int, tokens: list[int]) -> None:
        obs, _ = env.reset(seed=seed)
        assert env.observation_space.contains(obs)
        total, steps = 0.0, 0
        for token in tokens:
            obs, reward, terminated, truncated, info = env.step(token)
            steps += 1
            assert math.isfinite(reward) and env.observation_space.contains(obs)
            total += reward
            if terminated or truncated:
                assert terminated == (token == env.setup.eos_id)
                assert low - 1e-9 <= info["metrics"]["reward"] <= high + 1e-9  # a turn's reward may be a change
                assert all(math.isfinite(v) for v in info["metrics"].values())
                break
            if "turn" not in info:  # a multi-turn episode's turn ends with its reward
                assert reward == 0.0
        assert steps <= MAX_NEW

    check()


@pytest.mark.parametrize("env_id", IDS)
def test_random_reset_step_interleavings_follow_the_contract(env_id: str) -> None:
    env = make(env_id)
    fresh = gym.make(env_id, model=TINY, max_new_tokens=3).unwrapped
    ops = st.lists(st.one_of(st.just("reset"), st.integers(0, env.setup.vocab_size - 1)), min_size=1, max_size=12)

    @SETTINGS
    @given(ops=ops)
    def check(ops: list) -> None:
        # one env across examples: each example starts where the previous left it
        episodes = fresh._episodes
        state = "new" if not episodes.started[0] else "running" if episodes.running[0] else "ended"
        for op in ops:
            if op == "reset":
                obs, info = fresh.reset(seed=1)
                assert fresh.observation_space.contains(obs) and "prompt" in info
                state = "running"
            elif state == "running":
                obs, reward, terminated, truncated, info = fresh.step(op)
                assert fresh.observation_space.contains(obs) and math.isfinite(reward)
                state = "ended" if terminated or truncated else "running"
            else:
                with pytest.raises(gym.error.ResetNeeded):
                    fresh.step(op)

    check()


@pytest.mark.parametrize("env_id", IDS)
def test_dense_rewards_sum_to_sparse(env_id: str) -> None:
    sparse, dense = make(env_id), make(env_id, "dense")

    @SETTINGS
    @given(seed=st.integers(0, 2**31 - 1), tokens=token_sequences(sparse.setup.vocab_size, sparse.setup.eos_id))
    def check(seed: int, tokens: list[int]) -> None:
        sparse.reset(seed=seed)
        dense.reset(seed=seed)
        allowed = np.flatnonzero(sparse.action_masks())
        total_sparse = total_dense = 0.0
        for i in range(sparse.setup.max_turns * MAX_NEW):  # every turn ends within MAX_NEW steps
            token = tokens[i] if i < len(tokens) else int(allowed[i % len(allowed)])
            _, r_sparse, terminated, truncated, _ = sparse.step(token)
            _, r_dense, *_ = dense.step(token)
            total_sparse, total_dense = total_sparse + r_sparse, total_dense + r_dense
            if terminated or truncated:
                break
        assert terminated or truncated
        assert total_dense == pytest.approx(total_sparse, abs=1e-9)

    check()
