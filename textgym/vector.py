"""TextVectorEnv: N text episodes stepped as arrays, scored in batches.

It is every id's ``vector_entry_point``, so ``gym.make_vec(id, num_envs=N)``
returns it.  Slot ``i`` behaves exactly like a single :class:`~textgym.env.TextEnv`
reset with ``seed + i``: same prompts, same rewards.

Autoreset follows Gymnasium (``metadata["autoreset_mode"]``):

* ``"NextStep"`` (default): the step after an episode ended resets that slot
  (its action is ignored, reward 0);
* ``"SameStep"``: a finished slot is reset in the same step; the last
  observation and info are in ``infos["final_obs"]`` / ``infos["final_info"]``
  (what Stable-Baselines3's VecEnv expects);
* ``"Disabled"``: finished slots wait for ``reset(options={"reset_mask": m})``.

Multi-turn tasks: a slot whose turn ended and whose episode goes on is neither
terminated nor truncated; that step's infos carry its turn keys (``turn``,
``reply_ids`` ... with their ``_turn`` masks) and its observation row already
holds the env's reply.  Slots answer and reply at their own pace, so their
conversations have different lengths: read them from ``attention_mask``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from textgym.env import RENDER_MODES, check_render_mode
from textgym.envsetup import EnvSetup
from textgym.episodes import Episodes, check_actions
from textgym.errors import ConfigError, ResetNeeded
from textgym.spec import TextSpec


def _autoreset_mode(value: Any) -> AutoresetMode:
    try:
        return AutoresetMode(value)
    except ValueError:
        allowed = [m.value for m in AutoresetMode]
        raise ConfigError(f"autoreset_mode must be one of {allowed}, got {value!r}") from None


class TextVectorEnv(VectorEnv):
    """N episodes of one text task, batched (see the module docstring).

    Example:
        >>> import gymnasium as gym, textgym
        >>> envs = gym.make_vec("textgym/Copy-v0", num_envs=4, model="tiny-random")
        >>> obs, infos = envs.reset(seed=0)
        >>> obs["input_ids"].shape[0]
        4
    """

    def __init__(
        self,
        task: Any,
        num_envs: int = 1,
        *,
        render_mode: str | None = None,
        autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
        **kwargs: Any,
    ) -> None:
        """``kwargs``: the env settings of :class:`~textgym.envsetup.EnvSetup` and the task's own."""
        if isinstance(num_envs, bool) or not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
            raise ConfigError(f"num_envs must be a positive integer, got {num_envs!r}")
        self.num_envs = int(num_envs)
        self.render_mode = check_render_mode(render_mode)
        self.autoreset_mode = _autoreset_mode(autoreset_mode)
        self.metadata = {"render_modes": RENDER_MODES, "autoreset_mode": self.autoreset_mode}
        self.setup = EnvSetup(task, owner=type(self).__name__, **kwargs)
        self.single_observation_space = self.setup.observation_space
        self.single_action_space = self.setup.action_space
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._episodes = Episodes(self.setup, self.num_envs)
        self._all = np.arange(self.num_envs)
        self._rngs: list[np.random.Generator] = [np.random.default_rng() for _ in range(self.num_envs)]
        self._autoreset = np.zeros(self.num_envs, dtype=bool)

    @property
    def task(self) -> Any:
        return self.setup.task

    @property
    def tokenizer(self) -> Any:
        return self.setup.tokenizer

    def shard(self, rank: int, world_size: int) -> None:
        """Keep samples ``rank, rank + world_size, ...`` of the split: one data-parallel rank's share.

        ``reset(options={"index": i})`` then indexes the shard; calling it again with the same shard
        does nothing.
        """
        self.setup.shard(rank, world_size)

    @property
    def text_spec(self) -> TextSpec:
        """Tokenizer, special ids, lengths, action mask and prompt format (:class:`~textgym.spec.TextSpec`)."""
        return self.setup.spec(None if self.spec is None else self.spec.id)

    def _reset_slots(self, slots: np.ndarray, options: dict[str, Any] | None, infos: dict[str, Any]) -> dict[str, Any]:
        # The action mask is not repeated per slot in infos: use action_masks().
        reset_infos = [
            self._episodes.reset_slot(int(slot), self.setup.draw(self._rngs[slot], self._slot_options(options, slot)), with_mask=False)
            for slot in slots
        ]
        self._autoreset[slots] = False
        return self._merge_infos(infos, slots, reset_infos)

    def _slot_options(self, options: dict[str, Any] | None, slot: int) -> dict[str, Any] | None:
        """``options={"index": [i0, i1, ...]}`` gives every slot its own sample."""
        if not options or np.ndim(options.get("index", 0)) == 0:
            return options
        indices = options["index"]
        if len(indices) != self.num_envs:
            raise ConfigError(f"reset option index has {len(indices)} entries for {self.num_envs} envs")
        return {**options, "index": indices[slot]}

    def _merge_infos(self, infos: dict[str, Any], slots: Any, per_slot: list[dict[str, Any]]) -> dict[str, Any]:
        """Gymnasium's vector info layout (``key`` arrays + ``_key`` masks), one key at a time."""
        slots = np.asarray(slots, dtype=np.int64)
        keys = dict.fromkeys(k for info in per_slot for k in info)
        for key in keys:
            have = [i for i, info in enumerate(per_slot) if key in info]
            values = [per_slot[i][key] for i in have]
            rows = slots[have]
            if all(isinstance(v, dict) for v in values):
                infos[key] = self._merge_infos(infos.get(key, {}), rows, values)
            else:
                if key not in infos:
                    numeric = all(isinstance(v, (bool, int, float, np.number)) for v in values)
                    dtype = np.asarray(values).dtype if numeric else object
                    infos[key] = np.zeros(self.num_envs, dtype=dtype) if numeric else np.full(self.num_envs, None, object)
                array = infos[key]
                for row, value in zip(rows, values):
                    array[row] = value
            mask = infos.setdefault("_" + key, np.zeros(self.num_envs, dtype=bool))
            mask[rows] = True
        return infos

    def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Reset every slot (or those in ``options["reset_mask"]``).

        ``seed`` is an int (slot ``i`` gets ``seed + i``) or one seed per slot.
        ``options={"index": i}`` picks sample ``i`` for every slot,
        ``{"index": [i0, i1, ...]}`` one sample per slot.
        """
        if seed is not None:
            seeds = [seed + i for i in range(self.num_envs)] if isinstance(seed, (int, np.integer)) else list(seed)
            if len(seeds) != self.num_envs:
                raise ConfigError(f"got {len(seeds)} seeds for {self.num_envs} envs")
            for i, s in enumerate(seeds):
                if s is not None:
                    self._rngs[i] = np.random.default_rng(s)
        slots = self._all
        if options and "reset_mask" in options:
            mask = np.asarray(options["reset_mask"])
            if mask.dtype != np.bool_ or mask.shape != (self.num_envs,):
                raise ConfigError(f"reset_mask must be a bool array of shape ({self.num_envs},), got {mask!r}")
            slots = np.flatnonzero(mask)
        infos = self._reset_slots(slots, options, {})
        return self._episodes.obs(), infos

    def step(
        self, actions: Any
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        actions = check_actions(actions, self.num_envs, self.setup.vocab_size)
        infos: dict[str, Any] = {}
        rows = self._all
        if self.autoreset_mode == AutoresetMode.NEXT_STEP and self._autoreset.any():
            resetting = np.flatnonzero(self._autoreset)
            infos = self._reset_slots(resetting, None, infos)
            rows = np.flatnonzero(~np.isin(self._all, resetting))
        self._episodes.check_running(rows)
        rewards = np.zeros(self.num_envs, dtype=np.float64)
        terminated = np.zeros(self.num_envs, dtype=bool)
        truncated = np.zeros(self.num_envs, dtype=bool)
        if rows.size:
            r, te, tr, finals = self._episodes.step(actions[rows], rows)
            rewards[rows], terminated[rows], truncated[rows] = r, te, tr
            done = np.flatnonzero(terminated | truncated)
            # `finals` holds the info of every ended episode and of every
            # multi-turn episode that moved on to its next turn.
            ongoing = [slot for slot in finals if slot not in set(done.tolist())]
            if self.autoreset_mode == AutoresetMode.SAME_STEP and done.size:
                final_obs = self._episodes.obs(done)
                infos["final_obs"] = np.full(self.num_envs, None, dtype=object)
                for k, slot in enumerate(done):
                    infos["final_obs"][slot] = {key: value[k] for key, value in final_obs.items()}
                infos["_final_obs"] = np.isin(self._all, done)
                infos = self._merge_infos(infos, done, [{"final_info": finals[int(s)]} for s in done])
                infos = self._reset_slots(done, None, infos)
                if ongoing:
                    infos = self._merge_infos(infos, ongoing, [finals[s] for s in ongoing])
            elif finals:
                infos = self._merge_infos(infos, list(finals), list(finals.values()))
            self._autoreset = terminated | truncated
        return self._episodes.obs(), rewards, terminated, truncated, infos

    def action_masks(self) -> np.ndarray:
        """Allowed actions per slot, shape ``(num_envs, vocab_size)``."""
        mask = self.setup.action_mask
        if mask is None:
            return np.ones((self.num_envs, self.setup.vocab_size), dtype=bool)
        return np.broadcast_to(mask, (self.num_envs, mask.shape[0]))

    def render(self) -> tuple[str, ...] | None:
        if self.render_mode != "ansi":
            return None
        if not self._episodes.started.all():
            raise ResetNeeded("call reset() before render()")
        return tuple(self._episodes.render(i) for i in range(self.num_envs))
