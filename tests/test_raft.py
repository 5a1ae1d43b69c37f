"""TextRAFT: which completions are kept and which teach, the update is the NLL of the teaching ones (nothing
else moves it), an update with nothing to teach takes no step, and the config refuses what ranks nothing."""

from __future__ import annotations

import copy

import gymnasium as gym
import pytest
import torch

import textgym  # noqa: F401
from agents.common.losses import masked_sum
from agents.raft import RAFTConfig, TextRAFT, best_of_groups
from textgym.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")
nan = float("nan")


def test_the_best_of_each_group_is_kept_and_teaches_only_above_its_groups_mean() -> None:
    scores = torch.tensor([0.1, 0.5, 0.5, 0.2,  # a tie at the top: the first of them
                           0.3, 0.3, 0.3, 0.3,  # all equal: kept, teaches nothing
                           nan, 0.2, nan, 0.1])  # fmt: skip  # unscorable answers rank last, out of the mean
    index, weight = best_of_groups(scores, 4)
    assert index.tolist() == [1, 4, 9] and weight.tolist() == [1.0, 0.0, 1.0]
    index, weight = best_of_groups(scores, 4, keep_best=2)
    assert index.tolist() == [1, 2, 4, 5, 9, 11] and weight.tolist() == [1.0, 1.0, 0.0, 0.0, 1.0, 0.0]
    # ReST's threshold reads the env's scores, which may differ from the ranking (e.g. a missing-EOS penalty)
    env_scores = torch.tensor([0.1, 0.9, 0.4, 0.2, 0.3, 0.3, 0.3, 0.3, nan, 0.2, nan, 0.1])
    _, weight = best_of_groups(scores, 4, keep_best=2, scores=env_scores, min_reward=0.45)
    assert weight.tolist() == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    _, weight = best_of_groups(torch.full((4,), nan), 2)
    assert weight.tolist() == [0.0, 0.0]  # nothing scorable: nothing taught
    with pytest.raises(ValueError, match=r"keep_best must be in \[1, group_size=4\), got 4"):
        best_of_groups(scores, 4, keep_best=4)
    with pytest.raises(ValueError, match=r"multiple of group_size=5"):
        best_of_groups(scores, 5)


def test_config_refuses_keeping_every_completion_or_groups_of_one() -> None:
    with pytest.raises(ConfigError, match=r"keep_best \(4\) must be smaller than group_size \(4\)"):
        RAFTConfig(keep_best=4)
    with pytest.raises(ConfigError, match=r"group_size must be >= 2, got 1"):
        RAFTConfig(group_size=1)
    assert RAFTConfig().group_size == 4 and RAFTConfig().keep_best == 1
    # a threshold on the reward may be negative (rewards with penalties are), but must be a number
    assert RAFTConfig(min_reward=-0.5).min_reward == -0.5
    with pytest.raises(ConfigError, match=r"min_reward=nan is not allowed; expected float \| None"):
        RAFTConfig(min_reward=float("nan"))


def _agent(**kwargs) -> TextRAFT:
    env = gym.make_vec("textgym/Copy-v0", num_envs=8, model="tiny-random")
    settings = {"seed": 0, "n_rollouts": 1, "bf16": False, "n_epochs": 1, "learning_rate": 0.5, "max_grad_norm": 1e9,
                "policy_kwargs": {"optimizer_class": torch.optim.SGD}, **kwargs}  # fmt: skip
    return TextRAFT("LMPolicy", env, model="tiny-random", **settings)


@pytest.mark.parametrize("kl_coef", [0.0, 0.3])
def test_the_update_is_one_step_on_the_teaching_completions_nll(kl_coef: float) -> None:
    """One SGD step of the update equals one on ``sum(weight * (-logp + kl_coef * k3)) / kept tokens`` over the
    kept rows, computed here by hand: the other completions of a group do not move the weights."""
    agent = _agent(kl_coef=kl_coef)
    assert not agent._first_step_takes_all(8)  # prepare keeps no graph: the update trains on other rows
    batch = agent.collect(agent._init_callback(None))
    before = copy.deepcopy(agent.policy)
    agent.total_timesteps = 1
    stats = agent.checked_train(batch)
    index, weight = best_of_groups(batch.scores, 4)
    assert 0 < weight.sum() and stats["train/kept_fraction"] == pytest.approx(float(weight.mean()))
    kept = batch.select(index)
    logp, _, _ = before.sequence_forward(kept.input_ids, kept.attention_mask, kept.prompt_len, with_values=False)
    delta = kept.ref_logp - logp
    per_token = (-logp + kl_coef * (delta.exp() - delta - 1)) * weight[:, None]
    (masked_sum(per_token, kept.gen_mask) / kept.gen_mask.sum()).backward()
    moved = 0.0
    for (name, p0), p1 in zip(before.named_parameters(), agent.policy.parameters()):
        if p0.grad is not None:
            torch.testing.assert_close(p1.detach(), p0.detach() - 0.5 * p0.grad, rtol=1e-4, atol=1e-6, msg=name)
            moved = max(moved, float(p0.grad.abs().max()))
    assert moved > 1e-4  # the step was not empty


def test_an_update_whose_groups_all_tie_takes_no_step(monkeypatch) -> None:
    agent = _agent(policy_kwargs={}, learning_rate=1e-3)  # Adam: after a first step, its momentum would move the
    agent.total_timesteps = 2  # weights on a zero gradient
    agent.checked_train(agent.collect(agent._init_callback(None)))
    batch = agent.collect(agent._init_callback(None))
    before = [p.detach().clone() for p in agent.policy.parameters()]
    monkeypatch.setattr(agent, "shaped_rewards", lambda b: (torch.zeros_like(b.env_rewards), {}))
    stats = agent.checked_train(batch)
    assert stats["train/kept_fraction"] == 0.0 and agent.n_updates == 2 and "train/loss" not in stats
    assert all(torch.equal(a, b) for a, b in zip(before, agent.policy.parameters()))
