"""The rollout's fast paths: the exponential-race sampler, host-side bookkeeping, the cached decode."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

import textgym  # noqa: F401
from agents import LMPolicy
from agents.rollout import generate_batch
from agents.sampling import log_probs_and_entropy, sample_tokens

pytestmark = pytest.mark.usefixtures("one_thread")


def test_sample_tokens_draws_from_the_filtered_distribution() -> None:
    logits = torch.tensor([2.0, 0.5, float("-inf"), -1.0, 1.0])
    rows = 200_000
    draws = sample_tokens(logits.expand(rows, -1), torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=5).double() / rows
    expected = torch.softmax(logits.double(), -1)
    assert freq[2] == 0  # a removed token is never drawn
    torch.testing.assert_close(freq, expected, atol=5e-3, rtol=0)


def test_sample_tokens_is_reproducible_and_deterministic_is_argmax() -> None:
    logits = torch.randn(6, 100, generator=torch.Generator().manual_seed(1))
    a = sample_tokens(logits, torch.Generator().manual_seed(7))
    b = sample_tokens(logits, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    assert torch.equal(sample_tokens(logits, None, deterministic=True), logits.argmax(-1))


@pytest.mark.parametrize("env_id", ["textgym/Copy-v0", "textgym/Translation-v0"])  # with and without action mask
def test_cached_rollout_log_probs_equal_a_full_forward_and_match_the_env(env_id: str) -> None:
    """The KV-cached decode (preallocated mask, positions counted per step) sees what one full forward sees."""
    env = gym.make_vec(env_id, num_envs=4, model="tiny-random", max_new_tokens=12)
    policy = LMPolicy(
        env.single_observation_space, env.single_action_space, lambda _: 1e-3, model="tiny-random",
        temperature=0.8, action_mask=env.setup.action_mask,
    )  # fmt: skip
    policy.set_training_mode(False)
    step_logits = []
    decode = policy.decode_step

    def recording(*args, **kwargs):
        logits, past = decode(*args, **kwargs)
        step_logits.append(logits)
        return logits, past

    policy.decode_step = recording
    obs, _ = env.reset(seed=5)
    batch = generate_batch(policy, env, obs, generator=torch.Generator().manual_seed(0))
    P, mask = batch.prompt_len, batch.gen_mask
    tokens = batch.input_ids[:, P:]
    rollout_logp = torch.stack(
        [log_probs_and_entropy(policy.filtered_logits(lg), policy.to_choice(tokens[:, t]))[0]
         for t, lg in enumerate(step_logits)], dim=1,
    )  # fmt: skip
    with torch.no_grad():
        full_logp, _, _ = policy.sequence_forward(batch.input_ids, batch.attention_mask, P)
    n = rollout_logp.shape[1]
    torch.testing.assert_close(rollout_logp[mask[:, :n]], full_logp[:, :n][mask[:, :n]], atol=1e-5, rtol=1e-5)
    assert not mask[:, n:].any()  # the loop stopped at the step where the last episode ended
    # the host-side bookkeeping agrees with what the env saw
    for i, info in enumerate(batch.infos):
        n_tok = int(batch.lengths[i])
        assert info["generated_tokens"] == n_tok
        assert bool(batch.ended_with_eos[i]) == (int(tokens[i, n_tok - 1]) == env.setup.eos_id)
        assert not batch.env_rewards[i, n_tok:].any()  # sparse reward: the score at the last real token
        np.testing.assert_allclose(float(batch.env_rewards[i, n_tok - 1]), info["metrics"]["reward"], rtol=1e-6)
    assert batch.input_ids.dtype == torch.long and batch.env_rewards.dtype == torch.float32
