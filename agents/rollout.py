"""Lockstep batched rollouts through a :class:`~textgym.vector.TextVectorEnv` with one KV cache.

All N episodes start together (the caller resets the env); each step feeds
one column of tokens to the LM and the env; the batch ends when every episode
has ended.  Episodes that ended early keep stepping with a placeholder token
(an allowed non-EOS token): Gymnasium's NextStep autoreset resets such a slot
on the step after its end and ignores that action; the new episode it starts
would need ``max_new_tokens`` more steps to end, longer than the batch can
last, so it is never scored and the next ``reset()`` discards it.  With
SameStep autoreset the same argument holds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from agents.buffers import SequenceBatch
from agents.policies import LMPolicy, first_real_column, positions_from_mask
from agents.sampling import generator_on, sample_tokens
from textgym.errors import ConfigError
from textgym.rollout import filler_token, slot_info


@torch.no_grad()
def generate_batch(
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

    ``on_step(locals)`` is called after every env step; returning False aborts
    (the function then returns None).  ``autocast`` is a context-manager
    factory (bf16 on CUDA) or None.
    """
    setup = env.setup
    if setup.task.multi_turn:
        raise ConfigError(
            f"{type(setup.task).__name__} is multi-turn (its episodes re-prompt after each turn); TextPPO's "
            "lockstep KV-cache rollouts support single-turn episodes only, e.g. Dialogue-v0 with turns=1"
        )
    device = policy.device
    generator = generator_on(generator, device)
    P, T, N = setup.max_prompt_tokens, setup.max_new_tokens, env.num_envs
    placeholder = filler_token(setup)
    # Per-step bookkeeping stays on the host, where the env's results are: the only copies per
    # step are the sampled tokens to the host and the tokens fed back to the model.
    gen = np.full((N, T), setup.eos_id, dtype=np.int64)
    gen_mask = np.zeros((N, T), dtype=np.int64)
    env_rewards = np.zeros((N, T), dtype=np.float32)
    done = np.zeros(N, dtype=bool)
    eos_end = np.zeros(N, dtype=bool)
    finals: list[dict[str, Any]] = [{} for _ in range(N)]
    ctx = autocast if autocast is not None else _null
    prompt_ids = torch.as_tensor(obs["input_ids"][:, :P], device=device)
    prompt_mask = torch.as_tensor(obs["attention_mask"][:, :P], device=device)
    start = first_real_column(prompt_mask)  # padding columns shared by every row are skipped
    L = P - start
    # The cache's mask: the prompt, then one column per step (finished slots keep feeding placeholders).
    attn = torch.cat([prompt_mask[:, start:], prompt_mask.new_ones((N, T))], dim=1)
    next_position = attn[:, :L].sum(1, keepdim=True)
    # The sampling distribution's log-prob of each drawn token and the critic's value of each state,
    # kept on the device: PPO's "old" log-probs and values (the update recomputes them only under
    # bf16 autocast, where the cached decode and a full forward round differently).
    step_logp: list[torch.Tensor] = []
    step_values: list[torch.Tensor] = []
    with ctx():
        logits, past, hidden = policy.decode_step(prompt_ids[:, start:], attn[:, :L], positions_from_mask(attn[:, :L]))
    for t in range(T):
        filtered = policy.filtered_logits(logits)
        choices = sample_tokens(filtered, generator, deterministic)
        step_logp.append(torch.log_softmax(filtered, dim=-1).gather(-1, choices.unsqueeze(-1)).squeeze(-1))
        if policy.critic is None:
            step_values.append(policy.value_of(hidden))
        tokens = policy.to_token(choices)
        actions = tokens.cpu().numpy()
        live = ~done
        gen[live, t] = actions[live]
        gen_mask[live, t] = 1
        actions[done] = placeholder
        _, rewards, terminated, truncated, infos = env.step(actions)
        env_rewards[live, t] = rewards[live]
        ended = (terminated | truncated) & live
        for slot in np.flatnonzero(ended):
            finals[slot] = slot_info(infos, int(slot))
        eos_end |= terminated & live
        done |= ended
        dones = ended  # noqa: F841 - SB3 callbacks read locals()["dones"] and ["infos"]
        if on_step is not None and not on_step(locals()):
            return None
        if done.all():
            break
        feed = torch.as_tensor(actions, device=device).unsqueeze(1)
        with ctx():
            logits, past, hidden = policy.decode_step(feed, attn[:, : L + t + 1], next_position + t, past)
    live_mask = torch.as_tensor(gen_mask, device=device).bool()
    return SequenceBatch(
        input_ids=torch.cat([prompt_ids, torch.as_tensor(gen, device=device)], dim=1),
        attention_mask=torch.cat([prompt_mask, live_mask.long()], dim=1),
        prompt_len=P,
        env_rewards=torch.as_tensor(env_rewards, device=device),
        ended_with_eos=torch.as_tensor(eos_end, device=device),
        infos=finals,
        old_logp=_per_token(step_logp, live_mask),
        values=_per_token(step_values, live_mask),
    )


def _per_token(steps: list[torch.Tensor], mask: torch.Tensor) -> torch.Tensor | None:
    """(N, T) float32 from one (N,) tensor per step taken (0 where nothing was generated)."""
    if not steps:
        return None
    out = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
    out[:, : len(steps)] = torch.stack(steps, dim=1).float()
    return out.masked_fill(~mask, 0.0)


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
