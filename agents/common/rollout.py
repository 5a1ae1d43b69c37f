"""Lockstep batched rollouts through a :class:`~textgym.vector.TextVectorEnv` (one KV cache, :func:`decode`).

All N episodes start together (the caller resets the env); each step feeds
one column of tokens to the LM and the env; the batch ends when every episode
has ended.  Episodes that ended early keep stepping with a placeholder token
(:attr:`TextSpec.filler_token`, an allowed non-EOS token): Gymnasium's
NextStep autoreset resets such a slot on the step after its end and ignores
that action; the new episode it starts would need ``max_new_tokens`` more
steps to end, longer than the batch can last, so it is never scored and the
next ``reset()`` discards it.  With SameStep autoreset the same argument holds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from agents.common.buffers import SequenceBatch
from agents.common.decoding import StopDecoding, decode
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
    """Generate one episode per slot from the reset observation ``obs``.

    ``on_step(locals)`` is called after every env step (SB3 callbacks read ``locals()["infos"]``,
    ``["dones"]`` and ``["live"]``); returning False aborts and the function returns None.
    ``autocast`` is a context-manager factory (bf16) or None.  Without it the rollout records each token's
    log-prob and value (PPO's old ones); under bf16 it does not: a KV-cached bf16 decode rounds differently
    from the full forward of the update, so the engine recomputes them with that forward.
    """
    spec = env.text_spec
    if spec.multi_turn:
        raise ConfigError(
            "the env's task is multi-turn (its episodes re-prompt after each turn); the lockstep KV-cache "
            "rollouts support single-turn episodes only, e.g. Dialogue-v0 with turns=1"
        )
    P, T, N = spec.max_prompt_tokens, spec.max_new_tokens, env.num_envs
    placeholder = spec.filler_token
    # Per-step bookkeeping stays on the host, where the env's results are.
    gen = np.full((N, T), spec.eos_id, dtype=np.int64)
    gen_mask = np.zeros((N, T), dtype=bool)
    env_rewards = np.zeros((N, T), dtype=np.float32)
    done = np.zeros(N, dtype=bool)
    eos_end = np.zeros(N, dtype=bool)
    finals: list[dict[str, Any]] = [{} for _ in range(N)]

    def on_tokens(t: int, actions: np.ndarray) -> np.ndarray | None:
        live = ~done
        gen[live, t] = actions[live]
        gen_mask[live, t] = True
        actions[done] = placeholder
        _, rewards, terminated, truncated, infos = env.step(actions)
        env_rewards[live, t] = rewards[live]
        ended = (terminated | truncated) & live
        for slot in np.flatnonzero(ended):
            finals[slot] = slot_info(infos, int(slot))
        eos_end[:] |= terminated & live
        done[:] |= ended
        dones = ended  # noqa: F841 - SB3 callbacks read locals()["dones"] and ["infos"]
        if on_step is not None and not on_step(locals()):
            raise StopDecoding
        return None if done.all() else actions

    prompt_ids = torch.as_tensor(obs["input_ids"][:, :P])
    prompt_mask = torch.as_tensor(obs["attention_mask"][:, :P])
    try:
        decoded = decode(
            policy, prompt_ids, prompt_mask, T, on_tokens, generator=generator, deterministic=deterministic,
            record=autocast is None, autocast=autocast,
        )  # fmt: skip
    except StopDecoding:
        return None
    device = policy.device
    live_mask = torch.as_tensor(gen_mask, device=device)
    return SequenceBatch(
        input_ids=torch.cat([prompt_ids.to(device), torch.as_tensor(gen, device=device)], dim=1),
        attention_mask=torch.cat([prompt_mask.to(device), live_mask.long()], dim=1),
        prompt_len=P,
        env_rewards=torch.as_tensor(env_rewards, device=device),
        ended_with_eos=torch.as_tensor(eos_end, device=device),
        infos=finals,
        old_logp=_pad_steps(decoded.logp, live_mask),
        values=_pad_steps(decoded.values, live_mask),
    )


def _pad_steps(steps: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor | None:
    """(N, T) float32 from (N, steps) (0 where nothing was generated)."""
    if steps is None:
        return None
    out = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
    out[:, : steps.shape[1]] = steps
    return out.masked_fill(~mask, 0.0)
