"""The math of PPO for language models, as pure functions over padded tensors.

Shapes: ``B`` sequences, ``T`` generated-token slots; ``mask`` (B, T) is 1 for
the tokens a sequence really generated (EOS included) and 0 after it.
Every function is tested against hand-computed values in ``tests/test_ppo_math.py``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


def masked_sum(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum of ``values`` where ``mask`` is set (NaN/inf outside the mask are ignored)."""
    return torch.where(mask.bool(), values, torch.zeros_like(values)).sum()


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over the masked entries (0 when the mask is empty)."""
    count = mask.sum()
    return masked_sum(values, mask) / count.clamp(min=1)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance over the masked entries (Bessel-corrected by default, like ``torch.var``)."""
    mean = masked_mean(values, mask)
    sq = masked_sum((values - mean) ** 2, mask)
    count = mask.sum()
    denom = count - 1 if unbiased and count > 1 else count.clamp(min=1)
    return sq / denom


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Normalise to zero mean and unit variance over the masked entries only.

    Entries outside the mask are set to 0, so padding never leaks into a loss.
    """
    mean, var = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.bool(), whitened, torch.zeros_like(whitened))


def at_last_token(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A (B, T) tensor holding each sequence's scalar ``scores`` at its last real token, 0 elsewhere.

    The last real token is found from ``mask``, never from a pad id (pad == EOS in SmolLM2).
    """
    mask = mask.bool()
    out = torch.zeros(mask.shape, dtype=scores.dtype, device=scores.device)
    lengths = mask.sum(dim=1)
    rows = torch.nonzero(lengths > 0).squeeze(1)
    out[rows, lengths[rows] - 1] = scores[rows]
    return out


def token_rewards(env_rewards: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """Per-token rewards: the env's reward of each step minus ``kl_coef * kl`` on every generated token.

    With sparse env rewards ``env_rewards`` is the score at the last real token
    (see :func:`at_last_token`); with dense rewards it is the per-step delta.
    """
    return torch.where(mask.bool(), env_rewards - kl_coef * kl, torch.zeros_like(kl))


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over each sequence's generated tokens.

    The value after the last real token is 0: the episode is over whether it
    ended with EOS or at ``max_new_tokens`` (the env has scored the text), so
    nothing is bootstrapped.  Columns outside ``mask`` between generated tokens
    (a multi-turn conversation's environment replies) are skipped: the next
    state of a turn's last token is the next turn's first.  Returns
    ``(advantages, returns)``, both 0 outside ``mask``.
    """
    mask = mask.to(values.dtype)
    values = values * mask
    rewards = rewards * mask
    B, T = rewards.shape
    advantages = torch.zeros_like(rewards)
    last = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)  # the advantage of the next generated token
    next_value = torch.zeros_like(last)  # the value of the next generated token (0 after the last)
    for t in reversed(range(T)):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = torch.where(m.bool(), delta + gamma * lam * last, last)
        next_value = torch.where(m.bool(), values[:, t], next_value)
        advantages[:, t] = last * m
    returns = (advantages + values) * mask
    return advantages, returns


class PolicyLoss(NamedTuple):
    loss: torch.Tensor
    clip_fraction: torch.Tensor
    approx_kl: torch.Tensor
    ratio_mean: torch.Tensor


def clipped_policy_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip_range: float
) -> PolicyLoss:
    """PPO's clipped surrogate, ``-min(r A, clip(r, 1-eps, 1+eps) A)``, averaged over ``mask``.

    ``approx_kl`` is the ``(r - 1) - log r`` estimator of KL(old || new).
    """
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        clip_fraction = masked_mean(((ratio - 1.0).abs() > clip_range).to(logp.dtype), mask)
        approx_kl = masked_mean(torch.expm1(log_ratio) - log_ratio, mask)
        ratio_mean = masked_mean(ratio, mask)
    return PolicyLoss(loss, clip_fraction, approx_kl, ratio_mean)


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range_vf: float | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``0.5 * max((v - R)^2, (clip(v, v_old +- eps) - R)^2)`` over ``mask``; no clip when ``clip_range_vf`` is None.

    Returns ``(loss, value clip fraction)``.
    """
    unclipped = (values - returns) ** 2
    if clip_range_vf is None:
        return 0.5 * masked_mean(unclipped, mask), torch.zeros((), dtype=values.dtype)
    clipped_v = old_values + torch.clamp(values - old_values, -clip_range_vf, clip_range_vf)
    clipped = (clipped_v - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        frac = masked_mean((clipped > unclipped).to(values.dtype), mask)
    return loss, frac


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """``1 - Var[R - V] / Var[R]`` over ``mask`` (NaN when the returns have no variance)."""
    var_returns = masked_var(returns, mask)
    if float(var_returns) == 0.0:
        return float("nan")
    return float(1.0 - masked_var(returns - values, mask) / var_returns)
