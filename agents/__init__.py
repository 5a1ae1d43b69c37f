"""Agents for textgym: on-policy RL for language models (PPO, GRPO, RLOO, NLPO, RAFT) with SB3's API.

``agents`` depends on ``textgym``; ``textgym`` never imports ``agents`` (its CLI
finds the agent commands through the ``textgym.commands`` entry point).  The
names are imported lazily, so ``agents.cli`` loads without torch.

Example:
    >>> import gymnasium as gym, textgym
    >>> from agents import TextPPO
    >>> env = gym.make_vec("textgym/Copy-v0", num_envs=8, model="tiny-random")
    >>> agent = TextPPO("LMPolicy", env, model="tiny-random", seed=0)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agents.common.callbacks import CheckpointCallback, TextEvalCallback
    from agents.common.policies import LMPolicy, Seq2SeqLMPolicy
    from agents.grpo import GRPOConfig, TextGRPO
    from agents.nlpo import NLPOConfig, TextNLPO
    from agents.ppo import PPOConfig, TextPPO
    from agents.raft import RAFTConfig, TextRAFT
    from agents.rloo import RLOOConfig, TextRLOO

# algorithm name -> (module, class, config class); the CLI's --algo choices
ALGORITHMS: dict[str, tuple[str, str, str]] = {
    "ppo": ("agents.ppo", "TextPPO", "PPOConfig"),
    "grpo": ("agents.grpo", "TextGRPO", "GRPOConfig"),
    "rloo": ("agents.rloo", "TextRLOO", "RLOOConfig"),
    "nlpo": ("agents.nlpo", "TextNLPO", "NLPOConfig"),
    "raft": ("agents.raft", "TextRAFT", "RAFTConfig"),
}
_EXPORTS = {"LMPolicy": "agents.common.policies", "Seq2SeqLMPolicy": "agents.common.policies", "TextEvalCallback": "agents.common.callbacks",
            "CheckpointCallback": "agents.common.callbacks"}
for _module, _cls, _config in ALGORITHMS.values():
    _EXPORTS[_cls] = _EXPORTS[_config] = _module
__all__ = ["ALGORITHMS", "CheckpointCallback", "GRPOConfig", "LMPolicy", "NLPOConfig", "PPOConfig", "RAFTConfig", "RLOOConfig", "Seq2SeqLMPolicy", "TextGRPO", "TextNLPO", "TextPPO", "TextRAFT", "TextEvalCallback", "TextRLOO", "algorithm", "load_agent"]


def algorithm(name: str) -> Any:
    """The algorithm class of ``name`` (``"ppo"``, ...); an unknown name lists the allowed ones."""
    from textgym.errors import ConfigError

    if name not in ALGORITHMS:
        raise ConfigError(f"unknown algorithm {name!r}; allowed: {sorted(ALGORITHMS)}")
    module, cls, _ = ALGORITHMS[name]
    return getattr(importlib.import_module(module), cls)


def load_agent(path: str, env: Any = None, device: str = "auto", **overrides: Any) -> Any:
    """Load a saved agent of any algorithm (the checkpoint records which); see ``Algo.load``."""
    from agents.common.persistence import checkpoint_algorithm

    return algorithm(checkpoint_algorithm(path)).load(path, env=env, device=device, **overrides)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'agents' has no attribute {name!r}; available: {__all__}")
