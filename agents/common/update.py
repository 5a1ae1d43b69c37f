"""One optimizer step on a mini-batch, shared by every algorithm's epoch loop.

An algorithm writes its loss for a slice of a mini-batch as a *share of the
mini-batch loss*: it divides by the mini-batch's totals (:class:`Totals`: its
generated tokens and sequences over all ranks), so that the shares of every
micro-batch on every rank add up to the loss of the whole mini-batch.  The
:class:`Updater` does the rest, the same way for every algorithm:

* splits the mini-batch into micro-batches (gradient accumulation);
* skips the step, on every rank alike, when a loss is not finite or the mean
  importance ratio exceeds ``ratio_threshold`` (:meth:`Distributed.agree`);
* averages gradients over ranks, clips them, steps the optimizer, and skips a
  step whose gradient norm is not finite;
* accumulates the logged statistics, weighted by each slice's share of tokens, and logs ``loss``, the
  mini-batch loss that was optimised (the sum of the shares).

The statistics that compare the policy being trained with the rollout policy
(:data:`AGAINST_ROLLOUT`: the importance ratio, the approximate KL, the clip
fractions) are measured before each step. At an update's first step the policy
is still the rollout policy, so they are 0 (the ratio 1) by construction; an
update of a single step (one epoch of one mini-batch, the recipes' setting)
has nothing else to report and does not log them, rather than log a 0 that
reads as "the policy did not move".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from agents.common.buffers import SequenceBatch
from agents.common.distributed import Distributed


@dataclass(frozen=True)
class Totals:
    """A mini-batch's size over all ranks: the denominators of a loss written as a share."""

    tokens: torch.Tensor  # generated tokens (a 0-d tensor, clamped to >= 1)
    sequences: int
    max_new_tokens: int  # the answer's column count (Dr. GRPO's constant normaliser)


AGAINST_ROLLOUT = frozenset({"ratio", "approx_kl", "clip_fraction", "value_clip_fraction"})
"""Statistics of a step measured against the rollout policy: trivial at an update's first step."""

# loss_fn(slice of a mini-batch, the mini-batch's totals) -> (loss share, statistics of the slice)
LossFn = Callable[[SequenceBatch, Totals], tuple[torch.Tensor, dict[str, torch.Tensor]]]


@dataclass
class Updater:
    """Mini-batches and optimizer steps of one update (see the module docstring)."""

    optimizer: torch.optim.Optimizer
    params: list[torch.nn.Parameter]
    dist: Distributed
    batch_size: int | None
    micro_batch_size: int | None
    max_grad_norm: float
    ratio_threshold: float
    group_size: int
    generator: torch.Generator
    steps: int = 0
    skipped: int = 0  # mini-batches whose importance ratios exploded
    nonfinite: int = 0  # mini-batches whose loss or gradient norm was not finite
    log: dict[str, list[float]] = field(default_factory=dict)

    def minibatches(self, batch: SequenceBatch) -> Iterator[SequenceBatch]:
        """One epoch: the batch's rows shuffled (whole prompt groups) in chunks of ``batch_size``."""
        for index in batch.minibatches(self.batch_size or len(batch), self.generator, self.group_size):
            yield batch.select(index)

    def step(self, mb: SequenceBatch, loss_fn: LossFn) -> dict[str, float] | None:
        """Accumulate ``loss_fn`` over micro-batches, then one optimizer step; the mini-batch's
        statistics, or None when the step was skipped."""
        totals = Totals(self.dist.sum(mb.gen_mask.sum()).clamp(min=1), self.dist.sum_int(len(mb)), mb.gen_mask.shape[1])
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        exploded = not_finite = False
        size = self.micro_batch_size or len(mb)
        for start in range(0, len(mb), size):
            part = mb.select(torch.arange(start, min(start + size, len(mb)), device=mb.input_ids.device))
            loss, stats = loss_fn(part, totals)
            ratio = float(stats["ratio"]) if "ratio" in stats else 1.0
            if not (math.isfinite(float(loss.detach())) and math.isfinite(ratio)):
                not_finite = True
                break
            if ratio > self.ratio_threshold:
                exploded = True
                break
            # x world_size: the gradient all-reduce averages, so the sum over ranks is the mini-batch loss
            (loss * self.dist.world_size).backward()
            weight = float(part.gen_mask.sum() / totals.tokens)
            for key, value in stats.items():
                sums[key] = sums.get(key, 0.0) + float(value) * weight
            sums["loss"] = sums.get("loss", 0.0) + float(loss.detach())  # shares add up to the mini-batch loss
        names = sorted(sums)
        exploded, values = self.dist.agree(exploded, [*(sums.get(k, 0.0) for k in names), float(not_finite)])
        sums, not_finite = dict(zip(names, values[:-1])), values[-1] > 0
        if exploded or not_finite:
            self.optimizer.zero_grad(set_to_none=True)
            self.skipped += int(exploded and not not_finite)
            self.nonfinite += int(not_finite)
            return None
        self.dist.all_reduce_gradients(self.params)
        gnorm = torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
        if not torch.isfinite(gnorm):  # the same reduced gradients on every rank: the same decision
            self.optimizer.zero_grad(set_to_none=True)
            self.nonfinite += 1
            return None
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)  # freed now, not held through the next rollout and prepare
        self.steps += 1
        sums["grad_norm"] = float(gnorm)
        for key, value in sums.items():
            self.log.setdefault(key, []).append(value)
        return sums

    def stats(self) -> dict[str, float]:
        """``train/<name>``: the mean over the steps taken (:data:`AGAINST_ROLLOUT` only when more than one
        step was taken), and the step counts."""
        out = {f"train/{key}": float(np.mean(values)) for key, values in self.log.items()
               if self.steps > 1 or key not in AGAINST_ROLLOUT}  # fmt: skip
        out["train/skipped_minibatches"] = float(self.skipped)
        out["train/nonfinite_minibatches"] = float(self.nonfinite)
        return out
