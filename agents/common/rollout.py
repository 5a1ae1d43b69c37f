"""Lockstep batched rollouts through a :class:`~textgym.vector.TextVectorEnv` (one KV cache, :func:`decode`).

All N episodes start together (the caller resets the env); each step feeds
one column of tokens to the LM and the env; the batch ends when every episode
has ended.  Episodes that ended early keep stepping with a placeholder token
(:attr:`TextSpec.filler_token`, an allowed non-EOS token): Gymnasium's
NextStep autoreset resets such a slot on the step after its end and ignores
that action; the new episode it starts would need ``max_new_tokens`` more
steps to end, longer than the batch can last, so it is never scored and the
next ``reset()`` discards it.  With SameStep autoreset the same argument holds.

Multi-turn episodes (``spec.max_turns > 1``) are one conversation per slot:
when a slot's turn ends and the env replies (``info["reply_ids"]``, the tokens
it appended after the answer), the reply is fed to the LM in the same forward
as the step's token column, extending that slot's KV cache, and the slot's next
answer is sampled after it; the other slots go on sampling.  Each row of the
:class:`SequenceBatch` is the conversation in order (prompt, answer, reply,
answer, ...), with ``policy_mask`` marking the sampled tokens and
``turn_index`` each column's turn.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from agents.common.buffers import SequenceBatch
from agents.common.decoding import Feed, StopDecoding, decode
from agents.common.policies import LMPolicy
from textgym.errors import ConfigError
from textgym.rollout import slot_info


def collect_episodes(
    policy: LMPolicy,
    env: Any,
    obs: dict[str, np.ndarray],
    *,
    generator: torch.Generator | None = None,
    deterministic: bool = False,
    on_step: Callable[[dict[str, Any]], bool] | None = None,
    autocast: Any = None,
) -> SequenceBatch | None:
    """Generate one episode (a conversation, for a multi-turn env) per slot from the reset observation ``obs``.

    ``on_step(locals)`` is called after every env step (SB3 callbacks read ``locals()["infos"]``,
    ``["dones"]`` and ``["live"]``); returning False aborts and the function returns None.
    ``autocast`` is a context-manager factory (bf16) or None.  Without it the rollout records each token's
    log-prob and value (PPO's old ones); under bf16 it does not: a KV-cached bf16 decode rounds differently
    from the full forward of the update, so the engine recomputes them with that forward.
    """
    spec = env.text_spec
    turns = spec.max_turns
    if turns > 1 and policy.encoder_decoder:
        raise ConfigError(
            f"the env's task is multi-turn (up to {turns} answers per episode); an encoder-decoder policy answers one "
            "turn: use a causal LM (LMPolicy), or the task with one turn"
        )
    P, N, width = spec.max_prompt_tokens, env.num_envs, spec.conversation_tokens
    max_steps = turns * spec.max_new_tokens
    placeholder = spec.filler_token
    # Per-step bookkeeping stays on the host, where the env's results are.  Row i's conversation after the
    # prompt fills columns [0, length[i]) of these, in order: answers (sampled) and the env's replies.
    ids = np.full((N, width), spec.eos_id, dtype=np.int64)
    attended = np.zeros((N, width), dtype=bool)
    sampled = np.zeros((N, width), dtype=bool)
    turn_of = np.zeros((N, width), dtype=np.int64)
    env_rewards = np.zeros((N, width), dtype=np.float32)
    length = np.zeros(N, dtype=np.int64)
    turn = np.zeros(N, dtype=np.int64)
    step_col = np.zeros((N, max_steps), dtype=np.int64)  # the column of the token row i sampled at step t
    live_at = np.zeros((N, max_steps), dtype=bool)
    done = np.zeros(N, dtype=bool)
    eos_end = np.zeros(N, dtype=bool)
    finals: list[dict[str, Any]] = [{} for _ in range(N)]

    def on_tokens(t: int, actions: np.ndarray) -> np.ndarray | Feed | None:
        live = ~done
        rows = np.flatnonzero(live)
        cols = length[rows]
        ids[rows, cols] = actions[rows]
        attended[rows, cols] = sampled[rows, cols] = True
        turn_of[rows, cols] = turn[rows]
        step_col[rows, t], live_at[rows, t] = cols, True
        length[rows] += 1
        actions[done] = placeholder
        _, rewards, terminated, truncated, infos = env.step(actions)
        env_rewards[rows, cols] = rewards[rows]
        ended = (terminated | truncated) & live
        for slot in np.flatnonzero(ended):
            finals[slot] = slot_info(infos, int(slot))
        eos_end[:] |= terminated & live
        done[:] |= ended
        appended = _replies(infos, live & ~ended) if turns > 1 else {}
        for slot, reply in appended.items():  # the env's reply joins the conversation; the next turn starts
            span = slice(length[slot], length[slot] + len(reply))
            ids[slot, span], attended[slot, span], turn_of[slot, span] = reply, True, turn[slot] + 1
            length[slot] += len(reply)
            turn[slot] += 1
        dones = ended  # noqa: F841 - SB3 callbacks read locals()["dones"] and ["infos"]
        if on_step is not None and not on_step(locals()):
            raise StopDecoding
        if done.all():
            return None
        return Feed(actions, appended, finished=done.copy())

    prompt_ids = torch.as_tensor(obs["input_ids"][:, :P])
    prompt_mask = torch.as_tensor(obs["attention_mask"][:, :P])
    try:
        decoded = decode(
            policy, prompt_ids, prompt_mask, max_steps, on_tokens, generator=generator, deterministic=deterministic,
            record=autocast is None, autocast=autocast,
        )  # fmt: skip
    except StopDecoding:
        return None
    device = policy.device
    attended_t = torch.as_tensor(attended, device=device)

    def by_column(steps: torch.Tensor | None) -> torch.Tensor | None:
        """(N, width) float32 from a per-step record (N, steps): each sampled token's entry at its column."""
        if steps is None:
            return None
        out = torch.zeros((N, width), dtype=torch.float32, device=device)
        rows, ts = np.nonzero(live_at[:, : steps.shape[1]])
        out[rows, step_col[rows, ts]] = steps[rows, ts].float()
        return out

    return SequenceBatch(
        input_ids=torch.cat([prompt_ids.to(device), torch.as_tensor(ids, device=device)], dim=1),
        attention_mask=torch.cat([prompt_mask.to(device), attended_t.long()], dim=1),
        prompt_len=P,
        env_rewards=torch.as_tensor(env_rewards, device=device),
        ended_with_eos=torch.as_tensor(eos_end, device=device),
        infos=finals,
        old_logp=by_column(decoded.logp),
        values=by_column(decoded.values),
        policy_mask=torch.as_tensor(sampled, device=device) if turns > 1 else None,
        turn_index=torch.as_tensor(turn_of, device=device) if turns > 1 else None,
    )


def _replies(infos: dict[str, Any], going_on: np.ndarray) -> dict[int, list[int]]:
    """The reply tokens the env appended after the answer of each slot whose turn just ended and goes on."""
    if "reply_ids" not in infos:
        return {}
    present = infos.get("_reply_ids", np.ones(len(going_on), dtype=bool))
    return {int(s): [int(x) for x in infos["reply_ids"][s]] for s in np.flatnonzero(going_on & present)}
