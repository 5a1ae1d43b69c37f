"""GRPO (Group Relative Policy Optimization) for language models.

GRPO (Shao et al. 2024, "DeepSeekMath", arXiv:2402.03300) drops PPO's value
network: each prompt is answered ``G`` times, and a completion's advantage is
its reward measured against the other completions of the same prompt. The
policy is then trained with PPO's clipped surrogate, token by token, plus an
optional KL penalty towards a frozen reference model.

The functions below reproduce Hugging Face TRL's ``GRPOTrainer`` (trl 1.16,
``trl/trainer/grpo_trainer.py``): the advantages of
``_generate_and_score_completions`` and the loss of ``_compute_loss``. They are
written from the papers and TRL's documented behaviour, not copied, and
``tests/test_trl_equivalence.py`` checks them against TRL's own code to 1e-6.

Shapes: ``B`` completions, ``T`` generated-token slots. ``logp``,
``old_logp`` and ``ref_logp`` are (B, T) per-token log-probabilities of the
generated tokens under the current, the sampling ("old") and the reference
policy; ``mask`` (B, T) marks the real generated tokens (EOS included).
Rows ``[k*G, (k+1)*G)`` are the ``G`` completions of prompt ``k``.
Values outside ``mask`` are ignored, even when they are not finite.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from agents.common.buffers import SequenceBatch
from agents.common.config import GroupConfig
from agents.common.losses import masked_mean
from agents.common.on_policy import OnPolicyAlgorithm
from agents.common.update import Totals

# -- math (pure functions, checked against TRL in tests/test_trl_equivalence.py) --


def nanstd(values: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sample standard deviation (Bessel-corrected) ignoring NaN entries; NaN when fewer than two values.

    Same definition as TRL's ``trl.trainer.utils.nanstd``: mean of squared
    deviations from the NaN-mean, times ``n / (n - 1)``.
    """
    if dim is None:
        values, dim = values.reshape(-1), 0
    mean = torch.nanmean(values, dim=dim, keepdim=True)
    variance = torch.nanmean((values - mean) ** 2, dim=dim)
    count = (~torch.isnan(values)).sum(dim=dim).to(values.dtype)
    correction = torch.where(count > 1, count / (count - 1), torch.full_like(count, float("nan")))
    return torch.sqrt(variance * correction)


def group_advantages(
    scores: torch.Tensor, group_size: int, scale: str | bool = "group", eps: float = 1e-4
) -> torch.Tensor:
    """GRPO advantages: each score minus its group's mean, optionally divided by a standard deviation.

    ``scores`` (B,) holds one scalar reward per completion, ``B`` a multiple of
    ``group_size`` (TRL's ``num_generations``, default 8). ``scale`` is TRL's
    ``GRPOConfig.scale_rewards`` (default ``"group"``; ``True``/``False`` mean
    ``"group"``/``"none"`` as in TRL):

    * ``"group"``: divide by the std of the completion's own group (the GRPO paper);
    * ``"batch"``: divide by one std over the whole batch (PPO-Lite,
      arXiv:2508.08221), still centring on the group mean;
    * ``"none"``: centre only (Dr. GRPO, arXiv:2503.20783, argues that the std
      division biases training towards too easy/too hard questions).

    The std is the sample std (Bessel-corrected) and the division is by
    ``std + eps`` with TRL's ``eps = 1e-4``, so a group whose completions all
    scored the same gets advantage 0 (TRL logs these as ``frac_reward_zero_std``).
    With ``group_size == 1`` (or a batch of one for ``"batch"``) the std is
    taken as 0, as TRL does for evaluation with one generation.

    A NaN score marks an unscorable completion (TRL: every reward function
    returned ``None``): it is left out of its group's mean and std, and its
    advantage is 0.

    TRL's multi-reward ``multi_objective_aggregation="normalize_then_sum"`` is
    not offered: ``scores`` is already the single (weighted-sum) reward, which
    is TRL's default ``"sum_then_normalize"``.
    """
    scale = {True: "group", False: "none"}.get(scale, scale)
    if scale not in ("group", "batch", "none"):
        raise ValueError(f"scale must be 'group', 'batch' or 'none', got {scale!r}")
    if scores.dim() != 1 or scores.numel() % group_size != 0:
        raise ValueError(f"scores must be 1-D with a multiple of group_size={group_size} entries, got {tuple(scores.shape)}")
    grouped = scores.view(-1, group_size)
    mean = torch.nanmean(grouped, dim=1).repeat_interleave(group_size)
    advantages = scores - mean
    if scale == "group":
        std = nanstd(grouped, dim=1).repeat_interleave(group_size) if group_size > 1 else torch.zeros_like(scores)
        advantages = advantages / (std + eps)
    elif scale == "batch":
        std = nanstd(scores).expand_as(scores) if scores.numel() > 1 else torch.zeros_like(scores)
        advantages = advantages / (std + eps)
    return torch.nan_to_num(advantages, nan=0.0)


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token KL estimate ``exp(ref - logp) - (ref - logp) - 1`` (Schulman's "k3"; always >= 0).

    An unbiased, low-variance estimate of KL(pi || pi_ref) from tokens sampled
    from pi; it is what the GRPO paper and TRL's ``GRPOTrainer`` use.
    """
    delta = ref_logp - logp
    return torch.exp(delta) - delta - 1


def importance_log_weights(
    logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor, level: str = "token"
) -> torch.Tensor:
    """Log importance weights ``log(pi / pi_old)``: (B, T) per token, or (B, 1) per sequence.

    ``level`` is TRL's ``GRPOConfig.importance_sampling_level`` (default
    ``"token"``). ``"sequence"`` is GSPO (Zheng et al. 2025, arXiv:2507.18071):
    one weight per completion, the length-normalised log-ratio
    ``mean_t log(pi/pi_old)`` over the completion's tokens.
    """
    log_ratio = logp - old_logp
    if level == "token":
        return log_ratio
    if level == "sequence":
        m = mask.to(logp.dtype)
        total = torch.where(mask.bool(), log_ratio, torch.zeros_like(log_ratio)).sum(-1)
        return (total / m.sum(-1).clamp(min=1.0)).unsqueeze(-1)
    raise ValueError(f"importance_sampling_level must be 'token' or 'sequence', got {level!r}")


def clipped_surrogate(
    ratio: torch.Tensor,
    advantages: torch.Tensor,
    epsilon_low: float = 0.2,
    epsilon_high: float | None = None,
    delta: float | None = None,
) -> torch.Tensor:
    """PPO's clipped objective as a loss: ``-min(r * A, clip(r, 1 - eps_low, 1 + eps_high) * A)``.

    ``epsilon_low``/``epsilon_high`` are TRL's ``epsilon`` (default 0.2) and
    ``epsilon_high`` (default ``None``, meaning equal to ``epsilon``); a larger
    upper bound is DAPO's "clip-higher" (arXiv:2503.14476 recommends 0.28).
    ``delta`` is TRL's ``GRPOConfig.delta`` (default ``None``): when set, the
    unclipped ratio is also capped at ``delta`` (INTELLECT-2's two-sided
    clipping, arXiv:2505.07291), so a negative advantage cannot push an
    unbounded ratio. ``ratio`` and ``advantages`` broadcast against each other.
    """
    epsilon_high = epsilon_low if epsilon_high is None else epsilon_high
    clipped = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)
    if delta is not None:
        ratio = torch.clamp(ratio, max=delta)
    return -torch.min(ratio * advantages, clipped * advantages)


def clip_fractions(
    ratio: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    epsilon_low: float = 0.2,
    epsilon_high: float | None = None,
) -> dict[str, torch.Tensor]:
    """Where the clip was active, as TRL logs it (``clip_ratio/low_mean``, ``high_mean``, ``region_mean``).

    A token is "low clipped" when ``r < 1 - eps_low`` with a negative advantage
    and "high clipped" when ``r > 1 + eps_high`` with a positive one (only then
    does the clip remove the gradient). The fractions are taken over the tokens
    of ``mask``; for a (B, 1) per-sequence ``ratio`` they are over sequences.
    Returns the boolean tensors and the fractions (detached scalars).
    """
    epsilon_high = epsilon_low if epsilon_high is None else epsilon_high
    low = (ratio < 1 - epsilon_low) & (advantages < 0)
    high = (ratio > 1 + epsilon_high) & (advantages > 0)
    region = low | high

    def fraction(flags: torch.Tensor) -> torch.Tensor:
        flags = flags.detach().to(torch.float32)
        if flags.dim() == 1 or flags.shape[-1] == 1:
            return flags.mean()
        m = mask.bool()
        return torch.where(m, flags, torch.zeros_like(flags)).sum() / m.sum().clamp(min=1)

    return {
        "is_low_clipped": low,
        "is_high_clipped": high,
        "is_region_clipped": region,
        "clip_ratio/low_mean": fraction(low),
        "clip_ratio/high_mean": fraction(high),
        "clip_ratio/region_mean": fraction(region),
    }


def grpo_per_token_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor | None,
    ref_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    epsilon_low: float = 0.2,
    epsilon_high: float | None = None,
    beta: float = 0.0,
    importance_sampling_level: str = "token",
    delta: float | None = None,
    use_bias_correction_kl: bool = True,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GRPO's per-token loss (B, T) before aggregation, and statistics as TRL logs them.

    Per token: ``clipped_surrogate(r, A) + beta * KL`` with

    * ``r = exp(importance_log_weights(logp, old_logp))`` (per token, or one
      GSPO weight per sequence with ``importance_sampling_level="sequence"``);
    * ``A`` the completion's advantage, (B,) or already (B, T);
    * ``KL = k3_kl(logp, ref_logp)``, multiplied by ``r`` when
      ``use_bias_correction_kl`` (TRL's default ``True``: the DeepSeek-V3.2
      correction that makes the KL gradient unbiased off-policy; ``r`` keeps
      its gradient, so this changes the KL gradient even on-policy).

    Parameters and their TRL ``GRPOConfig`` counterparts (defaults there):
    ``epsilon_low`` = ``epsilon`` (0.2), ``epsilon_high`` = ``epsilon_high``
    (``None`` = ``epsilon``), ``beta`` = ``beta`` (0.0: no KL term and no
    reference model; DeepSeek-R1 used 0.001), ``importance_sampling_level``
    (``"token"``), ``delta`` (``None``), ``use_bias_correction_kl`` (``True``).

    ``old_logp=None`` is TRL's on-policy shortcut: with ``num_iterations=1``
    (the default) and generation aligned with optimizer steps, the sampling
    policy is the current one, so ``old_logp = logp.detach()`` and ``r = 1``
    with the gradient of ``logp``. ``ref_logp`` is only read when ``beta != 0``.

    The returned loss is always (B, T) (a per-sequence GSPO term is broadcast
    over the tokens); it still has to be reduced with :func:`aggregate_loss`.
    Stats: ``ratio`` (B, T) or (B, 1), ``per_token_kl`` (B, T, or ``None`` when
    ``beta == 0``), ``kl`` (its mean over ``mask``), the clip flags and
    fractions of :func:`clip_fractions`.

    Not offered from TRL: the loss types ``cispo``, ``sapo``, ``luspo``,
    ``vespo``; ``top_entropy_quantile`` < 1 (entropy masking),
    ``off_policy_mask_threshold``, the entropy bonus, vLLM importance-sampling
    correction, and ``tool_mask`` (pass ``mask`` already multiplied by it).
    """
    if old_logp is None:
        old_logp = logp.detach()
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)
    log_weights = importance_log_weights(logp, old_logp, mask, importance_sampling_level)
    ratio = torch.exp(log_weights)
    per_token_loss = clipped_surrogate(ratio, advantages, epsilon_low, epsilon_high, delta).expand_as(logp)
    per_token_kl = None
    if beta != 0.0:
        if ref_logp is None:
            raise ValueError("ref_logp is needed when beta != 0")
        per_token_kl = k3_kl(logp, ref_logp)
        if use_bias_correction_kl:
            per_token_kl = per_token_kl * ratio
        per_token_loss = per_token_loss + beta * per_token_kl
    stats: dict[str, torch.Tensor] = {"ratio": ratio, "per_token_kl": per_token_kl}
    if per_token_kl is not None:
        m = mask.bool()
        kl = per_token_kl.detach().to(torch.float32)
        stats["kl"] = torch.where(m, kl, torch.zeros_like(kl)).sum() / m.sum().clamp(min=1)
    stats.update(clip_fractions(ratio, advantages, mask, epsilon_low, epsilon_high))
    return per_token_loss, stats


def aggregate_loss(
    per_token_loss: torch.Tensor,
    mask: torch.Tensor,
    loss_type: str = "dapo",
    max_completion_length: int | None = None,
    num_items: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Reduce a (B, T) per-token loss to a scalar, as TRL's ``GRPOConfig.loss_type`` (default ``"dapo"``).

    * ``"grpo"``: mean over a completion's tokens, then mean over completions
      (the GRPO paper; favours short correct and long wrong answers);
    * ``"bnpo"``: mean over all tokens of the batch;
    * ``"dr_grpo"``: sum over tokens divided by ``B * max_completion_length``,
      a constant (Dr. GRPO, arXiv:2503.20783); ``max_completion_length`` is
      TRL's ``GRPOConfig.max_completion_length`` (default 512) and is required;
    * ``"dapo"``: sum over tokens divided by ``num_items``, the number of loss
      tokens of the whole accumulated batch (DAPO, arXiv:2503.14476). It
      defaults to ``mask.sum()``, which is TRL's value with one process and no
      gradient accumulation; in general TRL uses the token count of the whole
      generation batch over all processes, divided by ``num_processes`` and by
      ``steps_per_generation``, times ``gradient_accumulation_steps``.

    Counts are clamped to at least 1, so an empty mask gives 0, not NaN. The
    result is the loss of one micro-batch: TRL further divides ``grpo``,
    ``bnpo`` and ``dr_grpo`` by ``gradient_accumulation_steps`` in training
    (``dapo`` is already scaled through ``num_items``).

    Not offered: ``cispo``, ``sapo``, ``luspo`` and ``vespo``.
    """
    m = mask.bool()
    masked = torch.where(m, per_token_loss, torch.zeros_like(per_token_loss))
    counts = m.sum(-1).to(per_token_loss.dtype)
    if loss_type == "grpo":
        return (masked.sum(-1) / counts.clamp(min=1.0)).mean()
    if loss_type == "bnpo":
        return masked.sum() / counts.sum().clamp(min=1.0)
    if loss_type == "dr_grpo":
        if max_completion_length is None:
            raise ValueError("loss_type='dr_grpo' needs max_completion_length")
        return masked.sum() / (per_token_loss.size(0) * max_completion_length)
    if loss_type == "dapo":
        total = counts.sum() if num_items is None else torch.as_tensor(num_items, dtype=per_token_loss.dtype, device=per_token_loss.device)
        return masked.sum() / total.clamp(min=1.0)
    raise ValueError(f"loss_type must be one of 'grpo', 'bnpo', 'dr_grpo', 'dapo', got {loss_type!r}")


# -- the algorithm ---------------------------------------------------------------------------------
@dataclass
class GRPOConfig(GroupConfig):
    """TextGRPO's hyperparameters (TRL ``GRPOConfig`` names in the docs), with the engine's."""

    kl_coef: float = 0.04
    """Weight of the k3 KL term in the loss (TRL beta, default 0.0 there; DeepSeekMath used 0.04)."""
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    """KL estimator of the logged rollout KL (the loss always uses k3, as GRPO does)."""
    scale_rewards: Literal["group", "batch", "none"] = "group"
    """Divide the centred rewards by the std of the group, of the whole batch, or not at all (Dr. GRPO)."""
    loss_type: Literal["grpo", "bnpo", "dr_grpo", "dapo"] = "dapo"
    """Token aggregation: per-sequence mean then mean (grpo), token mean (bnpo, dapo: the same over one
    mini-batch), or token sum / (sequences * max_new_tokens) (dr_grpo)."""


class TextGRPO(OnPolicyAlgorithm):
    """GRPO: group-relative advantages, no critic, clipped token loss with the KL term in the loss."""

    name = "grpo"
    config_class = GRPOConfig
    config: GRPOConfig

    def train(self, batch: SequenceBatch) -> dict[str, float]:
        cfg = self.config
        stats = self.prepare(batch)  # old/ref log-probs, rollout means
        rewards, reward_stats = self.shaped_rewards(batch)
        batch.advantages = group_advantages(rewards.sum(1), cfg.group_size, cfg.scale_rewards)  # (B,)
        stats.update(reward_stats)
        return self.finish(self.fit(batch, cfg.n_epochs), stats)

    def loss(self, mb: SequenceBatch, totals: Totals) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """GRPO's per-token loss, aggregated as ``loss_type``, as this slice's share of the mini-batch."""
        cfg, mask = self.config, mb.gen_mask
        logp, entropy, _ = self.policy_forward(mb, with_values=False)
        per_token, info = grpo_per_token_loss(logp, mb.old_logp, mb.ref_logp, mb.advantages, mask,
                                              cfg.epsilon_low, cfg.epsilon_high, beta=cfg.kl_coef)  # fmt: skip
        rows = len(mb) / totals.sequences
        if cfg.loss_type == "grpo":
            loss = aggregate_loss(per_token, mask, "grpo") * rows
        elif cfg.loss_type == "dr_grpo":
            loss = aggregate_loss(per_token, mask, "dr_grpo", max_completion_length=totals.max_new_tokens) * rows
        else:  # bnpo and dapo: the token mean over the mini-batch
            loss = aggregate_loss(per_token, mask, "dapo", num_items=totals.tokens)
        return loss, {
            "entropy": masked_mean(entropy, mask).detach(),
            "ratio": masked_mean(info["ratio"].detach().expand_as(logp), mask),
            "kl": info.get("kl", torch.zeros(())),
            "clip_fraction": info["clip_ratio/region_mean"],
        }
