"""Agents for textgym: :class:`TextPPO` (PPO for causal LMs) and :class:`LMPolicy` (its SB3 policy).

``agents`` depends on ``textgym``; ``textgym`` never imports ``agents``.  The
names are imported lazily, so ``agents.cli`` (and ``textgym list``) load
without torch.

Example:
    >>> import gymnasium as gym, textgym
    >>> from agents import TextPPO
    >>> env = gym.make_vec("textgym/Copy-v0", num_envs=8, model="tiny-random")
    >>> agent = TextPPO("LMPolicy", env, model="tiny-random", seed=0, verbose=0)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agents.config import TextPPOConfig
    from agents.policies import LMPolicy
    from agents.ppo import TextPPO

_EXPORTS = {"TextPPO": "agents.ppo", "LMPolicy": "agents.policies", "TextPPOConfig": "agents.config"}
__all__ = ["LMPolicy", "TextPPO", "TextPPOConfig"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'agents' has no attribute {name!r}; available: {__all__}")
