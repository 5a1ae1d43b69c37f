"""A checkpoint callback for the text agents (also importable from ``agents.common.callbacks``, where SB3 users look).

:class:`CheckpointCallback` is the text agents' counterpart of
``stable_baselines3.common.callbacks.CheckpointCallback``: it saves into a
*run directory* of ``checkpoint-<updates>`` folders, the layout that
``textgym train --out``, ``Algo.load(run_dir)``, ``textgym eval --checkpoint``
and ``textgym bench --agents ppo:RUN`` read (the newest valid one wins).

SB3's own ``CheckpointCallback`` also works: it calls ``agent.save(".../rl_model_<steps>_steps.zip")``
every ``save_freq`` *decoding steps* (mid-rollout), and the agent writes the
directory ``rl_model_<steps>_steps`` (no ``.zip``); load one of those by its path.

Example:
    >>> import gymnasium as gym, textgym
    >>> from agents import TextPPO
    >>> from agents.common.checkpoint_callback import CheckpointCallback
    >>> env = gym.make_vec("textgym/Copy-v0", num_envs=4, model="tiny-random")
    >>> agent = TextPPO("LMPolicy", env, model="tiny-random", seed=0, n_rollouts=1, n_epochs=1)
    >>> _ = agent.learn(20, callback=CheckpointCallback(save_freq=1, save_path="/tmp/textgym-cb-doctest"))
"""

from __future__ import annotations

import os
from pathlib import Path

from stable_baselines3.common.callbacks import BaseCallback


class CheckpointCallback(BaseCallback):
    """Save ``save_path/checkpoint-<updates>`` every ``save_freq`` updates and when training ends.

    Args:
        save_freq: updates between saves (SB3's counts ``env.step()`` calls; one update here is a whole
            batch of episodes, so updates are the unit that means something).
        save_path: the run directory (created if needed).
        keep: checkpoints kept in it, newest first (older ones are deleted after each save).
        verbose: 1 prints each save's path.
    """

    def __init__(self, save_freq: int, save_path: str | os.PathLike[str], keep: int = 2, verbose: int = 0) -> None:
        super().__init__(verbose)
        for name, value in (("save_freq", save_freq), ("keep", keep)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.save_freq = save_freq
        self.save_path = Path(save_path)
        self.keep = keep
        self.saved_at: int | None = None  # n_updates of the last save

    def _init_callback(self) -> None:
        self.save_path.mkdir(parents=True, exist_ok=True)
        self.saved_at = int(getattr(self.model, "n_updates", 0))  # never re-save the state it started from

    def _save(self) -> None:
        updates = int(getattr(self.model, "n_updates", 0))
        if updates == self.saved_at:
            return
        path = self.model.save_checkpoint(self.save_path, self.keep)
        self.saved_at = updates
        if self.verbose >= 1 and path is not None:
            print(f"saved {path}")

    def _on_rollout_start(self) -> None:  # the previous update is done: its state is exactly resumable
        if int(getattr(self.model, "n_updates", 0)) % self.save_freq == 0:
            self._save()

    def _on_step(self) -> bool:
        return True

    def _on_training_end(self) -> None:
        self._save()
