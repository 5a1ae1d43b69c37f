"""Play whole episodes with an answer-producing agent: zero-shot LMs, baselines.

:func:`play_episodes` resets a :class:`~textgym.vector.TextVectorEnv`, asks
a *responder* for every slot's answer tokens at once (for a causal LM:
one batched ``generate`` call with KV cache and the env's action mask as a
logits processor, see :func:`lm_responder`), feeds the tokens to the env step
by step and returns the finished episodes' infos.  ``textgym play`` and the
benchmark use it; agents that learn (TextPPO) have their own loop.

Example:
    >>> import gymnasium as gym, textgym
    >>> from textgym.models import load_model
    >>> from textgym.rollout import lm_responder, play_episodes
    >>> envs = gym.make_vec("textgym/Copy-v0", num_envs=2, model="tiny-random")
    >>> infos = play_episodes(envs, lm_responder(load_model("tiny-random")), seed=0)
    >>> len(infos)
    2
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from textgym.spec import TextSpec


class _MaskLogits:
    """A transformers logits processor that forbids the tokens a mask excludes."""

    def __init__(self, allowed: np.ndarray) -> None:
        import torch

        self.blocked = torch.from_numpy(~np.asarray(allowed, dtype=bool))

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        blocked = self.blocked.to(scores.device)
        return scores.masked_fill(blocked[: scores.shape[-1]], float("-inf"))


def generate_tokens(
    model: Any,
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    *,
    max_new_tokens: int,
    eos_id: int,
    action_mask: np.ndarray | None = None,
    do_sample: bool = False,
    temperature: float = 1.0,
    seed: int | None = None,
) -> np.ndarray:
    """New tokens for a batch of left-padded prompts, shape ``(batch, <= max_new_tokens)``."""
    import torch
    from transformers import LogitsProcessorList

    device = next(model.parameters()).device
    processors = LogitsProcessorList([_MaskLogits(action_mask)] if action_mask is not None else [])
    kwargs: dict[str, Any] = {"do_sample": do_sample}
    if do_sample:
        kwargs["temperature"] = temperature
        kwargs["top_k"] = 0
    if seed is not None:
        torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(
            input_ids=torch.as_tensor(input_ids, device=device),
            attention_mask=torch.as_tensor(attention_mask, device=device),
            max_new_tokens=max_new_tokens,
            eos_token_id=eos_id,
            pad_token_id=eos_id,
            logits_processor=processors,
            **kwargs,
        )
    return out[:, input_ids.shape[1] :].cpu().numpy()


Responder = Callable[[dict[str, np.ndarray], dict[str, Any], TextSpec], np.ndarray]


def lm_responder(model: Any, *, do_sample: bool = False, temperature: float = 1.0, seed: int | None = None) -> Responder:
    """A responder that answers with a causal LM's batched ``generate`` (KV cache)."""

    def respond(obs: dict[str, np.ndarray], infos: dict[str, Any], spec: TextSpec) -> np.ndarray:
        cols = spec.max_prompt_tokens
        return generate_tokens(
            model,
            obs["input_ids"][:, :cols],
            obs["attention_mask"][:, :cols],
            max_new_tokens=spec.max_new_tokens,
            eos_id=spec.eos_id,
            action_mask=spec.action_mask,
            do_sample=do_sample,
            temperature=temperature,
            seed=seed,
        )

    return respond


def play_episodes(
    envs: Any,
    respond: Any,
    *,
    seed: int | None = None,
    options: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """One episode per slot of ``envs``; returns each slot's final info (metrics, texts, reward).

    ``respond(obs, infos, spec)`` (the reset observation and infos, and the
    env's :class:`~textgym.spec.TextSpec`) returns the answer tokens of every slot, shape
    ``(num_envs, <= max_new_tokens)`` (:func:`lm_responder` makes one from a
    causal LM).  The tokens are fed
    to the env one step at a time, so rewards and infos are exactly the
    token-level env's.
    """
    env = envs.unwrapped if hasattr(envs, "unwrapped") else envs
    spec = env.text_spec
    obs, reset_infos = env.reset(seed=seed, options=options)
    tokens = np.asarray(respond(obs, reset_infos, spec), dtype=np.int64)
    n = env.num_envs
    finals: list[dict[str, Any] | None] = [None] * n
    ended = np.zeros(n, dtype=bool)
    filler = spec.filler_token
    for t in range(spec.max_new_tokens):
        column = tokens[:, t] if t < tokens.shape[1] else np.full(n, spec.eos_id)
        # Slots that already ended get a non-EOS filler: their autoreset
        # episode would need max_new_tokens more steps to end, so it is never
        # scored before this loop stops.
        column = np.where(ended, filler, column)
        _, rewards, terminated, truncated, infos = env.step(column)
        for i in np.flatnonzero(terminated | truncated):
            if finals[i] is None:
                finals[i] = slot_info(infos, int(i))
                finals[i]["reward"] = float(rewards[i])
        ended |= terminated | truncated
        if ended.all():
            break
    return [f for f in finals if f is not None]


def slot_info(infos: dict[str, Any], slot: int) -> dict[str, Any]:
    """Slot ``slot``'s entries of a Gymnasium vector-env info dict (``_key`` masks respected)."""
    out: dict[str, Any] = {}
    for key, value in infos.items():
        if key.startswith("_"):
            continue
        present = infos.get("_" + key)
        if present is not None and not present[slot]:
            continue
        if isinstance(value, dict):
            out[key] = slot_info(value, slot)
        else:
            item = value[slot]
            out[key] = item.item() if isinstance(item, np.generic) else item
    return out
