"""RAFT (reward-ranked fine-tuning): sample k answers per prompt, fine-tune on the best.

RAFT (Dong et al. 2023, "RAFT: Reward rAnked FineTuning", arXiv:2304.06767)
and ReST (Gulcehre et al. 2023, "Reinforced Self-Training", arXiv:2308.08998,
which tested it on machine translation) are expert iteration for language
models: each prompt is answered ``k`` times by the current policy, the answers
are ranked by the reward, and the best ones become supervised targets. The
update is the negative log-likelihood of those answers: no importance ratio,
no critic, no clipping. It is the natural second stage after a supervised warm
start (``sft+raft``): the targets are the model's own answers, so it learns
what the reward prefers among the things it can already say.

It learns from good answers only: nothing pushes a bad one down. From a random
model (Copy-v0 with the tiny test model) the best of four answers is mostly
its own guesses, and fine-tuning on them sharpens its biases as much as the
correct tokens: greedy accuracy 0.07 -> 0.17 where the policy-gradient
algorithms reach 0.3-0.65 (``tests/test_algorithms.py``). It is meant for a
model that can already do the task; what it adds after a warm start on
Translation-v0 and CodeCompletion-v0 is measured in ``docs/warm_start.md``.

Two rules of this implementation:

* **Only groups whose answers scored differently teach.** A prompt's kept
  answer gets weight 1 when it scored above its group's mean (and at least
  ``min_reward``, ReST's threshold), else 0. A group of equal scores (all
  copies, all failing programs) would only sharpen the distribution on what it
  already says, and collapse its entropy.
* **Every rank keeps the same number of rows** (``keep_best`` per prompt, weight 0
  or 1), so data-parallel ranks take the same number of optimizer steps; an
  update in which no group on any rank teaches takes none (Adam's momentum
  would move the weights on a zero gradient).

Shapes and layout as in :mod:`agents.grpo`: rows ``[j*k, (j+1)*k)`` are the
``k`` completions of prompt ``j``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from agents.common.buffers import SequenceBatch
from agents.common.config import OnPolicyConfig
from agents.common.losses import masked_mean, masked_sum
from agents.common.on_policy import OnPolicyAlgorithm
from agents.common.update import Totals
from agents.grpo import k3_kl
from textgym.errors import ConfigError

# -- math (pure functions, tests/test_raft.py) --------------------------------------------------------------


def best_of_groups(
    ranking: torch.Tensor, group_size: int, keep_best: int = 1, scores: torch.Tensor | None = None, min_reward: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``keep_best`` best rows of each group and whether each one teaches: ``(index, weight)``, both (B / group_size * keep_best,).

    ``ranking`` (B,) orders the completions of a group (highest first; ties keep the rollout order; NaN, an
    unscorable completion, ranks last). A kept row's ``weight`` is 1 when its ranking is above its group's mean
    (NaN left out) and, with ``min_reward``, its ``scores`` (default: ``ranking``) is at least ``min_reward``;
    else 0. ``index`` lists each group's kept rows consecutively, best first.
    """
    if ranking.dim() != 1 or ranking.numel() % group_size != 0:
        raise ValueError(f"ranking must be 1-D with a multiple of group_size={group_size} entries, got {tuple(ranking.shape)}")
    if not 1 <= keep_best < group_size:
        raise ValueError(f"keep_best must be in [1, group_size={group_size}), got {keep_best}")
    grouped = ranking.view(-1, group_size)
    order = torch.sort(torch.nan_to_num(grouped, nan=-torch.inf), dim=1, descending=True, stable=True).indices[:, :keep_best]
    index = (order + torch.arange(grouped.shape[0]).unsqueeze(1) * group_size).reshape(-1)
    teaches = grouped.gather(1, order) > torch.nanmean(grouped, dim=1, keepdim=True)  # False for NaN
    if min_reward is not None:
        teaches &= (ranking if scores is None else scores)[index].view_as(order) >= min_reward
    return index, teaches.reshape(-1).to(ranking.dtype)


def raft_per_token_loss(
    logp: torch.Tensor, ref_logp: torch.Tensor | None, weight: torch.Tensor, kl_coef: float = 0.0
) -> torch.Tensor:
    """(B, T): the weighted negative log-likelihood of each token, plus ``kl_coef`` times the k3 KL estimate
    to the reference on the same tokens (``ref_logp`` is only read when ``kl_coef != 0``)."""
    per_token = -logp
    if kl_coef != 0.0:
        if ref_logp is None:
            raise ValueError("ref_logp is needed when kl_coef != 0")
        per_token = per_token + kl_coef * k3_kl(logp, ref_logp)
    return per_token * weight.unsqueeze(1)


# -- the algorithm ---------------------------------------------------------------------------------
@dataclass
class RAFTConfig(OnPolicyConfig):
    """TextRAFT's hyperparameters, with the engine's."""

    min_group_size: ClassVar[int] = 2

    group_size: int = 4
    """Completions sampled per prompt (RAFT's k); the best `keep_best` of them are the targets, so at least 2."""
    keep_best: int = 1
    """Completions of each prompt fine-tuned on: its `keep_best` best by the reward (fewer than group_size)."""
    min_reward: float | None = None
    """ReST's threshold: a kept completion teaches only when the env scored it at least this (None: no threshold;
    1.0 keeps only programs that pass every test)."""
    n_epochs: int = 2
    """Passes over each update's kept completions (ReST's Improve steps)."""
    kl_coef: float = 0.05
    """Weight of the k3 KL to the reference on the kept completions' tokens (RAFT and ReST have none: 0 turns it
    off; the rollout's KL is logged either way)."""
    reward_scaling: bool = False
    """Off: the completions are ranked, so the reward's scale does not matter."""

    def check(self) -> None:
        super().check()
        if self.keep_best >= self.group_size:
            raise ConfigError(f"keep_best ({self.keep_best}) must be smaller than group_size ({self.group_size}): keeping every "
                              "completion of a prompt ranks nothing")  # fmt: skip


class TextRAFT(OnPolicyAlgorithm):
    """RAFT: best of k completions per prompt by the reward, then the negative log-likelihood of those."""

    name = "raft"
    config_class = RAFTConfig
    config: RAFTConfig
    trains_on_every_row = False  # only the kept completions are trained on

    def train(self, batch: SequenceBatch) -> dict[str, float]:
        cfg = self.config
        stats = self.prepare(batch)  # reference log-probs and the rollout's KL and means
        rewards, reward_stats = self.shaped_rewards(batch)  # the missing-EOS penalty ranks an unfinished answer lower
        index, weight = best_of_groups(rewards.sum(1), cfg.group_size, cfg.keep_best, batch.scores.float(), cfg.min_reward)
        kept = batch.select(index)
        kept.advantages = weight
        teaching = weight.bool()
        stats.update(reward_stats)
        stats.update(self.dist.means({"train/kept_fraction": weight, "rollout/kept_score_mean": (kept.scores, teaching)}))
        if not self.dist.sum_int(int(teaching.sum())):  # no group on any rank scored its answers differently
            return stats
        return self.finish(self.fit(kept, cfg.n_epochs, group_size=cfg.keep_best), stats)

    def loss(self, mb: SequenceBatch, totals: Totals) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The kept completions' token NLL (and KL term), summed and divided by the mini-batch's tokens (this
        slice's share)."""
        cfg, mask = self.config, mb.gen_mask
        logp, entropy, _ = self.policy_forward(mb, with_values=False)
        per_token = raft_per_token_loss(logp, mb.ref_logp, mb.advantages, cfg.kl_coef)
        loss = masked_sum(per_token, mask) / totals.tokens
        return loss, {  # means over the kept completions' tokens
            "entropy": masked_mean(entropy, mask).detach(),
            "nll": masked_mean(-logp.detach(), mask),
            "kl": masked_mean(k3_kl(logp.detach(), mb.ref_logp), mask),
        }
