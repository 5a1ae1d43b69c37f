"""The on-policy engine: what PPO, GRPO, RLOO, NLPO and RAFT share (SB3's ``OnPolicyAlgorithm``).

An algorithm subclasses :class:`OnPolicyAlgorithm`, names its config class and
writes :meth:`~OnPolicyAlgorithm.train`: its advantages, its loss and its epoch
loop.  The engine does everything else the same way for all of them:

* ``learn()``: collect ``n_rollouts`` lockstep rollouts per update (group
  options, seeds, callbacks, token counts over ranks), skip updates with
  non-finite rewards, call ``train``, log, save checkpoints, stop on signals;
* :meth:`prepare`: the reference model's log-probs, the per-token KL estimate
  and the rollout statistics (the old log-probs and values come from the
  rollout; under bf16 they are recomputed with the training forward, and when
  one micro-batch takes the whole batch that forward is also the first step's:
  :meth:`policy_forward`);
* an :class:`~agents.common.update.Updater` for mini-batch optimizer steps;
* ``predict``/``generate``, ``save``/``load`` (through :meth:`state_dict`),
  data parallelism (:mod:`agents.common.distributed`).

One timestep is one generated token (all ranks together).
"""

from __future__ import annotations

import copy
import math
import os
import time
import warnings
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Logger

from agents.common import persistence, records
from agents.common.agent import AgentAPI
from agents.common.buffers import SequenceBatch
from agents.common.config import AUTO_LR_LARGE, AUTO_LR_SMALL, SMALL_MODEL_PARAMS, OnPolicyConfig
from agents.common.distributed import Distributed
from agents.common.envs import as_text_vector_env
from agents.common.interrupts import GracefulStop
from agents.common.kl import kl_estimate
from agents.common.lm import check_vocab, disable_dropout, fp32_attention, load_causal_lm
from agents.common.losses import at_last_token
from agents.common.policies import LMPolicy, resolve_policy
from agents.common.rollout import collect_episodes
from agents.common.running import RunningMoments
from agents.common.update import Totals, Updater
from textgym.models import default_model


class _KeptForward:
    """A policy forward with its graph, kept by :meth:`OnPolicyAlgorithm.prepare` for the first loss."""

    def __init__(self, ids: torch.Tensor, mask: torch.Tensor, prompt_len: int, with_values: bool, outputs: tuple):
        self.ids, self.mask, self.prompt_len, self.with_values, self.outputs = ids, mask, prompt_len, with_values, outputs

    def serves(self, mb: SequenceBatch, with_values: bool) -> bool:
        """Whether ``mb`` is the batch this forward ran on (the same rows in the same order)."""
        return (with_values == self.with_values and mb.prompt_len == self.prompt_len
                and mb.input_ids.shape == self.ids.shape and torch.equal(mb.input_ids, self.ids)
                and torch.equal(mb.attention_mask, self.mask))  # fmt: skip


class OnPolicyAlgorithm(AgentAPI):
    """Base of the text on-policy algorithms (see the module docstring).

    Args:
        policy: ``"LMPolicy"`` (causal LMs), ``"Seq2SeqLMPolicy"`` (encoder-decoders), ``"auto"`` (the one
            that fits the model's config) or an LMPolicy subclass.
        env: ``gym.make_vec(id, num_envs=N)`` (or a single ``gym.make(id)`` env).
        model: model spec (alias, path, hub id) or a ``PreTrainedModel``; None = the env's model.
        config: the algorithm's config object (or a dict of its fields); ``**overrides`` replace fields.
        policy_kwargs: extra LMPolicy arguments.  tensorboard_log: folder for TensorBoard logs.
        verbose: 0 silent (SB3's default), 1 a log table per update.
        seed: seeds sampling, env resets and mini-batch order (all saved with the agent).
        device: "auto", "cpu", "cuda", ...
    """

    name: ClassVar[str] = ""
    config_class: ClassVar[type[OnPolicyConfig]] = OnPolicyConfig
    uses_values: ClassVar[bool] = False  # the algorithm trains a critic (PPO, NLPO)
    # the update's first step is a forward of every rollout row in order (False: the algorithm trains on a subset
    # of them, RAFT's best completions, so prepare keeps no graph for that step)
    trains_on_every_row: ClassVar[bool] = True

    def __init__(
        self,
        policy: str | type[LMPolicy],
        env: Any,
        model: Any = None,
        *,
        config: OnPolicyConfig | dict[str, Any] | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        tensorboard_log: str | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: str | torch.device = "auto",
        init_model: bool = True,
        **overrides: Any,
    ) -> None:
        self.config = self.config_class.build(config, **overrides)
        self.policy_choice = policy
        resolve_policy(policy)  # a bad name fails here, before any model is loaded
        self.env = as_text_vector_env(env, type(self).__name__)
        self.dist = Distributed.from_env(device)  # torchrun / accelerate launch: join the group; else one process
        self.device = self.dist.device
        self.dist.shard_env(self.env)
        self.spec = self.env.text_spec  # after sharding: num_samples is this rank's
        self.model_spec = model if model is not None else (self.spec.model or default_model())
        self.policy_kwargs = dict(policy_kwargs or {})
        self.tensorboard_log, self.verbose, self.seed = tensorboard_log, verbose, seed
        if self.env.num_envs % self.config.group_size:
            raise ValueError(
                f"group_size={self.config.group_size} must divide the env's num_envs={self.env.num_envs} "
                "(each rollout holds num_envs // group_size prompts, group_size completions each)"
            )
        self.n_rollouts = self.config.n_rollouts or max(
            1, math.ceil(self.config.min_episodes / (self.env.num_envs * self.dist.world_size))
        )
        episodes = self.n_rollouts * self.env.num_envs * self.dist.world_size
        if episodes < 16:
            warnings.warn(
                f"{type(self).__name__}: {episodes} episodes per update; with so few the gradient of an end-of-episode "
                f"score is mostly noise (raise n_rollouts or num_envs; n_rollouts=None aims for min_episodes="
                f"{self.config.min_episodes})",
                UserWarning,
                stacklevel=2,
            )
        self.num_timesteps = self.n_updates = self.total_timesteps = 0
        self.total_updates: int | None = None  # learn(updates=N)'s target, else None (the budget is in tokens)
        self.stopped_by_signal = False
        self.nonfinite_streak, self.nonfinite_reason = 0, ""
        self.history: list[dict[str, float]] = []
        self._logger: Logger | None = None
        self.score_moments = RunningMoments()
        self._kept_forward: _KeptForward | None = None  # prepare's forward, for the update's first step
        self.torch_gen = torch.Generator(device="cpu").manual_seed(0 if seed is None else seed)
        self.np_rng = self.dist.decorrelate(self.torch_gen, np.random.default_rng(seed))
        if init_model:
            self.setup_model(self.model_spec)

    # -- construction -----------------------------------------------------------
    def setup_model(self, model: Any, reference: torch.nn.Module | None = None) -> None:
        if self.seed is not None:
            torch.manual_seed(self.seed)
        lm = load_causal_lm(model)
        self.policy_class = self.policy_class_for(lm)
        check_vocab(lm, self.spec.vocab_size, self.spec.model, model)
        cfg = self.config
        if cfg.lora:
            self.reference = None  # the base model with adapters disabled
        else:
            self.reference = (reference if reference is not None else copy.deepcopy(lm)).requires_grad_(False).eval()
            disable_dropout(self.reference)
        lr = cfg.learning_rate
        if lr is None:
            lr = AUTO_LR_SMALL if sum(p.numel() for p in lm.parameters()) < SMALL_MODEL_PARAMS else AUTO_LR_LARGE
        self.learning_rate = lr
        self.lr_schedule = lr if callable(lr) else (lambda _progress: float(lr))
        kwargs = {
            "separate_critic": getattr(cfg, "separate_critic", False),
            "temperature": cfg.temperature,
            "top_k": cfg.top_k,
            "top_p": cfg.top_p,
            "action_mask": self.spec.action_mask,
            "lora": cfg.lora,
            "gradient_checkpointing": cfg.gradient_checkpointing,
            **self.policy_kwargs,
        }
        self.policy = self.policy_class(
            self.env.single_observation_space, self.env.single_action_space, self.lr_schedule, lm, **kwargs
        ).to(self.device)
        if self.reference is not None:
            self.reference.to(self.device)
        if self.autocast() is not None and self.device.type == "cpu":  # bf16 attention backward is slow on CPUs
            for module in (self.policy.lm, self.policy.critic, self.reference):
                fp32_attention(module)
        self.dist.broadcast_module(self.policy)  # every rank starts from rank 0's weights
        self.dist.broadcast_module(self.reference)
        self._setup_algorithm()

    def policy_class_for(self, lm: torch.nn.Module) -> type[LMPolicy]:
        """The policy class that runs ``lm``: the one chosen, or by the model's config for ``"auto"``."""
        cls = resolve_policy(self.policy_choice, lm)
        assert cls is not None  # resolve_policy decides "auto" once it has the model
        return cls

    def _setup_algorithm(self) -> None:
        """Algorithm-specific state built with the model (KL controller, masking policy, ...)."""

    # -- learning ---------------------------------------------------------------------
    def learn(
        self,
        total_timesteps: int | None = None,
        callback: Any = None,
        log_interval: int = 1,
        tb_log_name: str = "",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
        save_dir: str | os.PathLike[str] | None = None,
        save_every: int | None = None,
        keep_checkpoints: int = 2,
        report_to: str | Sequence[str] | None = None,
        updates: int | None = None,
    ) -> OnPolicyAlgorithm:
        """Train until ``total_timesteps`` more tokens have been generated (SB3 semantics), or, given ``updates``
        instead, for that many more updates (a budget that does not depend on how long the answers are; the
        progress bar then counts updates).

        ``callback``: an SB3 callback, a list of them, or a function ``f(locals, globals) -> bool``;
        :class:`~agents.common.eval_callback.TextEvalCallback` evaluates between updates.
        ``save_dir``: a run directory; ``checkpoint-<updates>`` is saved there every ``save_every``
        updates, on SIGINT/SIGTERM (the current update is finished first, then ``learn`` returns)
        and at the end, keeping the ``keep_checkpoints`` newest; ``Algo.load(save_dir)`` resumes
        from the newest valid one.  The run's records go there too, unless :meth:`set_logger` gave a
        logger: ``report_to`` (default ``"csv,tensorboard"``; also ``trackio``, or ``none``) picks
        ``progress.csv`` and TensorBoard events, and ``learning_curve.png`` is redrawn at each checkpoint
        (see :mod:`agents.common.records`; a resumed run appends).  ``progress_bar``: tqdm on stderr
        (tokens/s, ETA, reward, KL).  Updates whose rewards or losses are not finite are skipped with a
        warning; ``max_nonfinite_updates`` of them in a row raise :class:`NonFiniteError`.
        """
        records.check_learn_args(total_timesteps, updates, save_dir, save_every, report_to)
        if reset_num_timesteps:
            self.num_timesteps = 0
        if updates is None:
            self.total_timesteps, self.total_updates = int(total_timesteps) + self.num_timesteps, None
        else:
            self.total_timesteps, self.total_updates = self.num_timesteps, self.n_updates + int(updates)
        cb = self._init_callback(callback if self.dist.is_main else None)  # callbacks (eval, saves) on rank 0 only
        run = records.RunRecords(self, save_dir, report_to, progress_bar)  # rank 0: logger outputs, bar, curve
        self.stopped_by_signal = False  # True when SIGINT/SIGTERM ended this call
        try:
            cb.on_training_start(locals(), globals())
            with GracefulStop(type(self).__name__) as stop:
                while self.progress_remaining() > 0:
                    started, before = time.perf_counter(), self.num_timesteps
                    cb.on_rollout_start()
                    batch = self.collect(cb)
                    if batch is None:
                        break
                    cb.on_rollout_end()
                    rollout_s = time.perf_counter() - started
                    stats = self.checked_train(batch)
                    stats["time/rollout_s"] = rollout_s
                    stats["time/update_s"] = time.perf_counter() - started - rollout_s
                    stats["time/tokens_per_s"] = (self.num_timesteps - before) / max(time.perf_counter() - started, 1e-9)
                    go_on = self._record(stats, log_interval, cb)  # evaluation callbacks log in this update's row
                    run.progress(self.num_timesteps - before, stats)
                    if self.nonfinite_streak >= self.config.max_nonfinite_updates:
                        persistence.stop_nonfinite(self, save_dir, keep_checkpoints)
                    stopping, (halt,) = self.dist.agree(stop.requested, [float(not go_on)])  # any rank's signal stops all
                    if save_dir is not None and (stopping or (save_every and self.n_updates % save_every == 0)):
                        self.save_checkpoint(save_dir, keep_checkpoints)
                        run.saved()
                    if stopping:
                        self.stopped_by_signal = True
                        self.logger.log(f"{type(self).__name__}: stopped by a signal after update {self.n_updates}")
                    if stopping or halt:
                        break
            if save_dir is not None:
                self.save_checkpoint(save_dir, keep_checkpoints)  # a no-op when this update is already saved
            cb.on_training_end()
        finally:
            run.close()  # the last curve; files closed, the agent's own logger back
        return self

    def progress_remaining(self) -> float:
        """SB3's ``progress_remaining`` of the ``learn()`` call in progress: 1 at the start of a run, 0 when its
        budget (``total_timesteps`` tokens, or ``total_updates`` updates) is spent; learning-rate schedules take it."""
        if self.total_updates is not None:
            return 1.0 - self.n_updates / max(self.total_updates, 1)
        return 1.0 - self.num_timesteps / max(self.total_timesteps, 1)

    def collect(self, callback: BaseCallback) -> SequenceBatch | None:
        """``n_rollouts`` lockstep rollouts as one batch (None when a callback stopped training)."""
        batches = []
        before, local_tokens, aborted = self.num_timesteps, 0, False
        for _ in range(self.n_rollouts):
            obs, _ = self.env.reset(seed=int(self.np_rng.integers(2**31 - 1)), options=self._group_options())
            self.policy.set_training_mode(False)

            def on_step(local: dict[str, Any]) -> bool:
                nonlocal local_tokens
                n = int(local["live"].sum())
                local_tokens += n
                self.num_timesteps += n * self.dist.world_size  # an estimate while ranks generate; exact below
                callback.update_locals(local)
                return bool(callback.on_step())

            batch = collect_episodes(self.policy, self.env, obs, generator=self.torch_gen, on_step=on_step,
                                     autocast=self.autocast())  # fmt: skip
            if batch is None:
                aborted = True
                break
            batches.append(batch)
        if self.dist.enabled:  # the global token count; a callback that stops rank 0 stops every rank
            aborted, (tokens,) = self.dist.agree(aborted, [local_tokens])
            self.num_timesteps = before + int(tokens)
        return None if aborted else SequenceBatch.concat(batches)

    def _group_options(self) -> dict[str, Any] | None:
        """Reset options that give each drawn prompt ``group_size`` consecutive slots (None: one each)."""
        g = self.config.group_size
        if g == 1:
            return None
        picks = self.np_rng.integers(self.spec.num_samples, size=self.env.num_envs // g)
        return {"index": np.repeat(picks, g).tolist()}

    def checked_train(self, batch: SequenceBatch) -> dict[str, float]:
        """:meth:`train`, unless a reward is not finite: then the update is skipped (and counted)."""
        bad = int((~torch.isfinite(batch.env_rewards.float())).any(dim=1).sum())
        _, (bad,) = self.dist.agree(False, [bad])
        if bad:
            self.note_nonfinite(f"{int(bad)} episode(s) with a non-finite reward in the rollout; update skipped")
            nan = float("nan")  # the rollout's means are undefined; NaN keeps every history entry's keys
            return {"rollout/ep_rew_mean": nan, "rollout/ep_len_mean": nan, "rollout/kl_ref": nan,
                    "train/nonfinite_episodes": float(bad), "train/skipped_update": 1.0}  # fmt: skip
        lr = self.lr_schedule(self.progress_remaining())
        for group in self.policy.optimizer.param_groups:
            group["lr"] = lr
        try:
            stats = self.train(batch)
        finally:
            self._kept_forward = None  # an update that ended before its first step leaves none behind
            self.policy.set_training_mode(False)
        if stats.get("train/skipped_update"):
            return stats
        if not stats.get("train/nonfinite_minibatches"):
            self.nonfinite_streak = 0
        self.n_updates += 1
        return {**stats, "train/learning_rate": float(lr), "train/n_updates": float(self.n_updates)}

    def train(self, batch: SequenceBatch) -> dict[str, float]:
        """One update on a rollout: the algorithm's advantages, loss and epoch loop."""
        raise NotImplementedError

    def updater(self, group_size: int | None = None) -> Updater:
        """The mini-batch optimizer steps of one update (see :mod:`agents.common.update`); ``group_size``: the
        consecutive rows of one prompt in the batch it will train on (None: the rollout's, ``config.group_size``)."""
        cfg = self.config
        self.policy.set_training_mode(True)  # until the update ends (dropout is off either way)
        params = [p for p in self.policy.parameters() if p.requires_grad]
        return Updater(self.policy.optimizer, params, self.dist, cfg.batch_size, cfg.micro_batch_size,
                       cfg.max_grad_norm, cfg.ratio_threshold, group_size or cfg.group_size, self.torch_gen)  # fmt: skip

    def fit(self, batch: SequenceBatch, n_epochs: int, group_size: int | None = None) -> Updater:
        """``n_epochs`` over the batch's mini-batches, one :meth:`loss` step each (no early stop)."""
        updater = self.updater(group_size)
        for _epoch in range(n_epochs):
            for minibatch in updater.minibatches(batch):
                updater.step(minibatch, self.loss)
        return updater

    def loss(self, mb: SequenceBatch, totals: Totals) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The algorithm's loss of a slice of a mini-batch, as its share (see :mod:`agents.common.update`)."""
        raise NotImplementedError

    def finish(self, updater: Updater, stats: dict[str, float]) -> dict[str, float]:
        """The update's statistics; a warning (and no step counted) when not one step was finite."""
        if updater.nonfinite:
            self.note_nonfinite(f"{updater.nonfinite} mini-batch step(s) with a non-finite loss or gradient skipped")
            if not updater.steps:
                return {**stats, "train/nonfinite_minibatches": float(updater.nonfinite), "train/skipped_update": 1.0}
        if updater.skipped:
            self.logger.log(f"{type(self).__name__}: skipped {updater.skipped} mini-batch(es) whose ratios exploded")
        return {**stats, **updater.stats()}

    def note_nonfinite(self, reason: str) -> None:
        self.nonfinite_streak += 1
        self.nonfinite_reason = reason
        warnings.warn(
            f"{type(self).__name__} update {self.n_updates}: {reason} "
            f"({self.nonfinite_streak} update(s) in a row; stopping at {self.config.max_nonfinite_updates})",
            RuntimeWarning,
            stacklevel=3,
        )

    def _chunks(self, n: int) -> list[slice]:
        size = self.config.micro_batch_size or self.config.batch_size or n
        return [slice(i, min(i + size, n)) for i in range(0, n, size)]

    def _first_step_takes_all(self, n: int) -> bool:
        """Whether the update's first loss is one forward of all ``n`` rows, in order, on the weights of the
        rollout: one mini-batch (whose rows :meth:`SequenceBatch.minibatches` then leaves in order) of one
        micro-batch, i.e. prepare's single chunk.  Gradient checkpointing is left out: prepare's forward would keep
        every activation."""
        return self.trains_on_every_row and len(self._chunks(n)) == 1 and not self.config.gradient_checkpointing

    def policy_forward(self, mb: SequenceBatch, with_values: bool = True) -> tuple:
        """``policy.sequence_forward`` of a slice of a mini-batch, with gradients, for an algorithm's loss.

        The update's first call may return the forward :meth:`prepare` ran for the old log-probs (bf16: they
        are recomputed) instead of running the model again: kept with its graph when one micro-batch takes the
        whole batch, and used only for the same rows, on the same weights (before the first optimizer step).
        So a bf16 update costs one forward less, and the first step's ratio is exactly 1."""
        kept, self._kept_forward = self._kept_forward, None
        if kept is not None and kept.serves(mb, with_values):
            return kept.outputs
        with self.ctx():
            return self.policy.sequence_forward(mb.input_ids, mb.attention_mask, mb.prompt_len, with_values=with_values)

    @torch.no_grad()
    def reference_logprobs(self, ids: torch.Tensor, mask: torch.Tensor, prompt_len: int) -> torch.Tensor:
        """Log-probs of the generated tokens under the frozen reference (same sampling transform)."""
        with self.policy.swapped_lm(self.reference), self.ctx():
            logp, _, _ = self.policy.sequence_forward(ids, mask, prompt_len, with_values=False)
        return logp

    @torch.no_grad()
    def prepare(self, batch: SequenceBatch) -> dict[str, float]:
        """Old and reference log-probs (and values, for a critic) of every token, the per-token KL
        estimate ``batch.kl`` and the rollout's statistics (means over all ranks)."""
        P = batch.prompt_len
        # The rollout recorded old log-probs and values (KV-cached, fp32: equal to a full forward up to
        # rounding).  Under bf16 the two round differently, so the ratio would not start at 1: the rollout
        # records none, and they are recomputed here with the autocast forward the update runs.
        recompute = batch.old_logp is None or (self.uses_values and batch.values is None) or self.autocast() is not None
        keep = recompute and self._first_step_takes_all(len(batch))
        old, ref, values = [], [], []
        for sl in self._chunks(len(batch)):
            ids, mask = batch.input_ids[sl], batch.attention_mask[sl]
            ref.append(self.reference_logprobs(ids, mask, P))  # first: a kept graph is not held through it
            if recompute:
                self.policy.set_training_mode(keep)  # a kept forward is the first step's: in training mode
                with self.ctx(), torch.set_grad_enabled(keep):
                    out = self.policy.sequence_forward(ids, mask, P, with_values=self.uses_values)
                if keep:
                    self._kept_forward = _KeptForward(ids, mask, P, self.uses_values, out)
                logp, _, val = out
                old.append(logp.detach())
                values.append(None if val is None else val.detach().float())
        gen_mask = batch.gen_mask
        if recompute:
            batch.old_logp = torch.cat(old)
            batch.values = torch.cat(values) if self.uses_values else None
        if batch.values is not None:
            batch.values = batch.values * gen_mask
        batch.ref_logp = torch.cat(ref)
        batch.kl = kl_estimate(batch.old_logp, batch.ref_logp, self.config.kl_estimator)
        k1 = torch.where(gen_mask, batch.old_logp - batch.ref_logp, 0.0)
        metrics: dict[str, list[float]] = {}
        for info in batch.infos:
            for name, value in (info.get("metrics") or {}).items():
                metrics.setdefault(name, []).append(float(value))
        return self.dist.means(
            {
                "rollout/ep_rew_mean": batch.scores,
                "rollout/ep_len_mean": batch.lengths.float(),
                "rollout/eos_fraction": batch.ended_with_eos.float(),
                "rollout/kl_ref": k1.sum(1),
                **{f"rollout/{name}_mean": v for name, v in metrics.items()},
            }
        )

    def shaped_rewards(self, batch: SequenceBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """(B, T) env rewards (turn k's discounted by ``turn_discount**k``) with the missing-EOS penalty at the
        last token, divided by the running std of all scores seen when ``reward_scaling`` (the moments include
        this batch, all ranks)."""
        cfg, mask = self.config, batch.gen_mask
        rewards = batch.env_rewards.float()
        if batch.turn_index is not None and cfg.turn_discount != 1.0:
            rewards = rewards * cfg.turn_discount ** batch.turn_index.float()
        if cfg.missing_eos_penalty is not None:
            penalty = torch.where(batch.ended_with_eos, 0.0, -cfg.missing_eos_penalty).float()
            rewards = rewards + at_last_token(penalty, mask)
        if not cfg.reward_scaling:
            return rewards, {}
        scores = rewards.sum(1).double()
        m = self.dist.means({"mean": scores, "sq": scores**2})
        self.score_moments.update(m["mean"], max(m["sq"] - m["mean"] ** 2, 0.0), self.dist.sum_int(len(batch)))
        scale = max(self.score_moments.std, 1e-4)  # a constant reward (std 0) is left unscaled in effect
        return rewards / scale, {"train/reward_scale": scale}
