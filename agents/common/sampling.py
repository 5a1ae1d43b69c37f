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

from typing import Any

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
    buffer: torch.Tensor | None = None,
) -> torch.Tensor:
    """Float32 (float64 for float64) logits of the sampling distribution over the last dimension (disallowed = -inf).

    ``action_mask`` is a bool tensor broadcastable to ``logits``; ``keep`` holds
    token ids (shape ``logits.shape[:-1]``) that stay allowed whatever the filters say.
    ``buffer`` (``logits``' shape, :func:`_math_dtype`) receives the upcast logits instead of a new tensor;
    it is what is returned when no filter is active.
    """
    out = logits.to(_math_dtype(logits)) if buffer is None else buffer.copy_(logits)
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


def log_probs_and_entropy(
    logits: torch.Tensor, actions: torch.Tensor, **filters: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of ``actions`` and the entropy of each distribution (float32, shape ``actions.shape``).

    ``logits`` (``actions.shape + (V,)``, any float dtype) are raw or already filtered; ``filters`` are
    :func:`filter_logits`'s keywords (temperature, top_k, top_p, action_mask), applied here with the
    actions kept.  The same values as ``log_softmax`` and ``-sum(p * log p)`` over the filtered float32
    logits, computed a few rows at a time (:class:`_LogProbEntropy`).
    """
    rows = max(1, _CHUNK_ELEMENTS // logits.shape[-1])
    if logits.device.type != "cpu":  # one pass on an accelerator: kernel launches, not memory, bound it there
        rows = max(1, actions.numel())
    return _LogProbEntropy.apply(logits, actions, rows, filters)


#: elements per chunk of rows (2 MB in float32: a row of a 49k vocabulary is 192 kB), small enough that the
#: passes over a chunk run in the CPU's cache rather than over freshly allocated, page-faulting memory.
_CHUNK_ELEMENTS = 1 << 19


class _LogProbEntropy(torch.autograd.Function):
    """``log p(action)`` and ``H(p)`` of ``p = softmax(filter(logits))``, row chunk by row chunk.

    The unfused version (a log-softmax, its exp, a product and their backward over the whole
    ``(B, T, V)`` tensor) made five vocabulary-sized float32 tensors per forward and as many in the
    backward; on a CPU each is freshly mapped memory and took longer than a decoder layer's matmuls.
    Here the forward keeps only the row statistics (log-normaliser, entropy) and the backward
    recomputes ``p`` per chunk.  With ``l = log p``: ``d log p_a / dx = onehot(a) - p`` and
    ``dH / dx = -p * (l + H)`` (0 where ``p = 0``: ``entr(p) = -p log p`` is 0 there, so tokens
    the filters removed get no gradient, as the ``-inf`` logits give none), each times
    ``1 / temperature`` for the raw logits.
    """

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, actions: torch.Tensor, rows: int, filters: dict) -> tuple:
        flat, acts = logits.reshape(-1, logits.shape[-1]), actions.reshape(-1, 1)
        n, dtype = flat.shape[0], _math_dtype(flat)
        logp, entropy, lse = (torch.empty(n, dtype=dtype, device=flat.device) for _ in range(3))
        x_buf, p_buf = _workspace(flat, rows), _workspace(flat, rows)  # reused by every chunk
        for s in range(0, n, rows):
            e = min(s + rows, n)
            x = filter_logits(flat[s:e], keep=acts[s:e, 0], buffer=x_buf[: e - s], **filters)
            top = x.amax(-1, keepdim=True)
            p = torch.sub(x, top, out=p_buf[: e - s]).exp_()
            total = p.sum(-1, keepdim=True)
            log_z = total.log().add_(top)
            lse[s:e] = log_z.squeeze(-1)
            logp[s:e] = (x.gather(-1, acts[s:e]) - log_z).squeeze(-1)
            entropy[s:e] = torch.special.entr(p.div_(total), out=p).sum(-1)
        ctx.save_for_backward(logits, actions, lse, entropy)
        ctx.rows, ctx.filters = rows, filters
        return logp.view(actions.shape), entropy.view(actions.shape)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_logp: torch.Tensor, grad_entropy: torch.Tensor) -> tuple:
        logits, actions, lse, entropy = ctx.saved_tensors
        flat, acts, rows = logits.reshape(-1, logits.shape[-1]), actions.reshape(-1, 1), ctx.rows
        g_logp = grad_logp.reshape(-1, 1).to(lse.dtype)
        g_ent = grad_entropy.reshape(-1, 1).to(lse.dtype)
        scale = 1.0 / ctx.filters.get("temperature", 1.0)
        coef = (g_ent * entropy.unsqueeze(1) + g_logp).mul_(-scale)  # the p term: -p * (g_ent * H + g_logp)
        g_logp, g_ent = g_logp * scale, g_ent * scale
        out = torch.empty_like(flat)
        x_buf, p_buf = _workspace(flat, rows), _workspace(flat, rows)
        for s in range(0, flat.shape[0], rows):
            e = min(s + rows, flat.shape[0])
            x = filter_logits(flat[s:e], keep=acts[s:e, 0], buffer=x_buf[: e - s], **ctx.filters)
            p = torch.sub(x, lse[s:e, None], out=p_buf[: e - s]).exp_()
            grad = torch.special.entr(p, out=x_buf[: e - s]).mul_(g_ent[s:e])
            grad.addcmul_(p, coef[s:e]).scatter_add_(-1, acts[s:e], g_logp[s:e])
            out[s:e] = grad
        return out.view(logits.shape), None, None, None


def _math_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)  # float32, or float64 for float64 logits


def _workspace(flat: torch.Tensor, rows: int) -> torch.Tensor:
    return torch.empty((min(rows, flat.shape[0]), flat.shape[1]), dtype=_math_dtype(flat), device=flat.device)


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
