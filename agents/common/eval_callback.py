"""Evaluation between updates (:class:`TextEvalCallback`) and the engine's ``on_update_end`` event.

The engine (``OnPolicyAlgorithm.learn``) calls the ``on_update_end()`` of each callback that has one (in a
``CallbackList`` too, see :func:`update_end`) after an update's statistics are recorded and before its
row is written, so what such a callback logs lands in that update's row; returning False stops training
after the update (a checkpoint is saved when ``learn`` has a ``save_dir``).

:class:`TextEvalCallback` is SB3's ``EvalCallback`` for text envs: every ``eval_every`` updates it
scores the policy greedily on the first ``n_eval_episodes`` samples of a validation split, logs
``eval/mean_reward``, ``eval/mean_ep_length`` and ``eval/<metric>`` (each ``info["metrics"]`` entry),
and keeps the best agent so far as a normal checkpoint folder (``best_model_save_path``; ``Algo.load``
reads it).  ``textgym train --eval-every N --eval-episodes M`` uses it with ``<run dir>/best``.
Also importable from :mod:`agents.common.callbacks`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, EvalCallback, EventCallback


def _walk(callback: BaseCallback) -> Iterator[BaseCallback]:
    yield callback
    if isinstance(callback, CallbackList):
        for child in callback.callbacks:
            yield from _walk(child)


def update_end(callback: BaseCallback | None) -> bool:
    """Call ``on_update_end()`` of every callback that has one; False when one of them returns False."""
    go_on = True
    for cb in _walk(callback) if callback is not None else ():
        hook = getattr(cb, "on_update_end", None)
        if callable(hook) and hook() is False:
            go_on = False
    return go_on


class TextEvalCallback(EvalCallback):
    """SB3's ``EvalCallback`` for text agents: greedy evaluation between updates, best checkpoint kept.

    Args:
        eval_env: a TextVectorEnv (``gym.make_vec(id, split="validation", model=...)``) or a single TextEnv;
            None: the training env's task and settings on its ``validation`` split.
        eval_every: evaluate after every ``eval_every``-th update (SB3's ``eval_freq``, in updates here).
        n_eval_episodes: the first N samples of the eval env's split, each once
            (:func:`agents.evaluation.evaluate_policy_on_env`).
        best_model_save_path: a folder that receives the best agent so far by ``eval/mean_reward``: a
            normal checkpoint (``TextPPO.load(path)``) plus ``eval.json`` (its scores; a resumed run keeps
            a new best only above it).  None: not saved.
        callback_on_new_best, callback_after_eval, deterministic, verbose: as in SB3's ``EvalCallback``
            (``StopTrainingOnRewardThreshold`` and ``StopTrainingOnNoModelImprovement`` work).
        num_envs: batch size of the default eval env (default: min(n_eval_episodes, 16)).  seed: of the eval resets.
    """

    def __init__(
        self,
        eval_env: Any = None,
        eval_every: int = 1,
        n_eval_episodes: int = 32,
        best_model_save_path: str | os.PathLike[str] | None = None,
        callback_on_new_best: BaseCallback | None = None,
        callback_after_eval: BaseCallback | None = None,
        deterministic: bool = True,
        verbose: int = 1,
        num_envs: int | None = None,
        seed: int = 0,
    ) -> None:
        for name, value in (("eval_every", eval_every), ("n_eval_episodes", n_eval_episodes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        # EvalCallback's attributes without its __init__, which wraps the env in a DummyVecEnv
        EventCallback.__init__(self, callback_after_eval, verbose=verbose)
        self.callback_on_new_best = callback_on_new_best
        if callback_on_new_best is not None:
            callback_on_new_best.parent = self
        self.eval_env, self.eval_every, self.eval_freq = eval_env, eval_every, eval_every
        self.n_eval_episodes, self.deterministic, self.render, self.warn = n_eval_episodes, deterministic, False, False
        self.best_model_save_path = None if best_model_save_path is None else os.fspath(best_model_save_path)
        self.log_path, self.num_envs, self.seed = None, num_envs, seed
        self.best_mean_reward = self.last_mean_reward = -np.inf
        self.evaluations_results: list[list[float]] = []
        self.evaluations_timesteps: list[int] = []
        self.evaluations_length: list[list[int]] = []
        self._is_success_buffer: list[bool] = []
        self.evaluations_successes: list[list[bool]] = []
        self.last_result: dict[str, Any] | None = None
        self._evaluated_at = -1

    def _init_callback(self) -> None:  # no "not of the same type" warning: both are TextVectorEnvs
        from agents.common.envs import as_text_vector_env

        if self.eval_env is None:
            self.eval_env = validation_env(self.training_env, self.num_envs or min(self.n_eval_episodes, 16))
        self.eval_env = as_text_vector_env(self.eval_env, type(self).__name__)
        if self.best_model_save_path is not None:
            try:
                scores = json.loads((Path(self.best_model_save_path) / "eval.json").read_text(encoding="utf-8"))
                self.best_mean_reward = float(scores["mean_reward"])
            except (OSError, ValueError, KeyError, TypeError):
                pass  # no best checkpoint yet
        if self.callback_on_new_best is not None:
            self.callback_on_new_best.init_callback(self.model)

    def _on_step(self) -> bool:
        return True  # evaluation happens between updates (on_update_end), not mid-rollout

    def on_update_end(self) -> bool:
        """Evaluate when the update count is a multiple of ``eval_every`` (once per update count)."""
        updates = int(self.model.n_updates)
        if updates == self._evaluated_at or updates % self.eval_every:
            return True
        self._evaluated_at = updates
        from agents.evaluation import evaluate_policy_on_env

        started = time.perf_counter()
        result = evaluate_policy_on_env(self.model.policy, self.eval_env, self.n_eval_episodes,
                                        deterministic=self.deterministic, seed=self.seed)  # fmt: skip
        self.last_result = {k: v for k, v in result.items() if k != "records"}
        rewards = [r["reward"] for r in result["records"]]
        self.evaluations_timesteps.append(self.model.num_timesteps)
        self.evaluations_results.append(rewards)
        self.evaluations_length.append([r["tokens"] for r in result["records"]])
        self.last_mean_reward = mean = float(result["reward_mean"])
        self.logger.record("eval/mean_reward", mean)
        self.logger.record("eval/mean_ep_length", float(result["tokens_mean"]))
        for name, value in result["metrics"].items():
            if name != "reward":
                self.logger.record(f"eval/{name}", float(value))
        self.logger.record("time/eval_s", time.perf_counter() - started)
        if self.verbose >= 1:
            print(f"Eval num_timesteps={self.model.num_timesteps}, update {updates}: mean reward {mean:.4f} "
                  f"+/- {float(np.std(rewards)):.4f} over {result['n']} samples")  # fmt: skip
        go_on = True
        if mean > self.best_mean_reward:
            self.best_mean_reward = mean
            if self.best_model_save_path is not None:
                self._save_best(updates)
            if self.callback_on_new_best is not None:
                go_on = self.callback_on_new_best.on_step()
        if self.callback is not None:
            go_on = self._on_event() and go_on
        return go_on

    def _save_best(self, updates: int) -> None:
        assert self.best_model_save_path is not None and self.last_result is not None
        path = Path(self.best_model_save_path)
        self.model.save(path)
        scores = {"mean_reward": self.best_mean_reward, "n_updates": updates, "num_timesteps": self.model.num_timesteps,
                  **{k: self.last_result[k] for k in ("n", "tokens_mean", "metrics")}}  # fmt: skip
        tmp = path / ".eval.json.tmp"
        tmp.write_text(json.dumps(scores, indent=2), encoding="utf-8")
        os.replace(tmp, path / "eval.json")
        if self.verbose >= 1:
            print(f"New best mean reward {self.best_mean_reward:.4f}: saved {path}")


def validation_env(train_env: Any, num_envs: int) -> Any:
    """The training env's task and settings (model, lengths, ...) on its ``validation`` split."""
    import gymnasium as gym

    spec = getattr(train_env, "spec", None)
    if spec is None or spec.id is None:
        raise ValueError("TextEvalCallback: the training env has no registered id; pass eval_env=")
    kwargs = {k: v for k, v in spec.kwargs.items() if k not in ("task", "num_envs", "vectorization_mode", "split")}
    return gym.make_vec(spec.id, num_envs=num_envs, split="validation", **kwargs)
