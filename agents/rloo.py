"""RLOO (REINFORCE Leave-One-Out) for language models.

RLOO (Kool et al. 2019; Ahmadian et al. 2024, "Back to Basics",
arXiv:2402.14740) treats a whole completion as one action. Each prompt is
answered ``k`` times, and a completion's baseline is the mean reward of the
*other* ``k - 1`` completions of the same prompt, an unbiased baseline that
needs no value network. The KL penalty towards the reference model is part of
the reward, and the policy is trained with a PPO-style clipped objective on
the whole-sequence probability ratio.

The functions below reproduce Hugging Face TRL's current ``RLOOTrainer``
(trl 1.16, ``trl/trainer/rloo_trainer.py``, the rewrite of trl 0.22): the
advantages of ``_generate_and_score_completions`` and the loss of
``_compute_loss``. They are written from the papers and TRL's documented
behaviour, not copied, and ``tests/test_trl_equivalence.py`` checks them
against TRL's own code to 1e-6.

Shapes and layout as in :mod:`agents.grpo`: (B, T) per-token log-probs,
``mask`` (B, T) of the real generated tokens (EOS included), rows
``[j*k, (j+1)*k)`` the ``k`` completions of prompt ``j``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from agents.common.buffers import SequenceBatch
from agents.common.config import GroupConfig
from agents.common.losses import masked_mean
from agents.common.on_policy import OnPolicyAlgorithm
from agents.common.update import Totals
from agents.grpo import clip_fractions, clipped_surrogate, nanstd

# -- math (pure functions, checked against TRL in tests/test_trl_equivalence.py) --


def sequence_logp(logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Log-probability of each whole completion: the sum of its tokens' log-probs over ``mask``, (B,)."""
    return torch.where(mask.bool(), logp, torch.zeros_like(logp)).sum(-1)


def sequence_kl(old_logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-completion KL estimate, (B,): the sum over its tokens of ``old_logp - ref_logp``.

    This is the first-order ("k1") estimator of the RLOO paper, taken under the
    sampling policy (the log-probs recorded when the completions were
    generated, TRL's ``old_per_token_logps``). Unlike GRPO's k3 estimator it
    can be negative, per token and per sequence.
    """
    return sequence_logp(old_logp - ref_logp, mask)


def leave_one_out_baseline(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """Each completion's baseline: the mean reward of the other completions of its prompt, (B,).

    NaN rewards (unscorable completions) are left out: the baseline averages
    the scorable siblings only, and is NaN when there are none.
    """
    grouped = rewards.view(-1, group_size)
    valid = ~torch.isnan(grouped)
    others = torch.nansum(grouped, dim=1, keepdim=True) - grouped
    return (others / (valid.sum(dim=1, keepdim=True) - 1)).reshape(-1)


def rloo_advantages(
    scores: torch.Tensor,
    group_size: int,
    old_logp: torch.Tensor | None = None,
    ref_logp: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    beta: float = 0.05,
    normalize_advantages: bool = False,
    reward_clip_range: tuple[float, float] | None = None,
    eps: float = 1e-4,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """RLOO advantages (B,): the KL-penalised reward minus its leave-one-out baseline.

    Steps, in TRL's order, with TRL ``RLOOConfig`` fields and defaults:

    1. ``scores`` (B,) is the reward of each completion (the weighted sum of
       the reward functions); it is clamped to ``reward_clip_range``
       (``reward_clip_range``, default ``None``: no clipping);
    2. KL in the reward: ``reward = score - beta * sequence_kl(old_logp,
       ref_logp, mask)`` (``beta``, default 0.05; with ``beta == 0`` the
       log-probs are not needed). TRL's RLOO has no option to put the KL in
       the loss instead (the old ``token_level_kl`` was removed in trl 0.22);
    3. ``advantage = reward - leave_one_out_baseline(reward)`` over the
       ``group_size`` completions of a prompt (``num_generations``, default 2);
       with ``group_size == 1`` there is no baseline and every advantage is 0;
    4. ``normalize_advantages`` (default ``False``): whiten over the whole
       batch, ``(A - mean) / (std + eps)``, sample std, ``eps = 1e-4``.

    NaN scores (unscorable completions) stay out of the baselines and the
    normalisation and get advantage 0. Stats: ``rewards`` (after clip and KL),
    ``kl`` (B,) per-sequence KL (``None`` when ``beta == 0``) and ``kl_mean``,
    the per-token mean over ``mask`` that TRL logs as ``kl``.
    """
    if scores.dim() != 1 or scores.numel() % group_size != 0:
        raise ValueError(f"scores must be 1-D with a multiple of group_size={group_size} entries, got {tuple(scores.shape)}")
    rewards = scores
    if reward_clip_range is not None:
        rewards = rewards.clamp(min=reward_clip_range[0], max=reward_clip_range[1])
    stats: dict[str, torch.Tensor | None] = {"kl": None}
    if beta != 0.0:
        if old_logp is None or ref_logp is None or mask is None:
            raise ValueError("old_logp, ref_logp and mask are needed when beta != 0")
        kl = sequence_kl(old_logp, ref_logp, mask)
        rewards = rewards - beta * kl
        stats["kl"] = kl
        stats["kl_mean"] = kl.sum() / mask.bool().sum().clamp(min=1)
    stats["rewards"] = rewards
    if group_size > 1:
        advantages = rewards - leave_one_out_baseline(rewards, group_size)
    else:
        advantages = torch.zeros_like(rewards)
    if normalize_advantages:
        advantages = (advantages - torch.nanmean(advantages)) / (nanstd(advantages) + eps)
    return torch.nan_to_num(advantages, nan=0.0), stats


def rloo_per_sequence_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    epsilon_low: float = 0.2,
    epsilon_high: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """RLOO's loss per completion, (B,), and the clip statistics TRL logs.

    The ratio is taken on whole sequences, ``r = exp(sum_t logp - sum_t
    old_logp)`` over ``mask``, and the loss is PPO's clipped objective
    ``-min(r * A, clip(r, 1 - eps_low, 1 + eps_high) * A)``
    (:func:`agents.grpo.clipped_surrogate`). ``epsilon_low``/``epsilon_high``
    are ``RLOOConfig.epsilon`` (0.2) and ``epsilon_high`` (``None`` = same).
    ``old_logp`` is the sampling policy's log-probs; TRL always records them,
    so with ``num_iterations=1`` (the default) ``r == 1`` in value and the
    loss is plain REINFORCE with the leave-one-out baseline.

    TRL's RLOO loss is per sequence, not per token: reduce it with
    :func:`rloo_aggregate_loss`, not :func:`agents.grpo.aggregate_loss`.
    Stats: ``ratio`` (B,) and the clip flags and fractions (over sequences).
    """
    log_ratio = sequence_logp(logp, mask) - sequence_logp(old_logp, mask)
    ratio = torch.exp(log_ratio)
    loss = clipped_surrogate(ratio, advantages, epsilon_low, epsilon_high)
    stats = {"ratio": ratio}
    stats.update(clip_fractions(ratio, advantages, mask, epsilon_low, epsilon_high))
    return loss, stats


def rloo_aggregate_loss(per_sequence_loss: torch.Tensor) -> torch.Tensor:
    """The scalar RLOO loss: the mean over completions (TRL has no ``loss_type`` for RLOO).

    This is one micro-batch's loss; TRL leaves the division by
    ``gradient_accumulation_steps`` to the Hugging Face ``Trainer``.
    """
    return per_sequence_loss.mean()


# -- the algorithm ---------------------------------------------------------------------------------
@dataclass
class RLOOConfig(GroupConfig):
    """TextRLOO's hyperparameters (TRL ``RLOOConfig`` names in the docs), with the engine's."""

    kl_coef: float = 0.05
    """Weight of the sequence-level KL subtracted from the reward (TRL beta, 0.05). TRL's RLOO puts the KL
    in the reward only, and so does this one."""
    normalize_advantages: bool = True
    """Whiten the advantages over the update's episodes (TRL normalize_advantages, False there: on for a
    learning rate that does not depend on the reward's scale)."""


class TextRLOO(OnPolicyAlgorithm):
    """RLOO: leave-one-out baseline over k completions, KL in the reward, clipped sequence-level loss."""

    name = "rloo"
    config_class = RLOOConfig
    config: RLOOConfig

    def train(self, batch: SequenceBatch) -> dict[str, float]:
        cfg = self.config
        stats = self.prepare(batch)  # old/ref log-probs, rollout means
        rewards, reward_stats = self.shaped_rewards(batch)
        advantages, _ = rloo_advantages(rewards.sum(1), cfg.group_size, batch.old_logp, batch.ref_logp,
                                        batch.gen_mask, beta=cfg.kl_coef)  # fmt: skip
        if cfg.normalize_advantages:  # over every rank's episodes (TRL: (A - mean) / (std + 1e-4))
            advantages = self.dist.masked_whiten(advantages[:, None], torch.ones_like(advantages[:, None]))[:, 0]
        batch.advantages = advantages
        stats.update(reward_stats)
        return self.finish(self.fit(batch, cfg.n_epochs), stats)

    def loss(self, mb: SequenceBatch, totals: Totals) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The clipped sequence-level objective, averaged over the mini-batch's sequences (this slice's share)."""
        cfg, mask = self.config, mb.gen_mask
        logp, entropy, _ = self.policy_forward(mb, with_values=False)
        per_sequence, info = rloo_per_sequence_loss(logp, mb.old_logp, mb.advantages, mask, cfg.epsilon_low, cfg.epsilon_high)
        loss = rloo_aggregate_loss(per_sequence) * (len(mb) / totals.sequences)
        return loss, {
            "entropy": masked_mean(entropy, mask).detach(),
            "ratio": masked_mean(info["ratio"].detach()[:, None].expand_as(logp), mask),
            "clip_fraction": info["clip_ratio/region_mean"],
        }
