"""The env an agent trains on: a textgym TextVectorEnv, checked against the agent's model.

An agent reads token ids, writes token ids and learns from the env's own
scores, so it keeps only the wrappers that leave those alone:

* a vector env wrapped in vector wrappers that only observe or record
  (``gymnasium.wrappers.vector.RecordEpisodeStatistics``, or any wrapper class
  that sets ``keeps_text_contract = True``) is kept, and the agent steps
  *through* the wrappers (:class:`TextVectorView`), so they record its episodes;
* a single env (``gym.make``) becomes a fresh 1-slot TextVectorEnv built from
  its spec: only ``gym.make``'s own checks (``PassiveEnvChecker``,
  ``OrderEnforcing``) may wrap it, as nothing else would survive that;
* any other wrapper is refused by name, with what to use instead (e.g.
  ``NormalizeReward``: the agents' ``reward_scaling``).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import VectorEnv, VectorWrapper

from textgym.spec import TextSpec
from textgym.vector import TextVectorEnv

#: Gymnasium's vector wrappers that keep the text contract (they observe; rewards, token ids and infos pass unchanged).
OBSERVING_VECTOR_WRAPPERS: tuple[type, ...] = (gym.wrappers.vector.RecordEpisodeStatistics,)
#: Wrappers ``gym.make`` adds around a single env; they check calls and change nothing.
MAKE_WRAPPERS: tuple[type, ...] = (gym.wrappers.PassiveEnvChecker, gym.wrappers.OrderEnforcing)

_REWARDS = "textgym agents learn from the env's own scores"
_WHY = {
    "NormalizeReward": f"changes the rewards; {_REWARDS} and scale them themselves: use reward_scaling=True "
    "(the default of TextPPO) instead",
    "TransformReward": f"changes the rewards; {_REWARDS}: put the reward into the env instead "
    "(gym.make_vec(id, reward=...): a metric, weights or a callable)",
    "ClipReward": f"changes the rewards; {_REWARDS}: put the reward into the env instead (gym.make_vec(id, reward=...))",
    "TimeLimit": "cuts episodes; the env has its own scored limit: pass max_new_tokens=n to gym.make_vec",
    "RecordEpisodeStatistics": "records the steps of the single env, which the agent never takes (it steps a "
    "vector env): wrap the vector env instead, gymnasium.wrappers.vector.RecordEpisodeStatistics("
    "gym.make_vec(id, num_envs=N))",
    "DictInfoToList": "changes the layout of the infos the agent reads (Gymnasium's dict of arrays)",
    "FlattenObservation": "changes the observations (the token ids the LM reads)",
}


def _why(wrapper: Any) -> str:
    name = type(wrapper).__name__
    if name in _WHY:
        return _WHY[name]
    if "Reward" in name:
        return f"may change the rewards; {_REWARDS}"
    if "Observation" in name:
        return "may change the observations (the token ids the LM reads)"
    if "Action" in name:
        return "may change the actions (the token ids the LM writes)"
    return "is not known to keep the text contract (token-id observations and actions, the env's rewards and infos)"


def _keeps_contract(wrapper: Any) -> bool:
    return isinstance(wrapper, OBSERVING_VECTOR_WRAPPERS) or getattr(type(wrapper), "keeps_text_contract", False) is True


class TextVectorView(VectorWrapper):
    """A TextVectorEnv seen through vector wrappers that keep the text contract.

    ``step``/``reset``/``close`` go through the outermost wrapper (so e.g.
    ``RecordEpisodeStatistics`` records every episode the agent plays); the
    text attributes the agents read (``text_spec``, ``shard``, ``action_masks``,
    ``autoreset_mode``, ...) come from the TextVectorEnv inside.
    """

    def __init__(self, env: VectorEnv) -> None:
        super().__init__(env)
        self.text_env: TextVectorEnv = env.unwrapped  # type: ignore[assignment]

    @property
    def text_spec(self) -> TextSpec:
        return self.text_env.text_spec

    @property
    def task(self) -> Any:
        return self.text_env.task

    @property
    def tokenizer(self) -> Any:
        return self.text_env.tokenizer

    @property
    def autoreset_mode(self) -> Any:
        return self.text_env.autoreset_mode

    def shard(self, rank: int, world_size: int) -> None:
        self.text_env.shard(rank, world_size)

    def action_masks(self) -> np.ndarray:
        return self.text_env.action_masks()

    def __repr__(self) -> str:
        return f"<{type(self).__name__}, {self.env}>"


def _wrappers(env: Any) -> list[Any]:
    """The wrappers of ``env``, outermost first."""
    chain = []
    while isinstance(env, (gym.Wrapper, VectorWrapper)):
        chain.append(env)
        env = env.env
    return chain


def _check_autoreset(env: TextVectorEnv, owner: str) -> None:
    if env.autoreset_mode.value == "Disabled":
        raise ValueError(
            f"{owner} steps finished slots with a placeholder until the whole batch ends; use "
            "autoreset_mode='NextStep' (default) or 'SameStep', got 'Disabled'"
        )


def as_text_vector_env(env: Any, owner: str) -> TextVectorEnv | TextVectorView:
    """The agent's vector env (see the module docstring).

    A TextVectorEnv as is; one inside vector wrappers that keep the text contract as a
    :class:`TextVectorView`; a single TextEnv (from ``gym.make``) as a fresh 1-slot TextVectorEnv.
    """
    if isinstance(env, TextVectorView):
        return env
    if isinstance(env, TextVectorEnv):
        _check_autoreset(env, owner)
        return env
    if isinstance(env, VectorEnv):
        if not isinstance(env.unwrapped, TextVectorEnv):
            raise TypeError(
                f"{owner} needs a textgym TextVectorEnv (gym.make_vec('textgym/...')), got {type(env.unwrapped).__name__}"
            )
        for wrapper in _wrappers(env):
            if not _keeps_contract(wrapper):
                raise TypeError(
                    f"{owner} cannot train through {type(wrapper).__name__}: it {_why(wrapper)}. Agents keep only "
                    "vector wrappers that observe (gymnasium.wrappers.vector.RecordEpisodeStatistics, or a wrapper "
                    "class with keeps_text_contract = True)"
                )
        _check_autoreset(env.unwrapped, owner)
        return TextVectorView(env)
    if isinstance(env, gym.Env):
        if not isinstance(env.action_space, gym.spaces.Discrete):
            raise TypeError(f"{owner} needs a Discrete action space (one token id per step); the env has {env.action_space}")
        if getattr(env.unwrapped, "text_spec", None) is None:
            raise TypeError(f"{owner} needs a textgym env (gym.make('textgym/...')), got {type(env.unwrapped).__name__}")
        for wrapper in _wrappers(env):
            if not isinstance(wrapper, MAKE_WRAPPERS):
                raise TypeError(
                    f"{owner} cannot keep {type(wrapper).__name__} around a single env: it {_why(wrapper)}. The agent "
                    "vectorises a single env (a fresh 1-slot TextVectorEnv from its spec) and would silently drop its "
                    "wrappers; pass gym.make(id) unwrapped, or gym.make_vec(id, num_envs=N) wrapped in vector "
                    "wrappers that observe (gymnasium.wrappers.vector.RecordEpisodeStatistics)"
                )
        spec = env.unwrapped.spec
        if spec is None:
            raise ValueError("a single TextEnv must come from gym.make(id, ...) so that it can be vectorised")
        return TextVectorEnv(num_envs=1, **spec.kwargs)
    raise TypeError(f"env must be a textgym env or vector env, got {type(env).__name__}")
