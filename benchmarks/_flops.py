"""Model FLOPs utilisation (MFU) for the benchmarks that run a model, and a per-phase clock of an update.

MFU = the model FLOPs of the work done / its seconds / a peak matmul rate measured in the same run, on the
same thread count, for the dtype the model ran in (fp32, or bf16 under autocast).  Model FLOPs count
``2 N`` per token of a forward and ``6 N`` per token of a forward + backward (``N`` = the model's
parameters); prompt tokens and attention are left out, so MFU is a lower bound, the same for every side
of a comparison.

    >>> flops = generation_flops(params=1_000_000, tokens=10)
    >>> flops, f"{mfu(flops, seconds=1.0, peak=1e9):.1%}"
    (20000000, '2.0%')
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
SHAPE = (1024, 576, 1536)  # SmolLM2-135M's MLP: (tokens, hidden) @ (hidden, intermediate)
GPU_SHAPE = (8192, 8192, 8192)  # large enough to reach a GPU's matmul peak


def peak_matmul_flops(dtype: str = "fp32", threads: int | None = None, seconds: float = 2.0, windows: int = 4,
                      device: str = "cpu") -> float:  # fmt: skip
    """FLOP/s of a matmul in ``dtype`` ("fp32" or "bf16"): on a CPU, 1024x576 by 576x1536 (SmolLM2-135M's MLP)
    on ``threads`` threads; on a GPU, 8192x8192 by 8192x8192 (the device's sustained peak; TF32 off for fp32).
    The best of ``windows`` windows of ``seconds / windows`` each (a shared machine slows some of them)."""
    if threads is not None:
        torch.set_num_threads(threads)
    m, k, n = SHAPE if device == "cpu" else GPU_SHAPE
    a = torch.randn(m, k, dtype=DTYPES[dtype], device=device)
    b = torch.randn(k, n, dtype=DTYPES[dtype], device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(3):
        a @ b  # warm-up
    sync()
    best = 0.0
    for _ in range(windows):
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds / windows:
            a @ b
            count += 1
            if count % 8 == 0:
                sync()
        sync()
        best = max(best, 2 * m * k * n * count / (time.perf_counter() - started))
    return best


def peaks(dtypes: list[str], threads: int | None = None, device: str = "cpu") -> dict[str, float]:
    """:func:`peak_matmul_flops` of each dtype, and a one-line summary printed by the callers."""
    return {name: peak_matmul_flops(name, threads, device=device) for name in dict.fromkeys(dtypes)}


def describe_peaks(measured: dict[str, float], threads: int, device: str = "cpu") -> str:
    parts = ", ".join(f"{name} {flops / 1e9:.1f}" for name, flops in measured.items())
    shape = "x".join(map(str, SHAPE if device == "cpu" else GPU_SHAPE))
    where = f"{threads} thread(s)" if device == "cpu" else device
    return f"peak matmul GFLOP/s ({shape}, {where}, this run): {parts}"


def generation_flops(params: int, tokens: int) -> int:
    """Model FLOPs of generating ``tokens`` tokens (one forward each)."""
    return 2 * params * tokens


def update_flops(params: int, tokens: int, epochs: int, reference: bool) -> int:
    """Model FLOPs of one on-policy update of ``tokens`` generated tokens: the rollout (2N per token), the
    reference forward (2N, when there is a KL term) and ``epochs`` forward + backward passes (6N each).
    The old log-probs are not counted (TextPPO records them in the rollout in fp32 and recomputes them
    under bf16; TRL recomputes them): MFU counts the work the algorithm needs, not what an implementation
    repeats."""
    return params * tokens * (2 + (2 if reference else 0) + 6 * epochs)


def generate_tokens(mask: torch.Tensor, new_tokens: torch.Tensor, eos: int) -> int:
    """Tokens a ``model.generate`` call ran forward: the prompts' real tokens (``mask``) and each row's new
    tokens up to and including its first EOS (``generate`` pads the rest)."""
    is_eos = new_tokens == eos
    ends = torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, new_tokens.shape[1])
    return int(mask.sum()) + int(ends.sum())


def autocast_or_not(bf16: bool, device: str = "cpu") -> Any:
    """A bf16 autocast context on ``device``'s type, or a null one."""
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def mfu(flops: float, seconds: float, peak: float) -> float:
    """Achieved FLOP/s over the peak."""
    return flops / max(seconds, 1e-12) / peak


class PhaseClock:
    """Seconds per phase of an on-policy agent's updates: ``rollout`` (``collect``), ``prepare`` (old and
    reference log-probs, ``prepare``) and ``epochs`` (the rest of ``train``: forward, backward, optimizer).

    It wraps the agent's public ``collect``, ``prepare`` and ``train`` methods on that instance only.

        >>> clock = PhaseClock(agent)                         # doctest: +SKIP
        >>> agent.learn(1); clock.take()                      # doctest: +SKIP
        {'rollout': 3.1, 'prepare': 1.2, 'epochs': 6.0}
    """

    def __init__(self, agent: Any) -> None:
        self.seconds = {"rollout": 0.0, "prepare": 0.0, "epochs": 0.0}
        for method, phase in (("collect", "rollout"), ("prepare", "prepare"), ("train", "epochs")):
            setattr(agent, method, self._timed(getattr(agent, method), phase))

    def _timed(self, fn: Any, phase: str) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            before = dict(self.seconds)
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                inner = sum(self.seconds[k] - before[k] for k in self.seconds)  # nested phases (prepare in train)
                self.seconds[phase] += time.perf_counter() - started - inner

        return run

    def take(self) -> dict[str, float]:
        """The seconds since the last call, per phase."""
        out, self.seconds = self.seconds, dict.fromkeys(self.seconds, 0.0)
        return out
