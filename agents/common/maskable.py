"""MaskableLMPolicy: :class:`~agents.common.policies.LMPolicy` for sb3-contrib's ``MaskablePPO``.

``MaskablePPO`` accepts only subclasses of ``MaskableActorCriticPolicy`` and
passes ``action_masks`` (one row of allowed token ids per env, from the env's
``action_masks()``) to the policy's ``forward``, ``evaluate_actions`` and
``predict``.  This policy is an LMPolicy (the LM's own head, KV cache, value
head) that is also a ``MaskableActorCriticPolicy``: a mask sets the logits of
the tokens it excludes to ``-inf``, on top of the policy's own static
``action_mask``.

Example (``pip install sb3-contrib``)::

    import gymnasium as gym, textgym
    from sb3_contrib import MaskablePPO
    from agents.common.maskable import MaskableLMPolicy
    from agents.sb3_adapter import SB3VecEnv

    venv = SB3VecEnv(gym.make_vec("textgym/Copy-v0", num_envs=4, model="tiny-random"))
    MaskablePPO(MaskableLMPolicy, venv, n_steps=8, batch_size=32,
                policy_kwargs={"model": "tiny-random"}).learn(256)
"""

from __future__ import annotations

from typing import Any

import torch
from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy
from stable_baselines3.common.distributions import CategoricalDistribution
from stable_baselines3.common.policies import BasePolicy

from agents.common.policies import LMPolicy


class _MaskableBase(MaskableActorCriticPolicy):
    """``MaskableActorCriticPolicy`` as a base class of LMPolicy, without its constructor.

    In ``MaskableLMPolicy``'s method order it comes right after SB3's
    ``ActorCriticPolicy``, whose constructor calls the next one with
    ``BasePolicy``'s arguments; this goes straight to ``BasePolicy`` (LMPolicy
    builds everything itself: no MLP extractor, no ``action_net``).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        BasePolicy.__init__(self, *args, **kwargs)


class MaskableLMPolicy(LMPolicy, _MaskableBase):
    """An LMPolicy that honours ``action_masks`` (sb3-contrib's ``MaskablePPO``; see the module docstring).

    ``action_masks``: bool-like, shape ``(batch, vocab)`` (or anything that reshapes to it);
    None = only the policy's own ``action_mask``.
    """

    def _masked(self, dist: CategoricalDistribution, action_masks: Any) -> CategoricalDistribution:
        if action_masks is None:
            return dist
        logits = dist.distribution.logits
        masks = torch.as_tensor(action_masks, device=logits.device).bool().reshape(logits.shape)  # numpy or tensor
        return dist.proba_distribution(action_logits=logits.masked_fill(~masks, float("-inf")))

    def forward(  # type: ignore[override]
        self, obs: dict[str, torch.Tensor], deterministic: bool = False, action_masks: Any = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ids, mask = self._obs(obs)
        hidden = self._last_hidden(ids, mask, use_cache=True)
        dist = self._masked(self._distribution(hidden), action_masks)
        actions = dist.get_actions(deterministic=deterministic)
        return actions, self._critic_value(ids, mask, hidden).unsqueeze(-1), dist.log_prob(actions)

    def evaluate_actions(  # type: ignore[override]
        self, obs: dict[str, torch.Tensor], actions: torch.Tensor, action_masks: Any = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ids, mask = self._obs(obs)
        hidden = self._last_hidden(ids, mask, use_cache=False)
        actions = actions.reshape(-1).long()
        dist = self._masked(self._distribution(hidden, keep=actions), action_masks)
        return self._critic_value(ids, mask, hidden).unsqueeze(-1), dist.log_prob(actions), dist.entropy()

    def get_distribution(  # type: ignore[override]
        self, obs: dict[str, torch.Tensor], action_masks: Any = None
    ) -> CategoricalDistribution:
        ids, mask = self._obs(obs)
        return self._masked(self._distribution(self._last_hidden(ids, mask, use_cache=False)), action_masks)

    def _predict(  # type: ignore[override]
        self, observation: dict[str, torch.Tensor], deterministic: bool = False, action_masks: Any = None
    ) -> torch.Tensor:
        ids, mask = self._obs(observation)
        dist = self._masked(self._distribution(self._last_hidden(ids, mask, use_cache=True)), action_masks)
        return dist.get_actions(deterministic=deterministic)


