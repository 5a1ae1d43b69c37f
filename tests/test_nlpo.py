"""TextNLPO on Copy-v0 with the tiny random model: the masking policy's nucleus restricts sampling and
the loss, the masking policy refreshes on schedule, resume is exact, and NLPO learns."""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import pytest
import torch

import textgym  # noqa: F401
from agents.common.config import field_docs
from agents.common.persistence import CheckpointError
from agents.common.policies import positions_from_mask
from agents.common.rollout import collect_episodes
from agents.common.sampling import filter_logits
from agents.nlpo import NLPOConfig, NLPOPolicy, TextNLPO
from agents.ppo import TextPPO
from textgym.errors import ConfigError

FAST = {"model": "tiny-random", "learning_rate": 1e-3, "verbose": 0, "n_epochs": 2, "n_rollouts": 1}

pytestmark = pytest.mark.usefixtures("one_thread")


def copy_env(n: int = 8, **kwargs):
    return gym.make_vec("textgym/Copy-v0", num_envs=n, model="tiny-random", **kwargs)


def lm_probs(lm, ids: torch.Tensor, mask: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """(B, L, V) next-token probabilities of a plain HF forward, over the allowed tokens only."""
    with torch.no_grad():
        logits = lm(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask)).logits.float()
    return torch.softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1)


def nucleus(probs: torch.Tensor, top_p: float, eos: int) -> torch.Tensor:
    """Bool, same shape: the smallest set of most likely tokens whose mass reaches top_p, plus EOS."""
    ranked, order = probs.sort(dim=-1, descending=True)
    inside = torch.zeros_like(probs, dtype=torch.bool).scatter(-1, order, (ranked.cumsum(-1) - ranked) < top_p)
    inside[..., eos] = True
    return inside & (probs > 0)


def scrambled_agent(seed: int = 0) -> TextNLPO:
    """An NLPO agent whose masking LM disagrees with its policy (as when training has moved it past a refresh)."""
    agent = TextNLPO("LMPolicy", copy_env(), seed=seed, mask_top_p=0.3, **FAST)
    head = agent.policy.mask_lm.get_output_embeddings().weight
    with torch.no_grad():
        head[agent.policy.allowed_ids] = torch.randn(len(agent.policy.allowed_ids), head.shape[1]) * head.std() * 4
    return agent


def test_tokens_outside_the_masking_nucleus_are_never_sampled() -> None:
    agent = scrambled_agent()
    policy, spec = agent.policy, agent.env.text_spec
    allowed, P = torch.tensor(spec.action_mask), spec.max_prompt_tokens
    generator, checked, sizes, outside_mass = torch.Generator().manual_seed(0), 0, [], []
    for seed in range(12):
        obs, _ = agent.env.reset(seed=seed)
        batch = collect_episodes(policy, agent.env, obs, generator=generator)
        ids, mask, gen = batch.input_ids, batch.attention_mask, batch.gen_mask
        inside = nucleus(
            lm_probs(policy.mask_lm, ids, mask, allowed)[:, P - 1 : -1], agent.config.mask_top_p, spec.eos_id
        )
        sampled = ids[:, P:]
        assert inside.gather(-1, sampled.unsqueeze(-1)).squeeze(-1)[gen].all()
        checked += int(gen.sum())
        sizes.append(inside[gen].sum(-1).float())
        own = lm_probs(policy.lm, ids, mask, allowed)[:, P - 1 : -1]  # the unrestricted policy
        outside_mass.append((own * ~inside).sum(-1)[gen])
        # the rollout's log-probs are the restricted distribution's
        assert torch.isfinite(batch.old_logp[gen]).all()
    assert checked >= 200  # enough sampled tokens for the check to mean something
    assert float(torch.cat(sizes).mean()) < 0.5 * int(allowed.sum())  # a small set: the check has teeth
    assert float(torch.cat(outside_mass).mean()) > 0.3  # unrestricted, the policy would often sample outside it
    # predict() (SB3's API) is restricted too
    obs, _ = agent.env.reset(seed=99)
    ids, mask = torch.as_tensor(obs["input_ids"]), torch.as_tensor(obs["attention_mask"])
    last = mask.shape[1] - 1 - mask.flip(1).argmax(1)  # the observation is right-padded
    rows = torch.arange(len(ids))
    inside = nucleus(lm_probs(policy.mask_lm, ids, mask, allowed)[rows, last], agent.config.mask_top_p, spec.eos_id)
    for _ in range(20):
        actions, _ = agent.predict(obs)
        assert inside[rows, torch.as_tensor(actions)].all()


def test_the_loss_gives_tokens_outside_the_nucleus_no_probability() -> None:
    agent = scrambled_agent(seed=1)
    policy, spec = agent.policy, agent.env.text_spec
    allowed, P, top_p = torch.tensor(spec.action_mask), spec.max_prompt_tokens, agent.config.mask_top_p
    obs, _ = agent.env.reset(seed=0)
    batch = collect_episodes(policy, agent.env, obs, generator=torch.Generator().manual_seed(0))
    ids, mask, gen = batch.input_ids.clone(), batch.attention_mask, batch.gen_mask
    inside = nucleus(lm_probs(policy.mask_lm, ids, mask, allowed)[:, P - 1 : -1], top_p, spec.eos_id)
    # each row's last token becomes one outside the nucleus: a sampled token always stays in the loss's support
    rows, last = torch.arange(len(ids)), gen.sum(1) - 1
    outside = (allowed & ~inside[rows, last]).float().argmax(-1)
    assert (~inside[rows, last, outside]).all()
    ids[rows, P + last] = outside
    support = inside.clone()
    support[rows, last, outside] = True

    filtered = []  # the loss's distribution: the choice logits sequence_forward scores, with the sampling filters
    plain_head = policy.head_logits
    policy.head_logits = lambda h: filtered.append(filter_logits(plain_head(h), **policy.sampling_filters())) or plain_head(h)
    with torch.no_grad():
        logp, entropy, _ = policy.sequence_forward(ids, mask, P)
    del policy.head_logits
    choices = policy.allowed_ids
    assert (torch.isfinite(filtered[-1]) == support[..., choices])[gen].all()  # -inf = probability 0 (the last call:
    # the first one scored the masking LM)
    assert torch.isfinite(logp[gen]).all()
    # the same numbers from the policy's own logits renormalised over the support
    probs = lm_probs(policy.lm, ids, mask, allowed)[:, P - 1 : -1] * support
    probs = probs / probs.sum(-1, keepdim=True)
    expected_logp = probs.gather(-1, ids[:, P:].unsqueeze(-1)).squeeze(-1).log()
    expected_entropy = -(probs * probs.clamp_min(1e-30).log()).sum(-1)
    torch.testing.assert_close(logp[gen], expected_logp[gen], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(entropy[gen], expected_entropy[gen], atol=1e-4, rtol=1e-4)
    # unrestricted (the reference's log-probs are computed so), the policy spreads over every allowed token
    with torch.no_grad(), policy.unrestricted():
        _, plain_entropy, _ = policy.sequence_forward(ids, mask, P)
    assert float(plain_entropy[gen].mean()) > float(entropy[gen].mean()) + 0.3


def test_the_masking_policy_refreshes_every_mask_update_interval_updates() -> None:
    agent = TextNLPO("LMPolicy", copy_env(), seed=1, mask_update_interval=3, **FAST)
    policy = agent.policy

    def weights(lm) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in lm.named_parameters()}

    def same(lm, snapshot: dict[str, torch.Tensor]) -> bool:
        return all(torch.equal(p, snapshot[n]) for n, p in lm.named_parameters())

    assert not any(p.requires_grad for p in policy.mask_lm.parameters())
    assert {id(p) for p in policy.mask_lm.parameters()}.isdisjoint(
        id(p) for g in policy.optimizer.param_groups for p in g["params"])  # fmt: skip
    snapshots = [weights(policy.lm)]
    assert same(policy.mask_lm, snapshots[0])
    for k in range(1, 8):
        agent.learn(1, reset_num_timesteps=False)
        assert agent.n_updates == k
        snapshots.append(weights(policy.lm))
        refreshed = k - k % 3
        assert agent.mask_refreshed_at == refreshed and agent.history[-1]["train/mask_age"] == k % 3
        assert same(policy.mask_lm, snapshots[refreshed])
        assert same(policy.mask_lm, snapshots[k]) == (k % 3 == 0)  # between refreshes it lags the policy


def test_resume_equals_straight_training(tmp_path: Path) -> None:
    kwargs = {**FAST, "seed": 3, "batch_size": 4, "mask_update_interval": 3, "mask_top_p": 0.8}
    first = TextNLPO("LMPolicy", copy_env(), **kwargs)
    for _ in range(4):  # refreshed after update 3: at the save the masking LM lags the policy by one update
        first.learn(1, reset_num_timesteps=False)
    n1 = first.num_timesteps
    first.save(tmp_path / "ck")
    resumed = TextNLPO.load(tmp_path / "ck", env=copy_env())
    assert json.loads((tmp_path / "ck" / "textppo.json").read_text())["policy_class"] == "LMPolicy"  # as chosen
    assert isinstance(resumed.policy, NLPOPolicy) and resumed.config.mask_update_interval == 3
    assert resumed.num_timesteps == n1 and resumed.mask_refreshed_at == 3
    for a, b in zip(first.policy.mask_lm.parameters(), resumed.policy.mask_lm.parameters()):
        assert torch.equal(a, b)
    resumed.learn(1, reset_num_timesteps=False)  # update 5: rolled out with the restored masking LM
    straight = TextNLPO("LMPolicy", copy_env(), **kwargs)
    straight.learn(n1 + 1)  # five updates in one call
    assert straight.n_updates == resumed.n_updates == 5
    assert straight.num_timesteps == resumed.num_timesteps
    straight_state, resumed_state = straight.policy.state_dict(), resumed.policy.state_dict()
    assert straight_state.keys() == resumed_state.keys() and any(k.startswith("mask_lm.") for k in straight_state)
    for key, value in straight_state.items():  # the policy, its value head and the masking LM
        torch.testing.assert_close(value, resumed_state[key], rtol=1e-6, atol=1e-7)
    assert [h["train/mask_age"] for h in straight.history] == [1.0, 2.0, 0.0, 1.0, 2.0]
    with pytest.raises(CheckpointError, match="nlpo"):
        TextPPO.load(tmp_path / "ck", env=copy_env())


def test_lora_masking_policy_holds_and_saves_only_the_adapters(tmp_path: Path) -> None:
    pytest.importorskip("peft")
    lora = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    agent = TextNLPO("LMPolicy", copy_env(4), seed=0, lora=lora, mask_update_interval=2, **FAST)
    agent.learn(1)
    state = agent.state_dict()["mask_lm"]
    assert state and all("lora_" in name for name in state)
    mask_params = dict(agent.policy.mask_lm.named_parameters())
    changed = [n for n, p in agent.policy.lm.named_parameters() if not torch.equal(p, mask_params[n])]
    assert changed and all("lora_" in n for n in changed)  # only the adapters trained; no refresh yet
    agent.save(tmp_path / "lora")
    loaded = TextNLPO.load(tmp_path / "lora", env=copy_env(4))
    for name, p in loaded.policy.mask_lm.named_parameters():
        assert torch.equal(p, mask_params[name]), name
    loaded.learn(1, reset_num_timesteps=False)  # update 2: refresh
    for name, p in loaded.policy.lm.named_parameters():
        assert torch.equal(p, dict(loaded.policy.mask_lm.named_parameters())[name]), name


def test_mask_top_p_1_is_plain_ppo() -> None:
    nlpo = TextNLPO("LMPolicy", copy_env(), seed=2, mask_top_p=1.0, **FAST)
    ppo = TextPPO("LMPolicy", copy_env(), seed=2, **FAST)
    nlpo.learn(1)
    ppo.learn(1)
    assert nlpo.num_timesteps == ppo.num_timesteps
    for key, value in ppo.policy.state_dict().items():
        torch.testing.assert_close(nlpo.policy.state_dict()[key], value, rtol=0, atol=0)


def test_config_fields_are_documented_and_checked() -> None:
    docs = field_docs(NLPOConfig)
    assert "RL4LMs" in docs["mask_top_p"] and "RL4LMs" in docs["mask_update_interval"]
    for bad in ({"mask_top_p": 0.0}, {"mask_top_p": 1.5}, {"mask_update_interval": 0}):
        with pytest.raises(ConfigError):
            NLPOConfig(**bad)

# Learning with the default config: tests/test_algorithms.py::test_cli_defaults_learn_copy[nlpo].
