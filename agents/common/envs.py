"""The env an agent trains on: a textgym TextVectorEnv, checked against the agent's model."""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from textgym.vector import TextVectorEnv


def as_text_vector_env(env: Any, owner: str) -> TextVectorEnv:
    """The agent's vector env: a TextVectorEnv as is, a single TextEnv (from ``gym.make``) as a 1-slot one."""
    if isinstance(env, TextVectorEnv):
        if env.autoreset_mode.value == "Disabled":
            raise ValueError(
                f"{owner} steps finished slots with a placeholder until the whole batch ends; use "
                "autoreset_mode='NextStep' (default) or 'SameStep', got 'Disabled'"
            )
        return env
    if isinstance(env, gym.vector.VectorEnv):
        raise TypeError(f"{owner} needs a textgym TextVectorEnv (gym.make_vec('textgym/...')), got {type(env).__name__}")
    if isinstance(env, gym.Env):
        if not isinstance(env.action_space, gym.spaces.Discrete):
            raise TypeError(f"{owner} needs a Discrete action space (one token id per step); the env has {env.action_space}")
        if getattr(env.unwrapped, "text_spec", None) is None:
            raise TypeError(f"{owner} needs a textgym env (gym.make('textgym/...')), got {type(env.unwrapped).__name__}")
        spec = env.unwrapped.spec
        if spec is None:
            raise ValueError("a single TextEnv must come from gym.make(id, ...) so that it can be vectorised")
        return TextVectorEnv(num_envs=1, **spec.kwargs)
    raise TypeError(f"env must be a textgym env or vector env, got {type(env).__name__}")
