"""LMPolicy: the SB3 actor-critic around a causal LM (tiny random model)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn

import textgym  # noqa: F401
from agents import LMPolicy
from agents.common.lm import disable_dropout
from agents.common.rollout import collect_episodes
from agents.sb3_adapter import SB3VecEnv
from textgym.errors import ModelError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def env():
    return gym.make_vec("textgym/Copy-v0", num_envs=4, model="tiny-random")


def make_policy(env, **kwargs) -> LMPolicy:
    kwargs.setdefault("action_mask", env.setup.action_mask)
    return LMPolicy(env.single_observation_space, env.single_action_space, lambda _: 1e-3, model="tiny-random", **kwargs)


def as_float(obs: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    # SB3's preprocess_obs hands Box observations over as float32
    return {k: torch.as_tensor(v, dtype=torch.float32) for k, v in obs.items()}


def test_vocab_mismatch_names_both_sizes(env) -> None:
    space = gym.spaces.Discrete(1000)
    with pytest.raises(ModelError, match=r"1000 tokens.*49152"):
        LMPolicy(env.single_observation_space, space, lambda _: 1e-3, model="tiny-random")


def test_non_discrete_action_space_is_rejected(env) -> None:
    with pytest.raises(TypeError, match="Discrete"):
        LMPolicy(env.single_observation_space, gym.spaces.Box(0, 1, (3,)), lambda _: 1e-3, model="tiny-random")


def test_reuses_the_lm_head_and_value_head_starts_at_zero(env) -> None:
    policy = make_policy(env)
    assert not hasattr(policy, "action_net")  # no fresh Linear(latent, vocab)
    obs, _ = env.reset(seed=0)
    with torch.no_grad():
        values = policy.predict_values(as_float(obs))
    assert torch.equal(values, torch.zeros(4, 1))


def test_float_observations_and_kv_cache_match_a_full_forward(env) -> None:
    policy = make_policy(env)
    obs, _ = env.reset(seed=0)
    with torch.no_grad():
        actions, _, _ = policy(as_float(obs))
        obs2, *_ = env.step(actions.numpy())
        actions2, _, logp_cached = policy(as_float(obs2))  # reuses the cache: one new column
        assert policy._cache is not None and policy._cache.cache_mask.shape[1] == obs2["input_ids"].shape[1] + 1
        _, logp_full, _ = policy.evaluate_actions(as_float(obs2), actions2)
    torch.testing.assert_close(logp_cached, logp_full, atol=1e-5, rtol=1e-5)


def test_action_mask_in_sampling_and_in_recomputed_log_probs(env) -> None:
    policy = make_policy(env)
    allowed = np.flatnonzero(env.setup.action_mask)
    obs, _ = env.reset(seed=1)
    with torch.no_grad():
        actions, _, _ = policy(as_float(obs))
        assert set(actions.tolist()) <= set(allowed.tolist())
        disallowed = torch.full((4,), int(np.flatnonzero(~env.setup.action_mask)[0]))
        _, logp, _ = policy.evaluate_actions(as_float(obs), disallowed)
        assert torch.isinf(logp).all()
        dist = policy.get_distribution(as_float(obs))
        probs = dist.distribution.probs
    torch.testing.assert_close(probs[:, allowed].sum(1), torch.ones(4))


def test_sequence_forward_equals_per_step_log_probs(env) -> None:
    """One forward over whole sequences gives the log-prob and value of every token, aligned by column."""
    policy = make_policy(env, temperature=0.7)
    obs, _ = env.reset(seed=2)
    batch = collect_episodes(policy, env, obs, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logp, _, values = policy.sequence_forward(batch.input_ids, batch.attention_mask, batch.prompt_len)
        P = batch.prompt_len
        for t in range(int(batch.lengths.max())):
            rows = torch.nonzero(batch.gen_mask[:, t]).squeeze(1)
            mask = batch.attention_mask[rows].clone()
            mask[:, P + t :] = 0  # the observation before token t
            prefix = {"input_ids": batch.input_ids[rows].float(), "attention_mask": mask.float()}
            v, lp, _ = policy.evaluate_actions(prefix, batch.input_ids[rows, P + t])
            torch.testing.assert_close(lp, logp[rows, t], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(v.squeeze(1), values[rows, t], atol=1e-6, rtol=1e-6)


def test_eos_that_equals_pad_is_kept_in_the_mask(env) -> None:
    policy = make_policy(env)
    eos = env.setup.eos_id
    assert env.setup.pad_id == eos  # SmolLM2: pad is EOS
    seen = 0
    for seed in range(6):
        obs, _ = env.reset(seed=seed)
        batch = collect_episodes(policy, env, obs, generator=torch.Generator().manual_seed(seed))
        for i in torch.nonzero(batch.ended_with_eos).squeeze(1).tolist():
            n = int(batch.lengths[i])
            assert int(batch.input_ids[i, batch.prompt_len + n - 1]) == eos  # EOS is a real, trained token
            assert batch.infos[i]["generated_tokens"] == n
            seen += 1
    assert seen > 0


def test_separate_critic_has_its_own_trunk(env) -> None:
    policy = make_policy(env, separate_critic=True)
    actor = {p.data_ptr() for p in policy.decoder.parameters()}
    assert policy.critic is not None and not actor & {p.data_ptr() for p in policy.critic.parameters()}
    obs, _ = env.reset(seed=0)
    values, _, _ = policy.evaluate_actions(as_float(obs), torch.zeros(4, dtype=torch.long))
    assert values.shape == (4, 1)


def test_dropout_is_disabled() -> None:
    net = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
    disable_dropout(net)
    assert net[1].p == 0.0


def test_bad_sampling_arguments(env) -> None:
    with pytest.raises(ValueError, match="temperature must be > 0, got 0"):
        make_policy(env, temperature=0)
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\], got 1.5"):
        make_policy(env, top_p=1.5)


def test_runs_under_stock_sb3_ppo() -> None:
    from stable_baselines3 import PPO

    venv = SB3VecEnv(gym.make_vec("textgym/Copy-v0", num_envs=4, model="tiny-random"))
    ppo = PPO(LMPolicy, venv, n_steps=4, batch_size=8, n_epochs=1, learning_rate=1e-3, seed=0, verbose=0,
              policy_kwargs={"model": "tiny-random", "action_mask": venv.action_mask})  # fmt: skip
    before = [p.detach().clone() for p in ppo.policy.value_head.parameters()]
    ppo.learn(32)
    assert ppo._n_updates == 2  # 2 rollouts of 4 steps x 4 envs, 1 epoch each
    assert any(not torch.equal(b, p) for b, p in zip(before, ppo.policy.value_head.parameters()))


def test_sb3_adapter_translates_autoreset() -> None:
    venv = SB3VecEnv(gym.make_vec("textgym/Copy-v0", num_envs=2, model="tiny-random"))
    venv.seed(0)
    obs = venv.reset()
    eos = venv.venv.setup.eos_id
    obs2, rewards, dones, infos = venv.step(np.array([eos, eos]))
    assert dones.all()
    for i in range(2):
        final = infos[i]["terminal_observation"]
        assert final["attention_mask"].sum() == obs["attention_mask"][i].sum() + 1  # the EOS was written
        assert infos[i]["TimeLimit.truncated"] is False  # scored: SB3 must not bootstrap
        assert infos[i]["episode"]["l"] == 1
        P = venv.venv.setup.max_prompt_tokens
        assert final["attention_mask"][P:].sum() == 1 and obs2["attention_mask"][i, P:].sum() == 0  # next episode
    with pytest.raises(TypeError, match="TextVectorEnv"):
        SB3VecEnv(gym.make("textgym/Copy-v0", model="tiny-random"))  # type: ignore[arg-type]


def test_a_tied_embedding_gets_a_sparse_gradient_that_sums_into_the_heads(env) -> None:
    """The input embedding shares the head's weight: its gradient is sparse (the batch's rows), and the weight's
    gradient after backward is the dense sum it was with a dense embedding gradient; untied or frozen: unchanged."""
    from agents.common.lm import load_causal_lm, sparse_embedding_gradient

    policy = make_policy(env)
    embedding = policy.lm.get_input_embeddings()
    assert embedding.sparse and embedding.weight is policy.lm.get_output_embeddings().weight
    obs, _ = env.reset(seed=0)
    batch = collect_episodes(policy, env, obs, generator=torch.Generator().manual_seed(0))

    def weight_grad(sparse: bool) -> torch.Tensor:
        embedding.sparse = sparse
        policy.lm.zero_grad(set_to_none=True)
        for part in (slice(0, 2), slice(2, 4)):  # two micro-batches accumulate
            logp, _, _ = policy.sequence_forward(batch.input_ids[part], batch.attention_mask[part], batch.prompt_len,
                                                 with_values=False)  # fmt: skip
            logp[batch.gen_mask[part]].sum().backward()
        assert not embedding.weight.grad.is_sparse
        return embedding.weight.grad.clone()

    dense, sparse = weight_grad(False), weight_grad(True)
    policy.lm.zero_grad(set_to_none=True)  # a backward without the head: the hook makes the sparse gradient dense
    policy.decoder(input_ids=batch.input_ids).last_hidden_state.sum().backward()
    assert not embedding.weight.grad.is_sparse and embedding.weight.grad.abs().sum() > 0
    rows = batch.input_ids.unique()
    assert dense[rows].abs().sum() > 0
    # the same sum in another order: float32 rounding, relative to the gradient's scale (1 element of 3.1M was
    # 1.8e-7 apart on a CPU with AMX)
    torch.testing.assert_close(sparse, dense, rtol=1e-6, atol=1e-6 * float(dense.abs().max()))
    untied = load_causal_lm("tiny-random")
    untied.lm_head.weight = nn.Parameter(untied.lm_head.weight.detach().clone())
    assert not sparse_embedding_gradient(untied) and not untied.get_input_embeddings().sparse
    frozen = load_causal_lm("tiny-random")
    frozen.get_input_embeddings().weight.requires_grad_(False)
    assert not sparse_embedding_gradient(frozen)
