"""SB3VecEnv: a textgym TextVectorEnv as a Stable-Baselines3 ``VecEnv``.

Gymnasium vector envs reset a finished slot on the NEXT step (NextStep
autoreset); SB3's VecEnv resets it in the SAME step and puts the last
observation in ``info["terminal_observation"]``.  The adapter translates:
after each step it resets the slots that just finished (``reset_mask``), so
the returned observation is already the new episode's.

``TimeLimit.truncated`` is always False: the env scores the text when it
reaches ``max_new_tokens``, so that episode is over and SB3 must not
bootstrap a value past it.  ``info["episode"]`` (``r``, ``l``) feeds SB3's
``rollout/ep_rew_mean``.

Example:
    >>> import gymnasium as gym, textgym
    >>> from agents.sb3_adapter import SB3VecEnv
    >>> venv = SB3VecEnv(gym.make_vec("textgym/Copy-v0", num_envs=2, model="tiny-random"))
    >>> venv.reset()["input_ids"].shape
    (2, 22)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvObs, VecEnvStepReturn

from textgym.rollout import slot_info
from textgym.vector import TextVectorEnv


class SB3VecEnv(VecEnv):
    """Stable-Baselines3 view of a :class:`~textgym.vector.TextVectorEnv` (see the module docstring)."""

    def __init__(self, venv: TextVectorEnv) -> None:
        if not isinstance(venv, TextVectorEnv):
            raise TypeError(f"SB3VecEnv wraps a textgym TextVectorEnv (gym.make_vec('textgym/...')), got {type(venv).__name__}")
        if venv.autoreset_mode.value != "NextStep":
            raise ValueError(f"SB3VecEnv expects the default NextStep autoreset, got {venv.autoreset_mode.value!r}")
        self.venv = venv
        super().__init__(venv.num_envs, venv.single_observation_space, venv.single_action_space)
        self._actions: np.ndarray | None = None
        self._returns = np.zeros(self.num_envs)
        self._lengths = np.zeros(self.num_envs, dtype=np.int64)

    @property
    def action_mask(self) -> np.ndarray | None:
        """The task's static mask of allowed tokens (pass it as ``policy_kwargs={"action_mask": ...}``)."""
        return self.venv.text_spec.action_mask

    def action_masks(self) -> np.ndarray:
        """(num_envs, vocab) allowed actions (sb3-contrib ``MaskablePPO`` convention)."""
        return np.array(self.venv.action_masks())

    def reset(self) -> VecEnvObs:
        seeds = [s for s in self._seeds]
        obs, infos = self.venv.reset(seed=seeds if any(s is not None for s in seeds) else None, options=None)
        self._reset_seeds()
        self.reset_infos = [slot_info(infos, i) for i in range(self.num_envs)]
        self._returns[:] = 0
        self._lengths[:] = 0
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions).reshape(-1).astype(np.int64)

    def step_wait(self) -> VecEnvStepReturn:
        obs, rewards, terminated, truncated, infos = self.venv.step(self._actions)
        dones = terminated | truncated
        self._returns += rewards
        self._lengths += 1
        out_infos: list[dict[str, Any]] = [slot_info(infos, i) for i in range(self.num_envs)]
        if dones.any():
            for i in np.flatnonzero(dones):
                out_infos[i]["terminal_observation"] = {k: v[i].copy() for k, v in obs.items()}
                out_infos[i]["TimeLimit.truncated"] = False  # scored at max_new_tokens: nothing to bootstrap
                out_infos[i]["episode"] = {"r": float(self._returns[i]), "l": int(self._lengths[i]), "t": 0.0}
            obs, reset_infos = self.venv.reset(options={"reset_mask": dones})
            for i in np.flatnonzero(dones):
                self.reset_infos[i] = slot_info(reset_infos, int(i))
            self._returns[dones] = 0
            self._lengths[dones] = 0
        return obs, rewards.astype(np.float32), dones, out_infos

    def close(self) -> None:
        self.venv.close()

    def _indices(self, indices: VecEnvIndices) -> Sequence[int]:
        if indices is None:
            return range(self.num_envs)
        if isinstance(indices, int):
            return [indices]
        return list(indices)

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        return [getattr(self.venv, attr_name) for _ in self._indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        setattr(self.venv, attr_name, value)

    def env_method(self, method_name: str, *method_args: Any, indices: VecEnvIndices = None, **method_kwargs: Any) -> list[Any]:
        if method_name == "action_masks":
            masks = self.action_masks()
            return [masks[i] for i in self._indices(indices)]
        result = getattr(self.venv, method_name)(*method_args, **method_kwargs)
        return [result for _ in self._indices(indices)]

    def env_is_wrapped(self, wrapper_class: type, indices: VecEnvIndices = None) -> list[bool]:
        return [False for _ in self._indices(indices)]

    def get_images(self) -> Sequence[np.ndarray | None]:
        return [None for _ in range(self.num_envs)]
