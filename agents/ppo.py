"""TextPPO: PPO for language models with Stable-Baselines3's public API.

One timestep is one generated token.  Each update: collect ``n_rollouts``
lockstep batches of ``num_envs`` episodes (KV-cached sampling), recompute
old/reference log-probs and values of every sequence in one forward pass,
add the per-token KL penalty to the env's rewards, run GAE (gamma, lambda)
without bootstrapping past the end of an episode, whiten the advantages over
generated tokens, then ``n_epochs`` of clipped policy + clipped value loss +
entropy bonus over shuffled mini-batches (gradient accumulation over
micro-batches, gradient clipping, target-KL early stop).

Under ``torchrun`` / ``accelerate launch`` the same code trains data-parallel
(:mod:`agents.distributed`): each rank rolls out ``num_envs`` episodes on its
own shard of the prompts, gradients are averaged over ranks, whitening, the KL
controller, early stops and logged statistics use every rank's data, and only
rank 0 logs, runs callbacks and saves.  ``total_timesteps`` counts the tokens
of all ranks; ``num_envs``, ``batch_size`` and ``micro_batch_size`` are per rank.

Example:
    >>> import gymnasium as gym, textgym
    >>> from agents import TextPPO
    >>> env = gym.make_vec("textgym/Copy-v0", num_envs=8, model="tiny-random")
    >>> agent = TextPPO("LMPolicy", env, model="tiny-random", learning_rate=1e-3, seed=0, verbose=0)
    >>> agent = agent.learn(total_timesteps=50)
    >>> agent.num_timesteps >= 50
    True
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, ConvertCallback
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.utils import configure_logger

try:  # SB3 >= 2.6
    from stable_baselines3.common.utils import FloatSchedule as _schedule
except ImportError:  # pragma: no cover
    from stable_baselines3.common.utils import get_schedule_fn as _schedule

from agents.buffers import SequenceBatch
from agents.config import TextPPOConfig
from agents.distributed import Distributed
from agents.interrupts import GracefulStop
from agents.kl import KLController, kl_estimate, make_kl_controller
from agents.losses import (
    at_last_token,
    clipped_policy_loss,
    clipped_value_loss,
    explained_variance,
    gae,
    masked_mean,
    token_rewards,
)
from agents.policies import LMPolicy, disable_dropout, lm_vocab_size, load_causal_lm
from agents.rollout import generate_batch
from textgym.errors import ModelError
from textgym.models import default_model
from textgym.vector import TextVectorEnv

POLICIES: dict[str, type[LMPolicy]] = {"LMPolicy": LMPolicy}


def resolve_policy(policy: str | type[LMPolicy]) -> type[LMPolicy]:
    """``"LMPolicy"`` or an LMPolicy subclass; anything else raises with the allowed names."""
    if isinstance(policy, str):
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; allowed: {sorted(POLICIES)} or an LMPolicy subclass")
        return POLICIES[policy]
    if isinstance(policy, type) and issubclass(policy, LMPolicy):
        return policy
    raise TypeError(f"policy must be one of {sorted(POLICIES)} or an LMPolicy subclass, got {policy!r}")


def wrap_env(env: Any) -> TextVectorEnv:
    """The agent's vector env: a TextVectorEnv as is, a single TextEnv as a 1-slot TextVectorEnv."""
    if isinstance(env, TextVectorEnv):
        if env.autoreset_mode.value == "Disabled":
            raise ValueError(
                "TextPPO steps finished slots with a placeholder until the whole batch ends; use "
                "autoreset_mode='NextStep' (default) or 'SameStep', got 'Disabled'"
            )
        return env
    if isinstance(env, gym.vector.VectorEnv):
        raise TypeError(f"TextPPO needs a textgym TextVectorEnv (gym.make_vec('textgym/...')), got {type(env).__name__}")
    if isinstance(env, gym.Env):
        if not isinstance(env.action_space, gym.spaces.Discrete):
            raise TypeError(
                f"TextPPO needs a Discrete action space (one token id per step); the env has {env.action_space}"
            )
        spec = env.unwrapped.spec
        setup = getattr(env.unwrapped, "setup", None)
        if setup is None:
            raise TypeError(f"TextPPO needs a textgym env (gym.make('textgym/...')), got {type(env.unwrapped).__name__}")
        if spec is None:
            raise ValueError("a single TextEnv must come from gym.make(id, ...) so that it can be vectorised")
        return TextVectorEnv(num_envs=1, **spec.kwargs)
    raise TypeError(f"env must be a textgym env or vector env, got {type(env).__name__}")


class TextPPO:
    """PPO for a causal LM on textgym envs (see the module docstring).

    Args:
        policy: ``"LMPolicy"`` or an LMPolicy subclass.
        env: ``gym.make_vec(id, num_envs=N)`` (or a single ``gym.make(id)`` env, wrapped).
        model: model spec (alias, path, hub id) or a ``PreTrainedModel``; None = the env's model.
        policy_kwargs: extra LMPolicy arguments.
        tensorboard_log: folder for TensorBoard logs (None = off).
        verbose: 0 silent, 1 log table on stdout.
        seed: seeds sampling, env resets and mini-batch order (all saved with the agent).
        device: "auto", "cpu", "cuda", ...
        **kwargs: :class:`~agents.config.TextPPOConfig` fields (learning_rate, kl_coef, ...).
    """

    def __init__(
        self,
        policy: str | type[LMPolicy],
        env: Any,
        model: Any = None,
        *,
        policy_kwargs: dict[str, Any] | None = None,
        tensorboard_log: str | None = None,
        verbose: int = 1,
        seed: int | None = None,
        device: str | torch.device = "auto",
        _init_setup: bool = True,
        **kwargs: Any,
    ) -> None:
        unknown = sorted(set(kwargs) - set(TextPPOConfig.names()))
        if unknown:
            raise TypeError(f"unknown TextPPO argument(s) {unknown}; allowed: {TextPPOConfig.names()}")
        self.config = TextPPOConfig(**kwargs)
        self.policy_class = resolve_policy(policy)
        self.env = wrap_env(env)
        self.model_spec = model if model is not None else (self.env.setup.model or default_model())
        self.policy_kwargs = dict(policy_kwargs or {})
        self.tensorboard_log = tensorboard_log
        self.verbose = verbose
        self.seed = seed
        self.dist = Distributed.from_env(device)  # torchrun / accelerate launch: join the group; else one process
        self.device = self.dist.device
        self.dist.shard_env(self.env)
        if self.env.num_envs % self.config.group_size:
            raise ValueError(
                f"group_size={self.config.group_size} must divide the env's num_envs={self.env.num_envs} "
                "(each rollout holds num_envs // group_size prompts, group_size completions each)"
            )
        self.num_timesteps = 0
        self.n_updates = 0
        self.stopped_by_signal = False
        self._nonfinite_streak = 0  # updates in a row with non-finite rewards or losses
        self._nonfinite_reason = ""
        self._total_timesteps = 0
        self._n_calls = 0
        self.history: list[dict[str, float]] = []
        self._logger: Logger | None = None
        self.lr_schedule = _schedule(self.config.learning_rate)
        self._torch_gen = torch.Generator(device="cpu")
        self._torch_gen.manual_seed(0 if seed is None else seed)
        self._np_rng = self.dist.decorrelate(self._torch_gen, np.random.default_rng(seed))
        if _init_setup:
            self._setup_model(self.model_spec)

    # -- construction -----------------------------------------------------------
    def _setup_model(self, model: Any, reference: torch.nn.Module | None = None) -> None:
        if self.seed is not None:
            torch.manual_seed(self.seed)
        lm = load_causal_lm(model)
        env_vocab = self.env.setup.vocab_size
        if lm_vocab_size(lm) != env_vocab:
            raise ModelError(
                f"vocabulary mismatch: env {self.env.setup.model or 'default'!r} has a tokenizer of {env_vocab} tokens, "
                f"model {self._model_name(model)!r} an LM head of {lm_vocab_size(lm)} "
                f"(config.vocab_size={getattr(lm.config, 'vocab_size', '?')}); build the env with the same model: "
                f"gym.make_vec(id, model={self._model_name(model)!r})"
            )
        cfg = self.config
        if cfg.lora:
            self.reference = None  # the base model with adapters disabled
        else:
            self.reference = (reference if reference is not None else copy.deepcopy(lm)).requires_grad_(False).eval()
            disable_dropout(self.reference)
        kwargs = {
            "separate_critic": cfg.separate_critic,
            "temperature": cfg.temperature,
            "top_k": cfg.top_k,
            "top_p": cfg.top_p,
            "action_mask": self.env.setup.action_mask,
            "lora": cfg.lora,
            "gradient_checkpointing": cfg.gradient_checkpointing,
            **self.policy_kwargs,
        }
        self.policy = self.policy_class(
            self.env.single_observation_space, self.env.single_action_space, self.lr_schedule, lm, **kwargs
        ).to(self.device)
        if self.reference is not None:
            self.reference.to(self.device)
        self.dist.broadcast_module(self.policy)  # every rank starts from rank 0's weights
        self.dist.broadcast_module(self.reference)
        self.kl_ctl: KLController = make_kl_controller(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon)

    @staticmethod
    def _model_name(model: Any) -> str:
        if isinstance(model, torch.nn.Module):
            return getattr(getattr(model, "config", None), "_name_or_path", type(model).__name__)
        return str(model)

    # -- SB3 plumbing -------------------------------------------------------------
    @property
    def logger(self) -> Logger:
        if self._logger is None:
            if self.dist.is_main:
                self._logger = configure_logger(self.verbose, self.tensorboard_log, "TextPPO", True)
            else:
                self._logger = Logger(folder=None, output_formats=[])  # only rank 0 logs
        return self._logger

    def set_logger(self, logger: Logger) -> None:
        """Use a custom SB3 logger (``stable_baselines3.common.logger.configure(folder, formats)``); rank 0 only."""
        self._logger = logger if self.dist.is_main else Logger(folder=None, output_formats=[])

    def get_env(self) -> TextVectorEnv:
        return self.env

    def get_vec_normalize_env(self) -> None:
        return None

    @property
    def n_envs(self) -> int:
        return self.env.num_envs

    def _autocast(self) -> Callable[[], Any] | None:
        bf16 = self.config.bf16 if self.config.bf16 is not None else self.device.type == "cuda"
        if not bf16:
            return None
        return lambda: torch.autocast(self.device.type, dtype=torch.bfloat16)

    def _ctx(self) -> Any:
        factory = self._autocast()
        return factory() if factory is not None else contextlib.nullcontext()

    # -- learning ---------------------------------------------------------------------
    def learn(
        self,
        total_timesteps: int,
        callback: Any = None,
        log_interval: int = 1,
        tb_log_name: str = "TextPPO",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
        save_dir: str | os.PathLike[str] | None = None,
        save_every: int | None = None,
        keep_checkpoints: int = 2,
    ) -> TextPPO:
        """Train until ``total_timesteps`` more tokens have been generated (SB3 semantics).

        ``callback``: an SB3 callback, a list of them, or a function ``f(locals, globals) -> bool``.
        ``save_dir``: a run directory; ``checkpoint-<updates>`` is saved there every ``save_every``
        updates, on SIGINT/SIGTERM (the current update is finished first, then ``learn`` returns)
        and at the end, keeping the ``keep_checkpoints`` newest.  ``TextPPO.load(save_dir)`` resumes
        from the newest valid one.  Updates whose rewards or losses are not finite are skipped with a
        warning; ``max_nonfinite_updates`` of them in a row raise :class:`NonFiniteError`.
        """
        if isinstance(total_timesteps, bool) or not isinstance(total_timesteps, (int, np.integer)) or total_timesteps <= 0:
            raise ValueError(f"total_timesteps must be a positive integer (generated tokens), got {total_timesteps!r}")
        if save_every is not None and (isinstance(save_every, bool) or not isinstance(save_every, int) or save_every < 1):
            raise ValueError(f"save_every must be a positive integer (updates) or None, got {save_every!r}")
        if save_every is not None and save_dir is None:
            raise ValueError("save_every needs save_dir= (the run directory the checkpoints go to)")
        if reset_num_timesteps:
            self.num_timesteps = 0
        self._total_timesteps = int(total_timesteps) + self.num_timesteps
        self._start_timesteps = self.num_timesteps
        cb = self._init_callback(callback if self.dist.is_main else None)  # callbacks (eval, saves) on rank 0 only
        bar = None
        if progress_bar and self.dist.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(total=int(total_timesteps), unit="tok")
        cb.on_training_start(locals(), globals())
        self.stopped_by_signal = False  # True when SIGINT/SIGTERM ended this call (callers looping on learn stop too)
        with GracefulStop() as stop:
            while self.num_timesteps < self._total_timesteps:
                started = time.perf_counter()
                before = self.num_timesteps
                cb.on_rollout_start()
                batch = self._collect(cb)
                if batch is None:
                    break
                cb.on_rollout_end()
                rollout_s = time.perf_counter() - started
                stats = self._update(batch)
                stats["time/rollout_s"] = rollout_s
                stats["time/update_s"] = time.perf_counter() - started - rollout_s
                stats["time/tokens_per_s"] = (self.num_timesteps - before) / max(time.perf_counter() - started, 1e-9)
                self._record(stats, log_interval)
                if bar is not None:
                    bar.update(self.num_timesteps - before)
                if self._nonfinite_streak >= self.config.max_nonfinite_updates:
                    self._stop_nonfinite(save_dir, keep_checkpoints)
                stopping, _ = self.dist.reduce_flags_and_sums(stop.requested, [])  # a signal to any rank stops all
                if save_dir is not None and (stopping or (save_every and self.n_updates % save_every == 0)):
                    self.save_checkpoint(save_dir, keep_checkpoints)
                if stopping:
                    self.stopped_by_signal = True
                    self.logger.log(f"TextPPO: stopped by a signal after update {self.n_updates}")
                    break
        if save_dir is not None:
            self.save_checkpoint(save_dir, keep_checkpoints)  # a no-op when this update is already saved
        if bar is not None:
            bar.close()
        cb.on_training_end()
        return self

    def save_checkpoint(self, save_dir: str | os.PathLike[str], keep: int = 2) -> Path | None:
        """Save ``save_dir/checkpoint-<updates>`` (rank 0 only) and keep the ``keep`` newest; its path."""
        from agents.persistence import save_checkpoint

        return save_checkpoint(self, save_dir, keep) if self.dist.is_main else None

    def _stop_nonfinite(self, save_dir: str | os.PathLike[str] | None, keep: int) -> None:
        """K updates in a row were non-finite: save the (never-updated-with-NaN) weights and raise."""
        from agents.persistence import NonFiniteError, list_checkpoints

        n = self._nonfinite_streak
        where = "no save_dir was given; the agent's weights were never updated with non-finite values"
        if save_dir is not None:
            try:
                self.save_checkpoint(save_dir, keep)
            except NonFiniteError:  # weights went bad some other way: the older checkpoints stay
                pass
            good = list_checkpoints(save_dir)
            where = f"last good checkpoint: {good[-1]}" if good else f"no checkpoint in {str(save_dir)!r}"
        raise NonFiniteError(
            f"{n} updates in a row had non-finite rewards or losses (last: {self._nonfinite_reason}); training "
            f"stopped at update {self.n_updates}, {self.num_timesteps} tokens ({where}). Lower learning_rate, "
            "check the reward function, or raise max_nonfinite_updates."
        )

    def _init_callback(self, callback: Any) -> BaseCallback:
        if isinstance(callback, list):
            callback = CallbackList(callback)
        elif callback is None:
            callback = CallbackList([])
        elif not isinstance(callback, BaseCallback):
            callback = ConvertCallback(callback)
        callback.init_callback(self)  # type: ignore[arg-type]
        return callback

    def _collect(self, callback: BaseCallback) -> SequenceBatch | None:
        batches = []
        before, local_tokens, aborted = self.num_timesteps, 0, False
        for _ in range(self.config.n_rollouts):
            obs, _ = self.env.reset(seed=int(self._np_rng.integers(2**31 - 1)), options=self._group_options())
            self.policy.set_training_mode(False)

            def on_step(local: dict[str, Any]) -> bool:
                nonlocal local_tokens
                n = int(local["live"].sum())
                local_tokens += n
                self.num_timesteps += n * self.dist.world_size  # an estimate while ranks generate; exact below
                callback.update_locals(local)
                return bool(callback.on_step())

            batch = generate_batch(
                self.policy, self.env, obs, generator=self._torch_gen, on_step=on_step, autocast=self._autocast()
            )
            if batch is None:
                aborted = True
                break
            batches.append(batch)
        if self.dist.enabled:  # the global token count; a callback that stops rank 0 stops every rank
            aborted, (tokens,) = self.dist.reduce_flags_and_sums(aborted, [local_tokens])
            self.num_timesteps = before + int(tokens)
        return None if aborted else SequenceBatch.concat(batches)

    def _group_options(self) -> dict[str, Any] | None:
        """Reset options that give each drawn prompt ``group_size`` consecutive slots (None: one each)."""
        g = self.config.group_size
        if g == 1:
            return None
        picks = self._np_rng.integers(len(self.env.setup.samples), size=self.env.num_envs // g)
        return {"index": np.repeat(picks, g).tolist()}

    def _chunks(self, n: int) -> list[slice]:
        size = self.config.micro_batch_size or self.config.batch_size or n
        return [slice(i, min(i + size, n)) for i in range(0, n, size)]

    @torch.no_grad()
    def reference_logprobs(self, ids: torch.Tensor, mask: torch.Tensor, prompt_len: int) -> torch.Tensor:
        """Log-probs of the generated tokens under the frozen reference (same sampling transform)."""
        if self.reference is None:  # LoRA: the base model is the reference
            with self.policy.lm.disable_adapter(), self._ctx():
                logp, _, _ = self.policy.sequence_forward(ids, mask, prompt_len, with_values=False)
            return logp
        policy_lm = self.policy.lm
        self.policy.lm = self.reference  # same filters and forward path, other weights
        try:
            with self._ctx():
                logp, _, _ = self.policy.sequence_forward(ids, mask, prompt_len, with_values=False)
        finally:
            self.policy.lm = policy_lm
        return logp

    @torch.no_grad()
    def _prepare(self, batch: SequenceBatch) -> dict[str, float]:
        """Old log-probs, reference log-probs, values, rewards, advantages and returns of a rollout."""
        cfg, P = self.config, batch.prompt_len
        # The rollout recorded the old log-probs and values (KV-cached, fp32: equal to a full forward
        # up to rounding).  Under bf16 autocast the two round differently, so PPO's ratio would not
        # start at 1: recompute them with the forward the update uses.
        recompute = batch.old_logp is None or batch.values is None or self._autocast() is not None
        old_logp, ref_logp, values = [], [], []
        for sl in self._chunks(len(batch)):
            ids, mask = batch.input_ids[sl], batch.attention_mask[sl]
            if recompute:
                with self._ctx():
                    logp, _, val = self.policy.sequence_forward(ids, mask, P)
                old_logp.append(logp)
                values.append(val.float())
            ref_logp.append(self.reference_logprobs(ids, mask, P))
        gen_mask = batch.gen_mask
        if recompute:
            batch.old_logp, batch.values = torch.cat(old_logp), torch.cat(values)
        batch.ref_logp = torch.cat(ref_logp)
        batch.values = batch.values * gen_mask
        kl = kl_estimate(batch.old_logp, batch.ref_logp, cfg.kl_estimator)
        env_rewards = batch.env_rewards.float()
        group_stats: dict[str, torch.Tensor] = {}
        if cfg.group_size > 1:  # rows [k*g, (k+1)*g) share a prompt (rollouts of num_envs rows, g | num_envs)
            scores = batch.scores.float().view(-1, cfg.group_size)
            baseline = (scores.sum(1, keepdim=True) - scores) / (cfg.group_size - 1)  # leave-one-out mean
            env_rewards = env_rewards + at_last_token(-baseline.reshape(-1), gen_mask)
            group_stats["rollout/group_score_std"] = scores.std(1)
        if cfg.missing_eos_penalty is not None:
            penalty = torch.where(batch.ended_with_eos, 0.0, -cfg.missing_eos_penalty).float()
            env_rewards = env_rewards + at_last_token(penalty, gen_mask)
        batch.rewards = token_rewards(env_rewards, kl, gen_mask, self.kl_ctl.value)
        advantages, batch.returns = gae(batch.rewards, batch.values, gen_mask, cfg.gamma, cfg.gae_lambda)
        batch.advantages = self.dist.masked_whiten(advantages, gen_mask) if cfg.whiten_advantages else advantages
        k1 = torch.where(gen_mask, batch.old_logp - batch.ref_logp, 0.0)
        metrics: dict[str, list[float]] = {}
        for info in batch.infos:
            for name, value in (info.get("metrics") or {}).items():
                metrics.setdefault(name, []).append(float(value))
        # means over every rank's episodes (plain local means with one process)
        stats = self.dist.means(
            {
                "rollout/ep_rew_mean": batch.scores,
                "rollout/ep_len_mean": batch.lengths.float(),
                "rollout/eos_fraction": batch.ended_with_eos.float(),
                "rollout/kl_ref": k1.sum(1),
                "rollout/kl_penalty_mean": (-self.kl_ctl.value * kl, gen_mask),
                **{f"rollout/{name}_mean": values_ for name, values_ in metrics.items()},
                **group_stats,
            }
        )
        stats["train/kl_coef"] = float(self.kl_ctl.value)
        self.kl_ctl.update(stats["rollout/kl_ref"], self.dist.sum_int(len(batch)))
        return stats

    def _update(self, batch: SequenceBatch) -> dict[str, float]:
        """One PPO update on a rollout: prepare, then n_epochs over mini-batches.

        Non-finite values never reach the weights: a rollout with a NaN/inf reward skips the
        whole update, a mini-batch whose loss or gradient norm is not finite skips its step.
        """
        cfg, P = self.config, batch.prompt_len
        bad_episodes = int((~torch.isfinite(batch.env_rewards.float())).any(dim=1).sum())
        _, (bad_episodes,) = self.dist.reduce_flags_and_sums(False, [bad_episodes])
        if bad_episodes:
            self._note_nonfinite(f"{int(bad_episodes)} episode(s) with a non-finite reward in the rollout; update skipped")
            nan = float("nan")  # the rollout's means are undefined; NaN keeps every history entry's keys
            return {"rollout/ep_rew_mean": nan, "rollout/ep_len_mean": nan, "rollout/kl_ref": nan,
                    "train/nonfinite_episodes": float(bad_episodes), "train/skipped_update": 1.0}  # fmt: skip
        stats = self._prepare(batch)
        lr = self.lr_schedule(1.0 - (self.num_timesteps - 0) / max(self._total_timesteps, 1))
        for group in self.policy.optimizer.param_groups:
            group["lr"] = lr
        self.policy.set_training_mode(True)
        params = [p for p in self.policy.parameters() if p.requires_grad]
        log: dict[str, list[float]] = {k: [] for k in ("pg", "vf", "ent", "clip", "akl", "vclip", "gnorm")}
        skipped, nonfinite, stopped, epochs_done = 0, 0, False, 0
        batch_size = cfg.batch_size or len(batch)
        for _epoch in range(cfg.n_epochs):
            for index in batch.minibatches(batch_size, self._torch_gen, cfg.group_size):
                mb = batch.select(index)
                n_tok = self.dist.sum(mb.gen_mask.sum()).clamp(min=1)  # the mini-batch's tokens on every rank
                self.policy.optimizer.zero_grad(set_to_none=True)
                parts: dict[str, float] = dict.fromkeys(("pg", "vf", "ent", "clip", "akl", "vclip"), 0.0)
                exploded = not_finite = False
                for sl in self._chunks(len(mb)) if cfg.micro_batch_size else [slice(0, len(mb))]:
                    mask = mb.gen_mask[sl]
                    with self._ctx():
                        logp, entropy, values = self.policy.sequence_forward(mb.input_ids[sl], mb.attention_mask[sl], P)
                    pol = clipped_policy_loss(logp, mb.old_logp[sl], mb.advantages[sl], mask, cfg.clip_range)
                    vloss, vclip = clipped_value_loss(values, mb.values[sl], mb.returns[sl], mask, cfg.clip_range_vf)
                    ent = masked_mean(entropy, mask)
                    weight = mask.sum() / n_tok
                    # x world_size: the gradient all-reduce averages, so the sum over ranks is a global token mean
                    loss = (pol.loss + cfg.vf_coef * vloss - cfg.ent_coef * ent) * (weight * self.dist.world_size)
                    ratio, loss_value = torch.stack([pol.ratio_mean.detach(), loss.detach()]).float().tolist()
                    if not (math.isfinite(ratio) and math.isfinite(loss_value)):
                        not_finite = True
                        break
                    if ratio > cfg.ratio_threshold:
                        exploded = True
                        break
                    loss.backward()
                    w = float(weight)
                    for key, val in (("pg", pol.loss), ("vf", vloss), ("ent", ent), ("clip", pol.clip_fraction),
                                     ("akl", pol.approx_kl), ("vclip", vclip)):  # fmt: skip
                        parts[key] += float(val.detach()) * w
                if self.dist.enabled:  # one decision for all ranks: any rank's bad mini-batch skips everywhere
                    exploded, sums = self.dist.reduce_flags_and_sums(exploded, [*parts.values(), float(not_finite)])
                    parts, not_finite = dict(zip(parts, sums[:-1])), sums[-1] > 0
                if exploded or not_finite:
                    self.policy.optimizer.zero_grad(set_to_none=True)
                    if not_finite:
                        nonfinite += 1
                    else:
                        skipped += 1
                        self.logger.log(f"TextPPO: skipped a mini-batch whose importance ratios exploded (update {self.n_updates})")
                    continue
                self.dist.all_reduce_gradients(params)
                gnorm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                if not torch.isfinite(gnorm):  # the same reduced gradients on every rank: the same decision
                    self.policy.optimizer.zero_grad(set_to_none=True)
                    nonfinite += 1
                    continue
                self.policy.optimizer.step()
                for key, val in parts.items():
                    log[key].append(val)
                log["gnorm"].append(float(gnorm))
                if cfg.target_kl is not None and parts["akl"] > 1.5 * cfg.target_kl:
                    stopped = True
                    break
            epochs_done += 1
            if stopped:
                break
        if nonfinite:
            self._note_nonfinite(f"{nonfinite} mini-batch step(s) with a non-finite loss or gradient skipped")
            if not log["gnorm"]:  # not one step taken: the update is skipped as a whole
                self.policy.set_training_mode(False)
                return {**stats, "train/nonfinite_minibatches": float(nonfinite), "train/skipped_update": 1.0}
        else:
            self._nonfinite_streak = 0
        self.policy.set_training_mode(False)
        self.n_updates += 1
        mask = batch.gen_mask
        stats.update(
            {
                "train/policy_gradient_loss": _mean(log["pg"]),
                "train/value_loss": _mean(log["vf"]),
                "train/entropy": _mean(log["ent"]),
                "train/entropy_loss": -_mean(log["ent"]),
                "train/clip_fraction": _mean(log["clip"]),
                "train/approx_kl": _mean(log["akl"]),
                "train/value_clip_fraction": _mean(log["vclip"]),
                "train/grad_norm": _mean(log["gnorm"]),
                "train/explained_variance": explained_variance(batch.values, batch.returns, mask),
                "train/skipped_minibatches": float(skipped),
                "train/nonfinite_minibatches": float(nonfinite),
                "train/early_stop_epoch": float(epochs_done if stopped else -1),
                "train/learning_rate": float(lr),
                "train/clip_range": cfg.clip_range,
                "train/n_updates": float(self.n_updates),
            }
        )
        return stats

    def _note_nonfinite(self, reason: str) -> None:
        self._nonfinite_streak += 1
        self._nonfinite_reason = reason
        warnings.warn(
            f"TextPPO update {self.n_updates}: {reason} "
            f"({self._nonfinite_streak} update(s) in a row; stopping at {self.config.max_nonfinite_updates})",
            RuntimeWarning,
            stacklevel=3,
        )

    def _record(self, stats: dict[str, float], log_interval: int) -> None:
        stats["time/total_timesteps"] = float(self.num_timesteps)
        self.history.append(dict(stats))
        if len(self.history) > self.config.history_size:  # thin out: the newest and every other one before it
            self.history = self.history[::-2][::-1]
        for key, value in stats.items():
            self.logger.record(key, value)
        if log_interval and self.n_updates % log_interval == 0:
            self.logger.dump(step=self.num_timesteps)

    # -- inference ---------------------------------------------------------------------
    def predict(
        self,
        observation: dict[str, np.ndarray],
        state: Any = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, Any]:
        """SB3's ``predict``: the next token of each observation (action mask and temperature applied)."""
        return self.policy.predict(observation, state, episode_start, deterministic)

    @torch.no_grad()
    def generate(
        self,
        prompts: list[str],
        max_new_tokens: int | None = None,
        deterministic: bool = False,
        chat: bool | None = None,
    ) -> list[str]:
        """Complete raw prompt strings with the policy's sampling distribution.

        ``chat`` (default: the env task's setting) wraps each prompt in the tokenizer's chat template.
        """
        from agents.generation import generate_texts

        return generate_texts(self, prompts, max_new_tokens, deterministic, chat)

    # -- persistence ---------------------------------------------------------------------
    def save(self, path: str) -> None:
        """Write an HF checkpoint dir (+ value head, optimizer, KL controller, RNGs, counters) atomically."""
        from agents.persistence import save_agent

        if not self.dist.is_main:  # under torchrun / accelerate launch only rank 0 writes (same weights everywhere)
            return
        save_agent(self, path)

    @classmethod
    def load(cls, path: str, env: Any = None, device: str | torch.device = "auto", **kwargs: Any) -> TextPPO:
        """Rebuild an agent saved with :meth:`save`; ``learn(..., reset_num_timesteps=False)`` continues exactly."""
        from agents.persistence import load_agent

        return load_agent(cls, path, env=env, device=device, **kwargs)


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


__all__ = ["TextPPO", "POLICIES", "resolve_policy", "wrap_env"]
