"""Rollout storage of the on-policy algorithms: one row per generated sequence, not one per step.

A :class:`SequenceBatch` holds whole episodes as padded tensors (prompt
left-padded in columns [0, P), generated tokens in [P, P+T)); the update
recomputes every token of a row in one forward pass.  Lengths come from the
attention mask, never from the pad id.

A multi-turn episode is one row too: after the first prompt come the agent's
answers and the environment's replies, in the order of the conversation.
``policy_mask`` marks the tokens the policy chose; the environment's tokens are
context (attended) but enter no loss, no KL and no advantage.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from typing import Any

import torch


@dataclass
class SequenceBatch:
    """B finished episodes.

    Attributes:
        input_ids: (B, P+T) prompt + generated tokens (anything after a sequence's end is ignored).
        attention_mask: (B, P+T) 1 on real prompt and generated tokens.
        prompt_len: P, the number of prompt columns.
        env_rewards: (B, T) the env's reward of each step (sparse: the score at the last token).
        ended_with_eos: (B,) True when the episode terminated on EOS (False: cut at max_new_tokens).
        infos: the final info dict of each episode (text, metrics).
        old_logp, values: (B, T) the rollout policy's log-prob of each generated token and the critic's
            value before it, recorded by the rollout (None: recomputed before the update).
        ref_logp, kl: (B, T) the reference's log-probs and the per-token KL estimate, filled by ``prepare``.
        advantages, returns, rewards: filled by the algorithm ((B, T), or (B,) for sequence-level advantages).
        policy_mask: (B, T) bool, the tokens the policy generated (None: every attended column after the
            prompt, as in a single-turn episode); a multi-turn row's environment replies are attended, not generated.
        turn_index: (B, T) long, the turn each column belongs to (0 for the first answer; None: single-turn).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    prompt_len: int
    env_rewards: torch.Tensor
    ended_with_eos: torch.Tensor
    infos: list[dict[str, Any]] = field(default_factory=list)
    old_logp: torch.Tensor | None = None
    ref_logp: torch.Tensor | None = None
    kl: torch.Tensor | None = None
    values: torch.Tensor | None = None
    rewards: torch.Tensor | None = None
    advantages: torch.Tensor | None = None
    returns: torch.Tensor | None = None
    policy_mask: torch.Tensor | None = None
    turn_index: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def gen_mask(self) -> torch.Tensor:
        """(B, T) bool: the tokens each sequence really generated (EOS included; a multi-turn
        conversation's environment replies excluded)."""
        if self.policy_mask is not None:
            return self.policy_mask
        return self.attention_mask[:, self.prompt_len :].bool()

    @property
    def lengths(self) -> torch.Tensor:
        return self.gen_mask.sum(dim=1)

    @property
    def scores(self) -> torch.Tensor:
        """(B,) total env reward of each episode."""
        return self.env_rewards.sum(dim=1)

    def select(self, index: torch.Tensor) -> SequenceBatch:
        """The rows ``index`` (tensors sliced, infos picked)."""
        values: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                value = value[index]
            elif f.name == "infos":
                value = [value[i] for i in index.tolist()] if value else []
            values[f.name] = value
        return SequenceBatch(**values)

    def minibatches(
        self, batch_size: int, generator: torch.Generator | None = None, group_size: int = 1
    ) -> Iterator[torch.Tensor]:
        """Shuffled row indices in chunks of ``batch_size`` (the last one may be smaller).

        Rows ``[k*group_size, (k+1)*group_size)`` (completions of one prompt) are shuffled as a
        block and stay consecutive, so a chunk of a multiple of ``group_size`` rows holds whole
        groups and encodes each prompt once.  One chunk of all rows keeps their order (a shuffle
        would change nothing but the order of a sum, and the order lets the first step reuse a forward of
        the batch: ``OnPolicyAlgorithm.policy_forward``); the permutation is drawn either way, so the
        generator's stream does not depend on ``batch_size``.
        """
        groups = torch.randperm(len(self) // group_size, generator=generator)
        if batch_size >= len(self):
            yield torch.arange(len(self))
            return
        order = (groups.unsqueeze(1) * group_size + torch.arange(group_size)).reshape(-1)
        yield from order.split(batch_size)

    @staticmethod
    def concat(batches: list[SequenceBatch]) -> SequenceBatch:
        """Rows of several rollout batches of the same env as one batch."""
        if len(batches) == 1:
            return batches[0]
        first = batches[0]
        values: dict[str, Any] = {"prompt_len": first.prompt_len, "infos": [i for b in batches for i in b.infos]}
        for f in fields(first):
            if f.name in values:
                continue
            parts = [getattr(b, f.name) for b in batches]
            values[f.name] = None if parts[0] is None else torch.cat(parts, dim=0)
        return SequenceBatch(**values)
