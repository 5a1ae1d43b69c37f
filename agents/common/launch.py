"""What the launcher (``torchrun``, ``accelerate launch``) says about this process: rank, world size,
device, collective timeout; and the error reporting of a distributed run."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from textgym.errors import ConfigError, TextGymError

TIMEOUT_ENV = "TEXTGYM_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 600.0


class DistributedError(TextGymError, RuntimeError):
    """A collective failed or timed out: another rank crashed, was killed or is stuck."""


@dataclass(frozen=True)
class LaunchInfo:
    """What the launcher's environment variables say about this process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, environ: dict[str, str] | os._Environ[str]) -> int | None:
    raw = environ.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name}={raw!r} must be an integer (set by torchrun/accelerate)") from None


def detect_launch(environ: dict[str, str] | os._Environ[str] | None = None) -> LaunchInfo:
    """Rank, world size and local rank from ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` (torchrun, accelerate launch).

    No ``WORLD_SIZE`` (a plain ``python`` run) means one process.  ``TEXTGYM_DISTRIBUTED=0`` forces one process.

    >>> detect_launch({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    LaunchInfo(rank=1, world_size=2, local_rank=1)
    >>> detect_launch({})
    LaunchInfo(rank=0, world_size=1, local_rank=0)
    """
    env = os.environ if environ is None else environ
    if env.get("TEXTGYM_DISTRIBUTED", "1") == "0":
        return LaunchInfo()
    world = _env_int("WORLD_SIZE", env)
    if world is None or world == 1:
        return LaunchInfo()
    rank = _env_int("RANK", env)
    local = _env_int("LOCAL_RANK", env)
    if world < 1 or rank is None or not 0 <= rank < world:
        raise ConfigError(
            f"inconsistent launch environment: WORLD_SIZE={env.get('WORLD_SIZE')!r}, RANK={env.get('RANK')!r}; "
            "expected 0 <= RANK < WORLD_SIZE (launch with torchrun or accelerate launch)"
        )
    return LaunchInfo(rank=rank, world_size=world, local_rank=rank if local is None else local)


def timeout_seconds(environ: dict[str, str] | os._Environ[str] | None = None) -> float:
    """The collective timeout: ``TEXTGYM_DIST_TIMEOUT_S`` or 600 s."""
    env = os.environ if environ is None else environ
    raw = env.get(TIMEOUT_ENV)
    if raw is None or raw == "":
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ConfigError(f"{TIMEOUT_ENV}={raw!r} must be a positive number of seconds")
    return value


def resolve_device(device: str | torch.device, launch: LaunchInfo) -> torch.device:
    """TextPPO's device: ``"auto"`` = CUDA if available, else CPU; under a launch, CUDA means ``cuda:LOCAL_RANK``."""
    if device == "auto":
        resolved = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        resolved = torch.device(device)
    if launch.distributed and resolved.type == "cuda" and resolved.index is None:
        resolved = torch.device("cuda", launch.local_rank)
    return resolved


def checked_device(device: str | torch.device) -> torch.device:
    """A ``--device`` value (``auto``, ``cpu``, ``cuda``, ``cuda:N``) as a torch device, or one clear
    :class:`ConfigError` (the CLI prints it as one line, exit code 2) when this machine cannot provide it.

    >>> checked_device("cpu")
    device(type='cpu')
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"--device {device!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch was built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise ConfigError(f"--device {device} was asked for, but {why}; use --device cpu (or auto)")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif resolved.type != "cpu":
        raise ConfigError(f"--device {device!r} is not supported; use auto, cpu, cuda or cuda:N")
    return resolved


def record_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Under a launch: ``fn`` wrapped so a failure is reported with its rank (plain ``fn`` in a single process).

    The exception goes to torchrun's error file (``torch.distributed.elastic``'s ``record``),
    so the launcher's summary shows the failed rank's traceback, and a one-line
    ``textgym: rank R of W failed: ...`` goes to stderr before the exception propagates.
    """
    launch = detect_launch()
    if not launch.distributed:
        return fn
    from torch.distributed.elastic.multiprocessing.errors import record

    recorded = record(fn)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return recorded(*args, **kwargs)
        except Exception as err:
            print(f"textgym: rank {launch.rank} of {launch.world_size} failed: {type(err).__name__}: {err}",
                  file=sys.stderr, flush=True)  # fmt: skip
            raise

    return wrapper


def is_main_process() -> bool:
    """True on rank 0 of a launch and in a plain single-process run (for scripts' own prints and files)."""
    return detect_launch().rank == 0
