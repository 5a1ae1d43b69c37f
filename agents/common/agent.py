"""The public surface every text agent shares with Stable-Baselines3's: logger, env access,
``predict``, ``generate``, ``state_dict`` and ``save``/``load`` (through :mod:`agents.common.persistence`)."""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, ConvertCallback
from stable_baselines3.common.logger import HumanOutputFormat, Logger
from stable_baselines3.common.utils import configure_logger

from agents.common import persistence
from agents.common.decoding import complete, encode_prompts, left_pad
from agents.common.eval_callback import update_end

#: What ``bf16="auto"`` resolves to on each device type where it does not depend on the hardware: off where a
#: TextPPO update of the default model was measured slower in bf16 (benchmarks/bf16_vs_fp32.py).  CUDA (an
#: H200): slower at every size measured -- SmolLM2-135M 0.50x (batch 8) and 0.78x (batch 64), a 1.07B Llama 0.63x
#: (8) and 0.79x (32); these updates are launch-bound and autocast adds a cast kernel per matmul.  The CPU's
#: entry is decided per machine by :func:`cpu_has_native_bf16` (see :func:`auto_bf16`).
AUTO_BF16: dict[str, bool] = {"cuda": False}

#: What a bf16 run costs on a CPU without bf16 instructions, measured (benchmarks/README.md): named in the warning.
EMULATED_BF16_SLOWDOWN = "about 3x slower than fp32 for a TextPPO update"


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware: x86 AVX512-BF16 or AMX, the instructions oneDNN
    (PyTorch's CPU matmul) dispatches bf16 to.  Elsewhere bf16 matmuls are emulated in fp32 arithmetic plus
    conversions: slower than fp32 itself."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def auto_bf16(device: torch.device | str) -> bool:
    """What ``bf16="auto"`` resolves to on ``device``.

    CPU: on where it has native bf16 (:func:`cpu_has_native_bf16`).  Measured there (AVX512-BF16 + AMX, one
    thread): a TextPPO update 1.43-1.49x faster than fp32, the warm start 1.4x; Copy-v0 and the demo's
    configuration learn alike (docs/trainer.md).  Without it bf16 is emulated, :data:`EMULATED_BF16_SLOWDOWN`.
    Other devices: :data:`AUTO_BF16` (off where not measured).
    """
    kind = torch.device(device).type
    if kind == "cpu":
        return cpu_has_native_bf16()
    return AUTO_BF16.get(kind, False)


def use_bf16(setting: bool | str, device: torch.device | str) -> bool:
    """The ``bf16`` config field resolved: True/False as given; ``"auto"``: :func:`auto_bf16`.  ``True`` on a CPU
    without native bf16 warns (it runs, emulated and slower).

    >>> use_bf16(False, torch.device("cpu")), use_bf16("auto", torch.device("cpu")) == cpu_has_native_bf16()
    (False, True)
    """
    if setting == "auto":
        return auto_bf16(device)
    if setting and torch.device(device).type == "cpu" and not cpu_has_native_bf16():
        warnings.warn(
            f"bf16=True on a CPU without bf16 instructions (AVX512-BF16 or AMX): bf16 is emulated there, "
            f"{EMULATED_BF16_SLOWDOWN}; bf16='auto' (the default) picks fp32 on this CPU",
            UserWarning,
            stacklevel=2,
        )
    return bool(setting)


class AgentAPI:
    """Mixed into :class:`~agents.common.on_policy.OnPolicyAlgorithm` (it sets the attributes used here)."""

    _custom_logger = False  # set_logger() was called: learn(save_dir=...) then writes no records of its own

    # -- SB3 plumbing -------------------------------------------------------------
    @property
    def logger(self) -> Logger:
        if self._logger is None:
            if not self.dist.is_main:
                self._logger = Logger(folder=None, output_formats=[])  # only rank 0 logs
            elif self.tensorboard_log is not None:
                self._logger = configure_logger(self.verbose, self.tensorboard_log, type(self).__name__, True)
            else:  # configure_logger's outputs, without the empty SB3-<date> folder SB3 makes in /tmp
                formats = [HumanOutputFormat(sys.stdout)] if self.verbose >= 1 else []
                self._logger = Logger(folder=None, output_formats=formats)
        return self._logger

    def _init_callback(self, callback: Any) -> BaseCallback:
        if isinstance(callback, list):
            callback = CallbackList(callback)
        elif callback is None:
            callback = CallbackList([])
        elif not isinstance(callback, BaseCallback):
            callback = ConvertCallback(callback)
        callback.init_callback(self)  # type: ignore[arg-type]
        return callback

    def _record(self, stats: dict[str, float], log_interval: int, callback: BaseCallback | None = None) -> bool:
        """Log one update's statistics: record them, run the callbacks' ``on_update_end()`` (evaluation,
        whose ``eval/*`` values join this update's row), then dump the row.  False: a callback asks to stop."""
        stats["time/total_timesteps"] = float(self.num_timesteps)
        self.history.append(dict(stats))
        if len(self.history) > self.config.history_size:  # thin out: the newest and every other one before it
            self.history = self.history[::-2][::-1]
        for key, value in stats.items():
            self.logger.record(key, value)
        go_on = update_end(callback)
        if log_interval and self.n_updates % log_interval == 0:
            self.logger.dump(step=self.num_timesteps)
        return go_on

    def set_logger(self, logger: Logger) -> None:
        """Use a custom SB3 logger (``stable_baselines3.common.logger.configure(folder, formats)``); rank 0 only.
        ``learn(save_dir=...)`` then logs to it alone (no ``progress.csv``, TensorBoard or curve of its own)."""
        self._logger = logger if self.dist.is_main else Logger(folder=None, output_formats=[])
        self._custom_logger = True

    def get_env(self) -> Any:
        return self.env

    def get_vec_normalize_env(self) -> None:
        return None

    @property
    def n_envs(self) -> int:
        return self.env.num_envs

    def autocast(self) -> Callable[[], Any] | None:
        """A bf16 autocast factory when bf16 is on (``config.bf16``, see :func:`use_bf16`), else None."""
        bf16 = use_bf16(self.config.bf16, self.device)
        return (lambda: torch.autocast(self.device.type, dtype=torch.bfloat16)) if bf16 else None

    def ctx(self) -> Any:
        factory = self.autocast()
        return factory() if factory is not None else contextlib.nullcontext()

    # -- inference ---------------------------------------------------------------------
    def predict(self, observation: dict[str, np.ndarray], state: Any = None, episode_start: np.ndarray | None = None,
                deterministic: bool = False) -> tuple[np.ndarray, Any]:  # fmt: skip
        """SB3's ``predict``: the next token of each observation (action mask and temperature applied)."""
        return self.policy.predict(observation, state, episode_start, deterministic)

    @torch.no_grad()
    def generate(self, prompts: list[str], max_new_tokens: int | None = None, deterministic: bool = False,
                 chat: bool | None = None) -> list[str]:  # fmt: skip
        """Complete raw prompt strings with the policy's sampling distribution.

        ``chat`` (default: the env task's setting) wraps each prompt in the tokenizer's chat template.
        """
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise TypeError(f"prompts must be a list of strings, got {prompts!r}")
        if not prompts:
            return []
        max_new = self.spec.max_new_tokens if max_new_tokens is None else max_new_tokens
        if isinstance(max_new, bool) or not isinstance(max_new, int) or max_new < 1:
            raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        tokenizer = self.spec.tokenizer
        ids, mask = left_pad(encode_prompts(tokenizer, prompts, self.spec.chat if chat is None else chat), self.spec.pad_id)
        rows = complete(self.policy, ids, mask, max_new, self.spec.eos_id, generator=self.torch_gen,
                        deterministic=deterministic, autocast=self.autocast())  # fmt: skip
        return tokenizer.batch_decode(rows, skip_special_tokens=True)

    # -- persistence ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Counters, random streams and history: with the weights and optimizer, an exact resume."""
        return {
            "num_timesteps": self.num_timesteps,
            "total_timesteps": self.total_timesteps,  # the target of the learn() call in progress
            "total_updates": self.total_updates,  # learn(updates=)'s target, else None
            "n_updates": self.n_updates,
            "torch_rng": torch.get_rng_state(),
            "sampling_rng": self.torch_gen.get_state(),
            "numpy_rng": self.np_rng.bit_generator.state,
            "history": self.history,
            "score_moments": self.score_moments.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.num_timesteps, self.n_updates = int(state["num_timesteps"]), int(state["n_updates"])
        self.total_timesteps = int(state.get("total_timesteps", self.num_timesteps))
        self.total_updates = state.get("total_updates")
        torch.set_rng_state(state["torch_rng"])
        self.torch_gen.set_state(state["sampling_rng"])
        self.np_rng = np.random.default_rng()
        self.np_rng.bit_generator.state = state["numpy_rng"]
        self.np_rng = self.dist.decorrelate(self.torch_gen, self.np_rng)  # ranks > 0: their own streams
        self.history = list(state["history"])
        self.score_moments.load_state_dict(state["score_moments"])

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write an HF checkpoint dir (+ value head, optimizer, training state) atomically; rank 0 only."""
        if self.dist.is_main:
            persistence.save_agent(self, path)

    def save_checkpoint(self, save_dir: str | os.PathLike[str], keep: int = 2) -> Path | None:
        """Save ``save_dir/checkpoint-<updates>`` (rank 0 only) and keep the ``keep`` newest; its path."""
        return persistence.save_checkpoint(self, save_dir, keep) if self.dist.is_main else None

    @classmethod
    def load(cls, path: str | os.PathLike[str], env: Any = None, device: str | torch.device = "auto",
             **overrides: Any) -> Any:  # fmt: skip
        """Rebuild an agent saved with :meth:`save` (or the newest valid checkpoint of a run directory);
        ``learn(..., reset_num_timesteps=False)`` then continues exactly."""
        return persistence.load_agent(cls, path, env=env, device=device, **overrides)
