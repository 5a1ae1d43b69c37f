"""Callbacks for the text agents, where SB3 users look for them (``stable_baselines3.common.callbacks``).

* :class:`TextEvalCallback` (:mod:`agents.common.eval_callback`): greedy evaluation on a validation
  split every N updates, logged as ``eval/*`` in that update's row, the best agent kept as a checkpoint;
* :class:`CheckpointCallback` (:mod:`agents.common.checkpoint_callback`): ``checkpoint-<updates>``
  folders in a run directory every N updates.

Each lives in its own module; this one only re-exports them.
"""

from __future__ import annotations

from agents.common.checkpoint_callback import CheckpointCallback
from agents.common.eval_callback import TextEvalCallback, update_end

__all__ = ["CheckpointCallback", "TextEvalCallback", "update_end"]
