"""TextPPO: PPO for language models (Ziegler et al. 2019; Stiennon et al. 2020), SB3's API.

Per update: the engine collects episodes and the reference log-probs
(:class:`~agents.common.on_policy.OnPolicyAlgorithm`); PPO then puts the
env's score at the last real token, subtracts ``kl_coef * KL`` on every
generated token, runs GAE with the critic's values (no bootstrap past the end
of an episode: the env has scored the text), whitens the advantages and
trains ``n_epochs`` of clipped policy loss + clipped value loss - entropy bonus.

Example:
    >>> import gymnasium as gym, textgym
    >>> from agents import TextPPO
    >>> env = gym.make_vec("textgym/Copy-v0", num_envs=8, model="tiny-random")
    >>> agent = TextPPO("LMPolicy", env, model="tiny-random", seed=0, n_rollouts=1)
    >>> agent.learn(total_timesteps=50).num_timesteps >= 50
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from agents.common.buffers import SequenceBatch
from agents.common.config import OnPolicyConfig
from agents.common.kl import KLController, make_kl_controller
from agents.common.losses import (
    at_last_token,
    clipped_policy_loss,
    clipped_value_loss,
    explained_variance,
    gae,
    masked_mean,
    token_rewards,
)
from agents.common.on_policy import OnPolicyAlgorithm
from agents.common.update import Totals


@dataclass
class PPOConfig(OnPolicyConfig):
    """TextPPO's hyperparameters (with the engine's, :class:`~agents.common.config.OnPolicyConfig`)."""

    gamma: float = 1.0
    """Discount per token (1.0: the score at the end counts fully for every token)."""
    gae_lambda: float = 0.95
    """GAE lambda."""
    clip_range: float = 0.2
    """PPO ratio clip epsilon."""
    clip_range_vf: float | None = 0.2
    """Value clip around the rollout values (None = no value clipping)."""
    ent_coef: float = 0.0
    """Entropy bonus coefficient."""
    vf_coef: float = 0.1
    """Value loss coefficient."""
    target_kl: float | None = None
    """Stop the epoch loop when the approx-KL of the update to the rollout policy exceeds 1.5 * target_kl."""
    kl_target: float | None = None
    """Adaptive KL control: sequence-level KL target (None = fixed kl_coef)."""
    kl_horizon: int = 10_000
    """Adaptive KL control horizon in sequences."""
    whiten_advantages: bool = True
    """Normalise advantages over the generated tokens of the update."""
    separate_critic: bool = False
    """Value head on its own copy of the transformer instead of the shared trunk."""


class TextPPO(OnPolicyAlgorithm):
    """PPO with a critic, GAE and a per-token KL penalty in the reward (see the module docstring).

    ``group_size`` > 1 centres each episode's score on the mean of the other completions of its prompt
    (a leave-one-out baseline) before GAE.
    """

    name = "ppo"
    config_class = PPOConfig
    uses_values = True
    config: PPOConfig

    def _setup_algorithm(self) -> None:
        cfg = self.config
        self.kl_ctl: KLController = make_kl_controller(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon)

    def train(self, batch: SequenceBatch) -> dict[str, float]:
        cfg, mask = self.config, batch.gen_mask
        stats = self.prepare(batch)  # old/ref log-probs, values, batch.kl, rollout means
        rewards, reward_stats = self.shaped_rewards(batch)
        if cfg.group_size > 1:  # leave-one-out baseline among the completions of a prompt
            scores = rewards.sum(1).view(-1, cfg.group_size)
            baseline = (scores.sum(1, keepdim=True) - scores) / (cfg.group_size - 1)
            rewards = rewards + at_last_token(-baseline.reshape(-1), mask)
            stats["rollout/group_score_std"] = self.dist.means({"x": batch.scores.view(-1, cfg.group_size).std(1)})["x"]
        batch.rewards = token_rewards(rewards, batch.kl, mask, self.kl_ctl.value)
        advantages, batch.returns = gae(batch.rewards, batch.values, mask, cfg.gamma, cfg.gae_lambda)
        batch.advantages = self.dist.masked_whiten(advantages, mask) if cfg.whiten_advantages else advantages
        stats.update(reward_stats)
        stats["train/kl_coef"] = float(self.kl_ctl.value)
        stats["rollout/kl_penalty_mean"] = self.dist.means({"x": (-self.kl_ctl.value * batch.kl, mask)})["x"]
        self.kl_ctl.update(stats["rollout/kl_ref"], self.dist.sum_int(len(batch)))

        updater, stopped_at = self.updater(), -1
        for epoch in range(cfg.n_epochs):
            for minibatch in updater.minibatches(batch):
                step = updater.step(minibatch, self.loss)
                if step is not None and cfg.target_kl is not None and step["approx_kl"] > 1.5 * cfg.target_kl:
                    stopped_at = epoch + 1
                    break
            if stopped_at > 0:
                break
        stats["train/early_stop_epoch"] = float(stopped_at)
        stats["train/explained_variance"] = explained_variance(batch.values, batch.returns, mask)
        stats["train/clip_range"] = cfg.clip_range
        return self.finish(updater, stats)

    def loss(self, mb: SequenceBatch, totals: Totals) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Clipped surrogate + vf_coef * clipped value loss - ent_coef * entropy, token-averaged."""
        cfg, mask = self.config, mb.gen_mask
        logp, entropy, values = self.policy_forward(mb)
        pol = clipped_policy_loss(logp, mb.old_logp, mb.advantages, mask, cfg.clip_range)
        vloss, vclip = clipped_value_loss(values, mb.values, mb.returns, mask, cfg.clip_range_vf)
        ent = masked_mean(entropy, mask)
        loss = (pol.loss + cfg.vf_coef * vloss - cfg.ent_coef * ent) * (mask.sum() / totals.tokens)
        return loss, {
            "policy_gradient_loss": pol.loss.detach(), "value_loss": vloss.detach(), "entropy": ent.detach(),
            "clip_fraction": pol.clip_fraction, "approx_kl": pol.approx_kl, "value_clip_fraction": vclip,
            "ratio": pol.ratio_mean,
        }  # fmt: skip

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "kl_controller": self.kl_ctl.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.kl_ctl.load_state_dict(state["kl_controller"])
