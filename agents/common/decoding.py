"""The one KV-cached decoding loop: rollouts, ``generate()``, evaluation and the LM baselines use it.

Each step the policy's sampling distribution (temperature, action mask,
top-k/top-p: :meth:`LMPolicy.filtered_logits`) gives one token per row; the
caller's ``on_tokens(t, tokens)`` decides what happens with them (step an env,
collect text) and returns the tokens to feed back, or None when every row is
done.  The prompt is encoded once (rows that share a prompt share its
encoding), then one column per step is fed through the KV cache: the policy's
``decode_step`` does both, for a causal LM (:class:`LMPolicy`) or an
encoder-decoder (:class:`~agents.common.seq2seq.Seq2SeqLMPolicy`).

Example:
    >>> import torch
    >>> from agents.common.decoding import decode
    >>> from agents.common.policies import policy_for
    >>> from textgym.models import load_tokenizer
    >>> policy = policy_for("tiny-random", len(load_tokenizer("tiny-random")))
    >>> steps = []
    >>> ids, mask = torch.tensor([[5, 6, 7]]), torch.ones(1, 3, dtype=torch.long)
    >>> _ = decode(policy, ids, mask, 4, lambda t, tok: steps.append(t) or tok)
    >>> steps
    [0, 1, 2, 3]
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from agents.common.lm import first_real_column, positions_from_mask
from agents.common.policies import LMPolicy
from agents.common.sampling import generator_on, sample_tokens

OnTokens = Callable[[int, np.ndarray], "np.ndarray | Feed | None"]


class StopDecoding(Exception):
    """Raised by ``on_tokens`` to abort decoding (e.g. a callback asked training to stop)."""


@dataclass
class Decoded:
    """What :func:`decode` recorded: ``steps`` columns were sampled.

    ``logp`` and ``values`` are ``(N, steps)`` float32 (the sampled token's log-prob under the
    sampling distribution and the critic's value of the state it was drawn in), when recorded.
    """

    steps: int
    logp: torch.Tensor | None = None
    values: torch.Tensor | None = None


@dataclass
class Feed:
    """What ``on_tokens`` may return instead of a plain token column: the column (one token per row); for
    some rows, the tokens the environment appended after it (a multi-turn env's reply), fed to the model in
    the same forward, each such row's next token then sampled after its last appended token; and
    ``finished``, the rows that need no more tokens (the loop stops computing them)."""

    tokens: np.ndarray
    appended: dict[int, Sequence[int]] = field(default_factory=dict)
    finished: np.ndarray | None = None


def _full(values: torch.Tensor, rows: torch.Tensor, n: int) -> torch.Tensor:
    """(n,) float32 with ``values`` at ``rows`` and 0 elsewhere (rows the loop no longer computes)."""
    out = torch.zeros(n, dtype=torch.float32, device=values.device)
    out[rows] = values.float()
    return out


@torch.no_grad()
def decode(
    policy: LMPolicy,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    max_new_tokens: int,
    on_tokens: OnTokens,
    *,
    generator: torch.Generator | None = None,
    deterministic: bool = False,
    record: bool = False,
    autocast: Callable[[], Any] | None = None,
) -> Decoded:
    """Sample up to ``max_new_tokens`` columns after left-padded prompts (see the module docstring).

    ``on_tokens(t, tokens)`` gets step ``t``'s sampled token ids (host numpy, one per row) and
    returns the ids to feed back (finished rows may get a placeholder), a :class:`Feed` (the ids, the
    tokens an environment appended after some of them: they extend those rows' KV cache, unsampled; and
    the finished rows), or None to end.  Once at least a quarter of the rows still computed are finished,
    they are dropped from the batch and its KV cache (their later tokens are 0 and are not recorded), so
    rows that ended early cost nothing while the others go on.  ``record`` keeps each sampled token's
    log-prob and, with the shared-trunk critic, each value.  ``autocast`` is a context-manager factory (bf16
    autocast) around the model's steps; the logits are filtered, sampled and turned into log-probs in
    float32 either way.
    """
    device = policy.device
    generator = generator_on(generator, device)
    ctx = autocast if autocast is not None else contextlib.nullcontext
    # on_tokens (the env: rewards may run models of their own) runs with autocast off
    outside = (lambda: torch.autocast(device.type, enabled=False)) if autocast is not None else contextlib.nullcontext
    n = prompt_ids.shape[0]
    start = first_real_column(prompt_mask)  # padding columns shared by every row are skipped
    ids, attn = prompt_ids[:, start:].to(device), prompt_mask[:, start:].to(device)
    used = ids.shape[1]  # columns in the KV cache
    attn = torch.cat([attn, attn.new_ones((n, max_new_tokens))], dim=1)  # every fed column is attended
    position = attn[:, :used].sum(1, keepdim=True)  # (rows, 1) the next token's position in each row
    rows = np.arange(n)  # the original index of each row still computed
    logps: list[torch.Tensor] = []
    values: list[torch.Tensor] = []
    steps = 0
    # One autocast region for the whole loop: autocast casts each (trainable) weight to bf16 once per region,
    # not once per token (a nested disabled region keeps that cache).  Sampling and log-probs use the float32
    # filtered logits either way.
    with ctx():
        logits, past, hidden = policy.decode_step(ids, attn[:, :used], positions_from_mask(attn[:, :used]))
        past = policy.reserve_decode_room(past, max_new_tokens)  # each step writes its column in place
        for t in range(max_new_tokens):
            filtered = policy.filtered_logits(logits)
            choices = sample_tokens(filtered, generator, deterministic)
            if record:
                live = torch.as_tensor(rows, device=device)
                logp = torch.log_softmax(filtered, dim=-1).gather(-1, choices.unsqueeze(-1)).squeeze(-1)
                logps.append(_full(logp, live, n))
                if policy.critic is None:
                    values.append(_full(policy.value_of(hidden), live, n))
            steps = t + 1
            sampled = np.zeros(n, dtype=np.int64)
            sampled[rows] = policy.to_token(choices).cpu().numpy()
            with outside():
                feed = on_tokens(t, sampled)
            if feed is None or t + 1 == max_new_tokens:
                break
            appended = feed.appended if isinstance(feed, Feed) else None
            finished = feed.finished if isinstance(feed, Feed) else None
            tokens = np.asarray(feed.tokens if isinstance(feed, Feed) else feed, dtype=np.int64)
            if finished is not None:
                gone = np.asarray(finished, dtype=bool)[rows]
                if gone.sum() >= max(1, len(rows) // 4) and not gone.all():
                    keep = torch.as_tensor(np.flatnonzero(~gone), device=device)
                    past = policy.select_decode_rows(past, keep)
                    attn, position, rows = attn[keep], position[keep], rows[~gone]
            column = torch.as_tensor(tokens[rows], device=device).unsqueeze(1)
            if not appended:
                logits, past, hidden = policy.decode_step(column, attn[:, : used + 1], position, past)
                used, position = used + 1, position + 1
                continue
            # the column, then each row's appended tokens left-aligned in W more columns (padding after them)
            width = 1 + max(len(v) for v in appended.values())
            m = len(rows)
            chunk = column.new_zeros((m, width))
            chunk_mask = attn.new_zeros((m, width))
            chunk[:, 0], chunk_mask[:, 0] = column[:, 0], 1
            take = torch.zeros(m, dtype=torch.long, device=device)
            where = {int(r): i for i, r in enumerate(rows)}
            for row, extra in appended.items():
                i, k = where[row], len(extra)
                chunk[i, 1 : 1 + k] = torch.as_tensor(list(extra), dtype=torch.long, device=device)
                chunk_mask[i, 1 : 1 + k] = 1
                take[i] = k
            positions = position + chunk_mask.cumsum(1) - 1
            attn = torch.cat([attn[:, :used], chunk_mask, attn.new_ones((m, max_new_tokens - t - 1))], dim=1)
            logits, past, hidden = policy.decode_step(chunk, attn[:, : used + width], positions, past, take=take)
            used, position = used + width, position + 1 + take.unsqueeze(1)
    return Decoded(
        steps=steps,
        logp=torch.stack(logps, dim=1) if logps else None,
        values=torch.stack(values, dim=1) if values else None,
    )


def encode_prompts(tokenizer: Any, prompts: list[str], chat: bool) -> list[list[int]]:
    """Token ids of each prompt, wrapped in the chat template when ``chat`` and the tokenizer has one."""
    out = []
    for prompt in prompts:
        if chat and getattr(tokenizer, "chat_template", None):
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
            )
        else:
            text = prompt
        out.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    return out


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, attention_mask)`` of token lists left-padded to the longest one."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row) :] = 1
    return ids, mask


def complete(
    policy: LMPolicy,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    max_new_tokens: int,
    eos_id: int,
    *,
    generator: torch.Generator | None = None,
    deterministic: bool = False,
    autocast: Callable[[], Any] | None = None,
) -> list[list[int]]:
    """Each row's answer token ids up to (not including) EOS (``autocast``: as for :func:`decode`)."""
    n = prompt_ids.shape[0]
    done = np.zeros(n, dtype=bool)
    outputs: list[list[int]] = [[] for _ in range(n)]

    def on_tokens(t: int, tokens: np.ndarray) -> np.ndarray | None:
        for i in np.flatnonzero(~done):
            if tokens[i] == eos_id:
                done[i] = True
            else:
                outputs[i].append(int(tokens[i]))
        return None if done.all() else Feed(tokens, finished=done.copy())

    policy.set_training_mode(False)
    decode(policy, prompt_ids, prompt_mask, max_new_tokens, on_tokens, generator=generator, deterministic=deterministic,
           autocast=autocast)  # fmt: skip
    return outputs
