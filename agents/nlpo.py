"""TextNLPO: Natural Language Policy Optimization (Ramamurthy et al., ICLR 2023, "Is Reinforcement
Learning (Not) for Natural Language Processing?", RL4LMs), SB3's API.

NLPO is PPO (:class:`~agents.ppo.TextPPO`) whose action space is cut down at every step to the
top-p (nucleus) tokens of a *masking policy*: a frozen copy of the policy, refreshed with the
policy's current weights every ``mask_update_interval`` updates.  The policy's distribution is
the softmax of its logits renormalised over that set, in the rollout (sampling, old log-probs)
and in the update (log-probs, entropy).  In a recomputation the sampled token always stays in
the set (as ``keep=`` does for top-k/top-p): the masking LM is not refreshed between a rollout and
its update, so only float rounding at the nucleus' edge could otherwise drop it.

Choices (RL4LMs' as far as they go):

* the set is the masking LM's nucleus after temperature and the env's action mask; EOS is always
  in it (RL4LMs keeps every special token), so the policy can always end an episode; the policy's
  own ``top_k``/``top_p``, when set, then filter the restricted distribution;
* the reference model's log-probs are *not* restricted (as in RL4LMs): the KL penalty estimates
  KL(NLPO policy || reference LM); it starts slightly above 0 (at most -log(mask_top_p) a token);
* the refresh comes after the update is counted, every ``mask_update_interval`` updates (RL4LMs
  refreshes before training on the rollout, i.e. one update older);
* ``save``/``load`` store the masking weights (only the trainable tensors: the LoRA adapters
  with LoRA) and the update of the last refresh, so a resumed run is exact.

The stock-SB3 path (``forward``/``evaluate_actions``, for ``stable_baselines3.PPO``) is not
restricted; ``predict``, ``generate``, rollouts and evaluation are.

Example:
    >>> import gymnasium as gym, textgym
    >>> from agents.nlpo import TextNLPO
    >>> env = gym.make_vec("textgym/Copy-v0", num_envs=8, model="tiny-random")
    >>> agent = TextNLPO("LMPolicy", env, model="tiny-random", seed=0, n_rollouts=1)
    >>> agent.learn(total_timesteps=50).num_timesteps >= 50
    True
"""

from __future__ import annotations

import contextlib
import copy
import functools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from agents.common.buffers import SequenceBatch
from agents.common.lm import positions_from_mask, run_decoder
from agents.common.policies import LMPolicy
from agents.common.sampling import filter_logits
from agents.ppo import PPOConfig, TextPPO


@dataclass
class NLPOConfig(PPOConfig):
    """TextNLPO's hyperparameters (PPO's, :class:`~agents.ppo.PPOConfig`, and the masking policy's)."""

    mask_top_p: float = 0.9
    """Nucleus of the masking policy: each step the policy may only emit the smallest set of tokens whose
    masking-policy probability reaches this (plus EOS); 1.0 = plain PPO (RL4LMs' top_mask: 0.9 in most tasks)."""
    mask_update_interval: int = 20
    """Updates between refreshes of the masking policy with the policy's current weights (RL4LMs'
    target_update_iterations, the paper's mu: 20 in most of its task configs, 5 for IMDB)."""


class NLPOPolicy(LMPolicy):
    """LMPolicy whose every distribution is restricted to the nucleus of a frozen masking LM (see the module
    docstring); without a masking LM (``set_masking`` not called) it is a plain LMPolicy."""

    def _build(self, lr_schedule: Callable[[float], float]) -> None:
        super()._build(lr_schedule)
        self.mask_lm: nn.Module | None = None  # a submodule once set: moves with the policy, in its state_dict
        self.mask_top_p = 1.0
        self.register_buffer("mask_keep", None, persistent=False)  # choices always in the set (EOS)
        self._restricting = True
        self._support: torch.Tensor | None = None

    def set_masking(self, lm: nn.Module, top_p: float, keep_tokens: Iterable[int] = ()) -> None:
        """Restrict to the ``top_p`` nucleus of ``lm`` (frozen here) plus ``keep_tokens`` (if allowed)."""
        self.mask_lm = lm.requires_grad_(False).eval()
        self.mask_top_p = float(top_p)
        ids = torch.as_tensor(list(keep_tokens), dtype=torch.long, device=self.device)
        self.mask_keep = self.to_choice(ids[self.allowed(ids)])

    @property
    def restricting(self) -> bool:
        return self.mask_lm is not None and self.mask_top_p < 1.0 and self._restricting

    @contextlib.contextmanager
    def unrestricted(self) -> Iterator[None]:
        """The plain LMPolicy distribution (the reference's log-probs are computed in here)."""
        old, self._restricting = self._restricting, False
        try:
            yield
        finally:
            self._restricting = old

    @contextlib.contextmanager
    def _restricted(self, support: torch.Tensor) -> Iterator[None]:
        self._support = support
        try:
            yield
        finally:
            self._support = None

    def support(self, mask_logits: torch.Tensor) -> torch.Tensor:
        """Bool over the choices: the masking policy's nucleus of its raw choice logits (and the kept choices)."""
        action_mask = self.action_mask if self.allowed_ids is None else None
        kept = torch.isfinite(filter_logits(mask_logits, temperature=self.temperature, top_p=self.mask_top_p,
                                            action_mask=action_mask))  # fmt: skip
        if self.mask_keep is not None and self.mask_keep.numel():
            kept[..., self.mask_keep] = True
        return kept

    def head_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Choice logits, -inf outside the current support (inside :meth:`decode_step` / :meth:`sequence_forward`)."""
        logits = super().head_logits(hidden)
        return logits if self._support is None else logits.masked_fill(~self._support, float("-inf"))

    def decode_step(
        self, ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor, past: Any = None,
        take: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, Any, torch.Tensor]:
        """LMPolicy's step, with the masking LM run on the same columns with its own KV cache: the cache is
        the pair (policy's, masking LM's) and the logits are -inf outside the masking policy's nucleus."""
        if not self.restricting:
            return super().decode_step(ids, attention_mask, positions, past, take)
        own, theirs = past if past is not None else (None, None)
        with self.swapped_lm(self.mask_lm):
            mask_logits, theirs, _ = super().decode_step(ids, attention_mask, positions, theirs, take)
        with self._restricted(self.support(mask_logits)):
            logits, own, hidden = super().decode_step(ids, attention_mask, positions, own, take)
        return logits, (own, theirs), hidden

    def select_decode_rows(self, past: Any, index: torch.Tensor) -> Any:
        if not self.restricting:
            return super().select_decode_rows(past, index)
        own, theirs = past
        return super().select_decode_rows(own, index), super().select_decode_rows(theirs, index)

    def reserve_decode_room(self, past: Any, columns: int) -> Any:
        if not self.restricting:
            return super().reserve_decode_room(past, columns)
        own, theirs = past
        return super().reserve_decode_room(own, columns), super().reserve_decode_room(theirs, columns)

    def sequence_forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int, with_values: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """LMPolicy's, over the masking policy's nucleus at every position (one no-grad forward of the masking
        LM) plus the generated token itself."""
        if not self.restricting:
            return super().sequence_forward(input_ids, attention_mask, prompt_len, with_values)
        with torch.no_grad(), self.swapped_lm(self.mask_lm):
            support = self.support(self.head_logits(self.answer_hidden(input_ids, attention_mask, prompt_len)))
        support = support.scatter(-1, self.to_choice(input_ids[:, prompt_len:]).unsqueeze(-1), True)
        with self._restricted(support):
            return super().sequence_forward(input_ids, attention_mask, prompt_len, with_values)

    def _predict(self, observation: dict[str, torch.Tensor], deterministic: bool = False) -> torch.Tensor:
        if not self.restricting:
            return super()._predict(observation, deterministic)
        ids, mask = self._obs(observation)
        with torch.no_grad(), self.swapped_lm(self.mask_lm):
            hidden, _ = run_decoder(self.decoder, ids, mask, positions_from_mask(mask))
            last = ids.shape[1] - 1 - mask.flip(1).argmax(1)
            support = self.support(self.head_logits(hidden[torch.arange(ids.shape[0]), last]))
        with self._restricted(support):
            return super()._predict(observation, deterministic)


@functools.cache
def nlpo_policy_class(cls: type[LMPolicy]) -> type[NLPOPolicy]:
    """The NLPO version of a policy class: NLPOPolicy mixed into ``cls`` under ``cls``'s name, so that a
    checkpoint names the policy the user chose (``"LMPolicy"``) and loads with nothing registered."""
    if cls is NLPOPolicy:
        cls = LMPolicy
    if issubclass(cls, NLPOPolicy):
        return cls
    return type(
        cls.__name__, (NLPOPolicy, cls), {"__module__": __name__, "__qualname__": f"NLPOPolicy[{cls.__qualname__}]"}
    )


def _trainable(lm: nn.Module) -> list[str]:
    """Names of the tensors training can change (all with full fine-tuning, the adapters with LoRA)."""
    return [name for name, p in lm.named_parameters() if p.requires_grad]


class TextNLPO(TextPPO):
    """PPO restricted to a masking policy's nucleus (see the module docstring)."""

    name = "nlpo"
    config_class = NLPOConfig
    config: NLPOConfig
    policy: NLPOPolicy

    def policy_class_for(self, lm: nn.Module) -> type[LMPolicy]:
        return nlpo_policy_class(super().policy_class_for(lm))

    def _setup_algorithm(self) -> None:
        super()._setup_algorithm()
        self.policy.set_masking(copy.deepcopy(self.policy.lm), self.config.mask_top_p, [self.spec.eos_id])
        self.mask_refreshed_at = self.n_updates  # the update whose weights the masking LM holds

    @torch.no_grad()
    def refresh_mask(self) -> None:
        """Copy the policy's current weights into the masking LM."""
        own, theirs = dict(self.policy.lm.named_parameters()), dict(self.policy.mask_lm.named_parameters())
        for name in _trainable(self.policy.lm):
            theirs[name].copy_(own[name])
        self.mask_refreshed_at = self.n_updates

    def checked_train(self, batch: SequenceBatch) -> dict[str, float]:
        before = self.n_updates
        stats = super().checked_train(batch)
        if self.n_updates > before and self.n_updates % self.config.mask_update_interval == 0:
            self.refresh_mask()
        stats["train/mask_age"] = float(self.n_updates - self.mask_refreshed_at)  # updates since the refresh
        return stats

    @torch.no_grad()
    def reference_logprobs(self, ids: torch.Tensor, mask: torch.Tensor, prompt_len: int) -> torch.Tensor:
        """The reference's log-probs over its whole (filtered) distribution, not restricted (as in RL4LMs)."""
        with self.policy.unrestricted():
            return super().reference_logprobs(ids, mask, prompt_len)

    def state_dict(self) -> dict[str, Any]:
        theirs = dict(self.policy.mask_lm.named_parameters())
        weights = {name: theirs[name].detach().cpu().clone() for name in _trainable(self.policy.lm)}
        return {**super().state_dict(), "mask_lm": weights, "mask_refreshed_at": self.mask_refreshed_at}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        theirs = dict(self.policy.mask_lm.named_parameters())
        with torch.no_grad():
            for name, tensor in state["mask_lm"].items():
                theirs[name].copy_(tensor)
        self.mask_refreshed_at = int(state["mask_refreshed_at"])
