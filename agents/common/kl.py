"""KL estimators and KL-coefficient controllers for the per-token KL penalty.

Per token ``t`` of a generated sequence, with ``logp`` the policy's and
``ref_logp`` the frozen reference's log-probability of the sampled token
(both under the same temperature and action mask), the estimators of
``KL(policy || reference)`` (John Schulman, "Approximating KL divergence") are::

    k1 = logp - ref_logp                    unbiased, can be negative per token
    k2 = 0.5 * (logp - ref_logp) ** 2       biased, always >= 0
    k3 = exp(ref_logp - logp) - 1 - (ref_logp - logp)   unbiased, always >= 0

>>> import torch
>>> kl_estimate(torch.tensor([0.0]), torch.tensor([0.0]), "k3")
tensor([0.])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

KLEstimator = Literal["k1", "k2", "k3"]
KL_ESTIMATORS = ("k1", "k2", "k3")


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: KLEstimator = "k1") -> torch.Tensor:
    """Per-token KL estimate between the policy and the reference (see module docstring)."""
    log_ratio = logp - ref_logp
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio**2
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"kl estimator must be one of {list(KL_ESTIMATORS)}, got {estimator!r}")


@dataclass
class FixedKLController:
    """A constant KL coefficient (the default, ``kl_coef=0.05``)."""

    value: float

    def update(self, current_kl: float, n_steps: int) -> None:
        """Nothing to adapt."""

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])


@dataclass
class AdaptiveKLController:
    """Ziegler et al. (2019): move the coefficient so the KL tracks ``target``.

    ``value *= 1 + clip(kl / target - 1, -0.2, 0.2) * n_steps / horizon``

    >>> c = AdaptiveKLController(value=0.1, target=6.0, horizon=10_000)
    >>> c.update(current_kl=12.0, n_steps=1000); round(c.value, 4)
    0.102
    """

    value: float
    target: float
    horizon: int

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])
        self.target = float(state["target"])
        self.horizon = int(state["horizon"])


KLController = FixedKLController | AdaptiveKLController


def make_kl_controller(kl_coef: float, target_kl: float | None, horizon: int) -> KLController:
    """Fixed coefficient when ``target_kl`` is None, else the adaptive controller."""
    if target_kl is None:
        return FixedKLController(kl_coef)
    return AdaptiveKLController(kl_coef, target_kl, horizon)
