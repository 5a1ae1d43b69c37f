"""Running statistics of episode scores, for reward scaling across updates."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class RunningMoments:
    """Mean and variance of every score seen so far (Chan et al.'s parallel update, exact).

    >>> m = RunningMoments(); m.update(mean=1.0, var=0.0, count=2); m.update(mean=3.0, var=0.0, count=2)
    >>> m.mean, round(m.std, 6)
    (2.0, 1.154701)
    """

    mean: float = 0.0
    var: float = 0.0  # population variance of the scores seen
    count: int = 0

    def update(self, mean: float, var: float, count: int) -> None:
        """Fold in a batch of ``count`` scores with this mean and (population) variance."""
        if count <= 0:
            return
        total = self.count + count
        delta = mean - self.mean
        m2 = self.var * self.count + var * count + delta * delta * self.count * count / total
        self.mean += delta * count / total
        self.var, self.count = m2 / total, total

    @property
    def std(self) -> float:
        """Sample standard deviation (Bessel-corrected; 1.0 until there are two scores)."""
        return math.sqrt(self.var * self.count / (self.count - 1)) if self.count > 1 else 1.0

    def state_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.mean, self.var, self.count = float(state["mean"]), float(state["var"]), int(state["count"])
