"""Data-parallel TextPPO on :mod:`torch.distributed`, launched with ``torchrun`` or ``accelerate launch``.

Both launchers start one process per GPU (or CPU worker) and set ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``.
:meth:`Distributed.from_env` reads them, initialises the default process
group (NCCL on CUDA, gloo on CPU) with a bounded timeout and picks the
rank's device (``cuda:LOCAL_RANK``).  Without those variables (or with
``WORLD_SIZE=1``) it returns a single-process object whose methods are exact
identities, so TextPPO computes bit for bit what it computed before.

What each rank does (the agent calls these helpers):

* its own vector env on a disjoint shard of the prompts (:meth:`Distributed.shard_env`,
  sample ``i`` of the split goes to rank ``i % world_size``) with its own seeds
  (:meth:`Distributed.decorrelate`);
* the same initial weights (:meth:`Distributed.broadcast_module` from rank 0);
* gradients averaged over ranks in flat buckets after the local backward passes
  (:meth:`Distributed.all_reduce_gradients`), so every rank applies the same step;
* global statistics for every decision: advantage whitening
  (:meth:`Distributed.masked_whiten`), token counts of the loss normalisation
  (:meth:`Distributed.sum`), the KL controller, target-KL early stop, the
  exploded-ratio skip and the logged means (:meth:`Distributed.means`,
  :meth:`Distributed.agree`);
* only rank 0 logs, shows a progress bar, runs callbacks (evaluation) and saves
  (:attr:`Distributed.is_main`).

A rank that crashes ends the job: ``torchrun`` stops the other workers and
exits non-zero naming the failed rank; a collective that fails or waits longer
than the timeout (``TEXTGYM_DIST_TIMEOUT_S``, default 600 s) raises
:class:`DistributedError` saying which rank saw it and why.

Example (two CPU workers on one machine)::

    torchrun --standalone --nproc_per_node=2 -m textgym train textgym/Copy-v0 --model tiny-random --timesteps 512
"""

from __future__ import annotations

import atexit
import datetime
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from agents.common.launch import (  # noqa: F401 - the launch helpers are part of this module's API
    DEFAULT_TIMEOUT_S,
    TIMEOUT_ENV,
    DistributedError,
    LaunchInfo,
    detect_launch,
    is_main_process,
    record_errors,
    resolve_device,
    timeout_seconds,
)
from agents.common.losses import masked_whiten

BUCKET_ELEMENTS = 25_000_000  # ~100 MB of fp32 gradients per all-reduce, like DDP's 25 MB buckets x4


class Distributed:
    """One process's view of a data-parallel run (``world_size == 1``: every method is an identity).

    Build it with :meth:`from_env`; TextPPO does this in its constructor.
    """

    def __init__(self, launch: LaunchInfo, device: torch.device, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.launch = launch
        self.device = device
        self.timeout_s = timeout_s

    # -- construction ----------------------------------------------------------------
    @classmethod
    def from_env(cls, device: str | torch.device = "auto") -> Distributed:
        """Detect a torchrun / accelerate launch and join its process group (idempotent).

        NCCL when the device is CUDA, gloo otherwise; the group's timeout is
        ``TEXTGYM_DIST_TIMEOUT_S`` (default 600 s), so no collective waits forever.
        """
        launch = detect_launch()
        resolved = resolve_device(device, launch)
        timeout = timeout_seconds()
        if launch.distributed:
            if resolved.type == "cuda":
                torch.cuda.set_device(resolved)
            if not dist.is_initialized():
                backend = "nccl" if resolved.type == "cuda" else "gloo"
                try:
                    dist.init_process_group(
                        backend=backend,
                        rank=launch.rank,
                        world_size=launch.world_size,
                        timeout=datetime.timedelta(seconds=timeout),
                    )
                except Exception as err:  # the rendezvous failed: say what was tried
                    raise DistributedError(
                        f"rank {launch.rank} of {launch.world_size}: could not join the {backend} process group at "
                        f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')} within "
                        f"{timeout:g} s: {err}"
                    ) from err
                atexit.register(_destroy_group)
            elif dist.get_world_size() != launch.world_size:
                raise DistributedError(
                    f"the existing process group has {dist.get_world_size()} ranks, WORLD_SIZE says {launch.world_size}"
                )
        return cls(launch, resolved, timeout)

    # -- who am I ---------------------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        """True when more than one process trains."""
        return self.launch.distributed

    @property
    def rank(self) -> int:
        return self.launch.rank

    @property
    def world_size(self) -> int:
        return self.launch.world_size

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that logs, shows progress, runs callbacks and saves."""
        return self.launch.rank == 0

    def __repr__(self) -> str:
        return f"Distributed(rank={self.rank}, world_size={self.world_size}, device={self.device})"

    # -- collectives (each wrapped so a dead peer gives a clear error) ------------------------
    def _collective(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            raise DistributedError(
                f"rank {self.rank} of {self.world_size}: {what} failed. Another rank probably crashed, was killed or "
                f"did not reach this point within the {self.timeout_s:g} s timeout ({TIMEOUT_ENV}); look for that "
                f"rank's error in the launcher's output. Cause: {type(err).__name__}: {err}"
            ) from err

    def _comm_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")

    def broadcast_module(self, module: torch.nn.Module | None) -> None:
        """Copy rank 0's parameters and buffers to every rank (one flat broadcast per dtype)."""
        if not self.enabled or module is None:
            return
        tensors = [t for t in list(module.parameters()) + list(module.buffers())]
        by_dtype: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
        for tensor in tensors:
            by_dtype.setdefault((tensor.dtype, tensor.device), []).append(tensor)
        with torch.no_grad():
            for group in by_dtype.values():
                for bucket in _buckets(group):
                    flat = torch.cat([t.detach().reshape(-1) for t in bucket]).to(self._comm_device())
                    self._collective("broadcasting the initial weights from rank 0", dist.broadcast, flat, src=0)
                    offset = 0
                    for t in bucket:
                        t.copy_(flat[offset : offset + t.numel()].view_as(t))
                        offset += t.numel()

    def all_reduce_gradients(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Average ``.grad`` over ranks in flat buckets (a missing grad counts as zeros).

        A parameter keeps ``grad=None`` only when no rank produced a gradient for it,
        so every rank's optimizer sees the same gradients.
        """
        if not self.enabled:
            return
        params = [p for p in params if p.requires_grad]
        if not params:
            return
        present = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=self._comm_device())
        self._collective("reducing gradient presence", dist.all_reduce, present, op=dist.ReduceOp.MAX)
        live = [p for p, flag in zip(params, present.tolist()) if flag > 0]
        groups: dict[tuple[torch.dtype, torch.device], list[torch.nn.Parameter]] = {}
        for p in live:
            groups.setdefault((p.dtype, p.device), []).append(p)
        with torch.no_grad():
            for group in groups.values():
                for bucket in _buckets(group):
                    flat = torch.cat(
                        [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in bucket]
                    ).to(self._comm_device())
                    self._collective("all-reducing gradients", dist.all_reduce, flat, op=dist.ReduceOp.SUM)
                    flat /= self.world_size
                    offset = 0
                    for p in bucket:
                        value = flat[offset : offset + p.numel()].view_as(p).to(p.device)
                        if p.grad is None:
                            p.grad = value.clone()
                        else:
                            p.grad.copy_(value)
                        offset += p.numel()

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """The sum of a tensor over ranks (the tensor itself with one process)."""
        if not self.enabled:
            return value
        out = value.detach().to(self._comm_device(), torch.float64).clone()
        self._collective("summing a statistic", dist.all_reduce, out, op=dist.ReduceOp.SUM)
        return out.to(value.device, value.dtype)

    def sum_int(self, value: int) -> int:
        """The sum of an integer over ranks."""
        if not self.enabled:
            return value
        return int(self.sum(torch.tensor(value, dtype=torch.float64)).item())

    def agree(self, flag: bool, sums: Sequence[float]) -> tuple[bool, list[float]]:
        """One rank-wide decision: ``(any rank's flag, per-entry sums over ranks)`` in one collective.

        Every decision that must be the same on all ranks (skip a mini-batch, stop on a signal, stop
        early) goes through here; with one process it is the identity.
        """
        if not self.enabled:
            return flag, list(sums)
        out = torch.tensor([float(flag), *sums], dtype=torch.float64, device=self._comm_device())
        self._collective("reducing update statistics", dist.all_reduce, out, op=dist.ReduceOp.SUM)
        values = out.tolist()
        return values[0] > 0, values[1:]

    def means(self, stats: dict[str, Any]) -> dict[str, float]:
        """Global means of named statistics; one ``all_gather_object`` whatever the number of names.

        A value is a tensor (mean of all its elements), a ``(tensor, mask)`` pair
        (mean over the mask) or a list of floats.  With one process this is
        exactly ``float(t.mean())``, ``float(masked_mean(t, mask))`` and ``float(np.mean(list))``.
        Names seen on only some ranks are averaged over the ranks that have them.
        """
        if not self.enabled:
            from agents.common.losses import masked_mean

            out: dict[str, float] = {}
            for name, value in stats.items():
                if isinstance(value, tuple):
                    out[name] = float(masked_mean(*value))
                elif isinstance(value, torch.Tensor):
                    out[name] = float(value.mean())
                else:
                    out[name] = float(np.mean(value))
            return out
        local: dict[str, tuple[float, float]] = {}
        for name, value in stats.items():
            if isinstance(value, tuple):
                tensor, mask = value
                mask = mask.bool()
                local[name] = (float(tensor.double()[mask].sum()), float(mask.sum()))
            elif isinstance(value, torch.Tensor):
                local[name] = (float(value.double().sum()), float(value.numel()))
            else:
                local[name] = (float(np.sum(np.asarray(value, dtype=np.float64))), float(len(value)))
        gathered: list[Any] = [None] * self.world_size
        self._collective("gathering rollout statistics", dist.all_gather_object, gathered, local)
        totals: dict[str, list[float]] = {}
        for part in gathered:  # same order on every rank: identical floats everywhere
            for name, (s, n) in sorted(part.items()):
                acc = totals.setdefault(name, [0.0, 0.0])
                acc[0] += s
                acc[1] += n
        return {name: (s / n if n else float("nan")) for name, (s, n) in totals.items()}

    def masked_whiten(self, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """:func:`agents.common.losses.masked_whiten` with the mean and (Bessel) variance of the masked entries of all ranks."""
        if not self.enabled:
            return masked_whiten(values, mask)
        maskb = mask.bool()
        local = torch.where(maskb, values, torch.zeros_like(values))
        first = self.sum(torch.stack([local.double().sum(), maskb.sum().double()]))
        count = first[1]
        mean = (first[0] / count.clamp(min=1)).to(values.dtype)
        sq = torch.where(maskb, (values - mean) ** 2, torch.zeros_like(values)).double().sum()
        total_sq = self.sum(sq.reshape(1))[0]
        denom = count - 1 if count > 1 else count.clamp(min=1)
        var = (total_sq / denom).to(values.dtype)
        whitened = (values - mean) * torch.rsqrt(var + 1e-8)
        return torch.where(maskb, whitened, torch.zeros_like(whitened))

    def barrier(self) -> None:
        """Wait for every rank (no-op with one process)."""
        if self.enabled:
            self._collective("waiting at a barrier", dist.barrier)

    # -- data and randomness ---------------------------------------------------------------
    def shard_env(self, env: Any) -> None:
        """Restrict a TextVectorEnv to this rank's prompts: samples ``rank, rank + world, ...`` of its split.

        ``reset(options={"index": i})`` then indexes the shard.  Raises when the split
        has fewer samples than ranks.
        """
        if self.enabled:
            env.shard(self.rank, self.world_size)

    def rank_seed(self, seed: int | None) -> int | None:
        """This rank's seed: ``seed`` itself on rank 0, a hash of ``(seed, rank)`` elsewhere (None stays None)."""
        if seed is None or self.rank == 0:
            return seed
        return int(np.random.SeedSequence([seed, self.rank]).generate_state(1, np.uint32)[0])

    def decorrelate(self, torch_gen: torch.Generator, np_rng: np.random.Generator) -> np.random.Generator:
        """Give ranks > 0 their own sampling and env-seed streams, derived from the given ones (rank 0 unchanged)."""
        if self.rank == 0:
            return np_rng
        base = int(np_rng.integers(2**31 - 1))
        seq = np.random.SeedSequence([base, int(torch_gen.initial_seed() % 2**32), self.rank])
        torch_gen.manual_seed(int(seq.generate_state(1, np.uint64)[0] >> 1))
        return np.random.default_rng(seq.spawn(1)[0])


def _buckets(tensors: list[Any], limit: int = BUCKET_ELEMENTS) -> list[list[Any]]:
    """Consecutive groups of tensors of at most ``limit`` elements (a larger tensor is a bucket alone)."""
    out: list[list[Any]] = []
    current: list[Any] = []
    size = 0
    for tensor in tensors:
        if current and size + tensor.numel() > limit:
            out.append(current)
            current, size = [], 0
        current.append(tensor)
        size += tensor.numel()
    if current:
        out.append(current)
    return out


def _destroy_group() -> None:
    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - best effort at interpreter exit
            pass
