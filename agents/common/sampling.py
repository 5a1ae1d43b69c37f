"""One definition of the sampling distribution, used in rollouts and in every recomputed log-prob.

The policy samples from ``softmax(filter(logits / temperature))`` where the
filter removes tokens outside the env's action mask, outside the ``top_k``
largest and outside the ``top_p`` nucleus.  The same function turns logits into
log-probabilities in the rollout, for the reference model and in the PPO
update, always in float32 (a bf16 log-softmax drifts; see docs/trainer.md).

In a recomputation the token that was actually sampled is always kept in the
support (``keep=``): a top-k/top-p filter recomputed from updated logits could
otherwise drop it and give a log-prob of -inf.
"""

from __future__ import annotations

import torch

NEG_INF = float("-inf")


def filter_logits(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    action_mask: torch.Tensor | None = None,
    keep: torch.Tensor | None = None,
) -> torch.Tensor:
    """Float32 logits of the sampling distribution over the last dimension (disallowed = -inf).

    ``action_mask`` is a bool tensor broadcastable to ``logits``; ``keep`` holds
    token ids (shape ``logits.shape[:-1]``) that stay allowed whatever the filters say.
    """
    out = logits.float()
    if temperature != 1.0:
        out = out / temperature
    if action_mask is not None:
        out = out.masked_fill(~action_mask.bool(), NEG_INF)
    if top_k and top_k < out.shape[-1]:
        kth = torch.topk(out, top_k, dim=-1).values[..., -1:]
        remove = out < kth
        out = _remove(out, remove, keep)
    if top_p < 1.0:
        sorted_logits, order = torch.sort(out, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop a token when the tokens ranked above it already reach top_p (the first is always kept)
        drop_sorted = (probs.cumsum(dim=-1) - probs) >= top_p
        remove = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        out = _remove(out, remove, keep)
    return out


def _remove(out: torch.Tensor, remove: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    if keep is not None:
        remove = remove.scatter(-1, keep.unsqueeze(-1), False)
    return out.masked_fill(remove, NEG_INF)


def log_probs_and_entropy(filtered: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of ``actions`` and the entropy of each distribution (float32)."""
    logp_all = torch.log_softmax(filtered, dim=-1)
    logp = logp_all.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    p = logp_all.exp()
    # masked_fill (not where on a product): 0 * -inf would give NaN gradients for removed tokens
    entropy = -(p * logp_all.masked_fill(p == 0, 0.0)).sum(-1)
    return logp, entropy


def sample_tokens(filtered: torch.Tensor, generator: torch.Generator | None, deterministic: bool = False) -> torch.Tensor:
    """Draw one token per row from filtered logits (argmax when ``deterministic``).

    The exponential race: with ``E_i ~ Exp(1)`` independent, ``argmax_i p_i / E_i`` is
    distributed as ``p`` (what ``torch.multinomial`` computes for one sample).  ``E = -log U``
    from uniforms is several times faster on the CPU than ``Tensor.exponential_``.  ``U`` is in
    [0, 1): ``E`` is > 0 (no division by zero) and ``U = 0`` gives ``E = inf``, a score of 0.
    Removed tokens (``p = 0``) always score 0, so they are never drawn.
    """
    if deterministic:
        return filtered.argmax(dim=-1)
    probs = torch.softmax(filtered, dim=-1)
    noise = torch.rand(probs.shape, generator=generator, device=probs.device).log_().neg_()
    return probs.div_(noise).argmax(dim=-1)


def generator_on(generator: torch.Generator | None, device: torch.device) -> torch.Generator | None:
    """``generator`` if it draws on ``device``'s type, else a generator there seeded from it.

    The sampler draws its noise where the logits are; a CPU generator (TextPPO's, saved with
    the agent) then seeds one generator per rollout on the model's device: reproducible, and
    no per-token host-to-device copies.
    """
    if generator is None or generator.device.type == device.type:
        return generator
    return torch.Generator(device).manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
