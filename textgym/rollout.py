"""Play whole episodes with an answer-producing agent: zero-shot LMs, baselines.

:func:`play_episodes` resets a :class:`~textgym.vector.TextVectorEnv`, asks
a *responder* for every slot's answer tokens at once (for a causal LM:
one batched ``generate`` call with KV cache and the env's action mask as a
logits processor, see :func:`lm_responder`), feeds the tokens to the env step
by step and returns the finished episodes' infos.  In a multi-turn env the
responder is asked again, for the slots whose turn ended, with their
conversation so far (:func:`left_packed` turns those observation rows into
left-padded prompts).  ``textgym play`` and the benchmark use it; agents that
learn (TextPPO) have their own loop.

Example:
    >>> import gymnasium as gym, textgym
    >>> from textgym.models import load_model
    >>> from textgym.rollout import lm_responder, play_episodes
    >>> envs = gym.make_vec("textgym/Copy-v0", num_envs=2, model="tiny-random")
    >>> infos = play_episodes(envs, lm_responder(load_model("tiny-random")), seed=0)
    >>> len(infos)
    2
    >>> guess = gym.make_vec("textgym/GuessNumber-v0", num_envs=2, model="tiny-random")
    >>> [len(info["turn_scores"]) >= 1 for info in play_episodes(guess, lm_responder(load_model("tiny-random")), seed=0)]
    [True, True]
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


def left_packed(obs: dict[str, np.ndarray], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Observation rows as left-padded prompts: each row's attended tokens (the prompt and the
    conversation so far) moved to the right end, ``(ids, mask)`` of width = the longest row's end.

    A single-turn observation at reset gives exactly its prompt columns.

    Example:
        >>> ids, mask = left_packed({"input_ids": np.array([[0, 5, 6, 7, 0], [8, 9, 0, 0, 0]]),
        ...                          "attention_mask": np.array([[0, 1, 1, 1, 0], [1, 1, 0, 0, 0]])}, pad_id=0)
        >>> ids.tolist(), mask.tolist()
        ([[0, 5, 6, 7], [0, 0, 8, 9]], [[0, 1, 1, 1], [0, 0, 1, 1]])
    """
    mask = np.asarray(obs["attention_mask"])
    ids = np.asarray(obs["input_ids"])
    n, width = mask.shape
    attended = mask.astype(bool)
    end = np.where(attended.any(axis=1), width - np.argmax(attended[:, ::-1], axis=1), 0)
    w = int(end.max()) if n else 0
    src = np.arange(w)[None, :] - (w - end)[:, None]  # the observation column of each packed column
    valid = src >= 0
    rows = np.arange(n)[:, None]
    packed_ids = np.where(valid, ids[rows, np.maximum(src, 0)], pad_id)
    packed_mask = np.where(valid, mask[rows, np.maximum(src, 0)], 0)
    return packed_ids.astype(np.int64), packed_mask.astype(np.int64)


def lm_responder(model: Any, *, do_sample: bool = False, temperature: float = 1.0, seed: int | None = None) -> Responder:
    """A responder that answers with a causal LM's batched ``generate`` (KV cache), seeing each slot's
    conversation so far (:func:`left_packed`)."""

    def respond(obs: dict[str, np.ndarray], infos: dict[str, Any], spec: TextSpec) -> np.ndarray:
        ids, mask = left_packed(obs, spec.pad_id)
        return generate_tokens(
            model,
            ids,
            mask,
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

    ``respond(obs, infos, spec)`` (the observation and infos of the slots to answer, and the env's
    :class:`~textgym.spec.TextSpec`) returns the answer tokens of every row of ``obs``, shape
    ``(rows, <= max_new_tokens)``; a row ends at its first EOS (:func:`lm_responder` makes a
    responder from a causal LM).  It is called once after the reset and, in a multi-turn env, again
    for the slots whose turn ended and whose episode goes on, with their rows of that step's
    observation (the env's reply appended) and infos.  The tokens are fed to the env one step at a
    time, so rewards and infos are exactly the token-level env's; ``reward`` is the episode's
    return (the sum of its rewards).
    """
    env = envs.unwrapped if hasattr(envs, "unwrapped") else envs
    spec = env.text_spec
    obs, reset_infos = env.reset(seed=seed, options=options)
    n = env.num_envs
    answers = list(np.asarray(respond(obs, reset_infos, spec), dtype=np.int64).reshape(n, -1))
    position = np.zeros(n, dtype=np.int64)  # the next token of each slot's current answer
    returns = np.zeros(n, dtype=np.float64)
    finals: list[dict[str, Any] | None] = [None] * n
    ended = np.zeros(n, dtype=bool)
    filler = spec.filler_token
    for _ in range(spec.max_turns * spec.max_new_tokens):
        column = np.array([a[p] if p < len(a) else spec.eos_id for a, p in zip(answers, position)], dtype=np.int64)
        # Slots that already ended get a non-EOS filler: their autoreset
        # episode would need max_new_tokens more steps to end its first turn.
        column = np.where(ended, filler, column)
        obs, rewards, terminated, truncated, infos = env.step(column)
        position += 1
        returns += np.where(ended, 0.0, rewards)
        for i in np.flatnonzero((terminated | truncated) & ~ended):
            finals[i] = slot_info(infos, int(i))
            finals[i]["reward"] = float(returns[i])
        ended |= terminated | truncated
        if ended.all():
            break
        going_on = np.flatnonzero(np.asarray(infos.get("_turn", np.zeros(n, dtype=bool))) & ~ended)
        if going_on.size:  # these slots' next answer, to the conversation with the env's reply
            rows = {key: value[going_on] for key, value in obs.items()}
            new = np.asarray(respond(rows, rows_info(infos, going_on), spec), dtype=np.int64).reshape(len(going_on), -1)
            for slot, answer in zip(going_on, new):
                answers[slot], position[slot] = answer, 0
    return [f for f in finals if f is not None]


def rows_info(infos: dict[str, Any], rows: np.ndarray) -> dict[str, Any]:
    """A Gymnasium vector-env info dict restricted to ``rows`` (in that order), ``_key`` masks included."""
    out: dict[str, Any] = {}
    for key, value in infos.items():
        out[key] = rows_info(value, rows) if isinstance(value, dict) else np.asarray(value)[rows]
    return out


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
