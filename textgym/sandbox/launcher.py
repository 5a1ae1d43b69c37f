"""The launcher: :class:`Sandbox` runs :class:`Program` s in the harness, in fresh namespaces.

Each program runs in its own session, in new network (no interface but a
downed loopback), PID, mount, IPC and UTS namespaces made by ``unshare``
(util-linux), with a user namespace too when the trainer is not root.  The
harness (``textgym/sandbox/harness.py``) then confines the program further:
see its docstring and ``docs/sandbox.md`` for the threat model.  The process
tree is killed as a whole at the wall-clock timeout; stdout/stderr are read
with a bound (``output_limit``); the environment is scrubbed.

A program that times out in a batch is run again alone before the timeout is
recorded: a neighbour that hogs the CPUs must not fail an honest program.

``isolation="auto"`` (the default) uses the namespaces and refuses to run
anything where the OS does not allow them (:func:`isolation_mode` says how
to enable them); ``isolation="none"`` is an explicit, loudly warned opt-in.
"""

from __future__ import annotations

import functools
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from textgym.errors import ConfigError
from textgym.sandbox.policy import ISOLATIONS, Isolation, SandboxLimits, candidate_view

HARNESS = Path(__file__).with_name("harness.py")
#: Every status an :class:`ExecutionResult` can have.
STATUSES = (
    "ok", "assertion_failure", "error", "syntax_error", "timeout", "memory_limit",
    "output_limit", "crash", "test_error", "no_code",
)  # fmt: skip
_UNSHARE_ROOT = ("--net", "--pid", "--fork", "--mount", "--ipc", "--uts", "--kill-child")
_UNSHARE_USER = ("--user", "--map-root-user", *_UNSHARE_ROOT)
MAX_REASON, MAX_FAILURE = 1000, 300  #: bounds of the strings a result carries


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


HOW_TO_ENABLE = (
    "allow unprivileged user namespaces (`sysctl -w kernel.unprivileged_userns_clone=1` on Debian, "
    "`sysctl -w user.max_user_namespaces=10000`, on Ubuntu 24.04+ `sysctl -w "
    "kernel.apparmor_restrict_unprivileged_userns=0`; in a container, run it with "
    "`--security-opt seccomp=unconfined --security-opt apparmor=unconfined`), or run the trainer as root"
)


def _unshare_works(command: Sequence[str]) -> bool:
    try:
        return subprocess.run(command, capture_output=True, timeout=10, env={}).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@functools.cache
def _namespace_support() -> tuple[tuple[str, ...] | None, str, str]:
    """(the ``unshare`` prefix that works here, the mode it gives, why none works).

    A prefix only counts when a real program runs to a verdict through it: the harness
    also needs mounts, a PID namespace and seccomp that some containers refuse.
    """
    unshare = shutil.which("unshare") or next((p for p in ("/usr/bin/unshare", "/bin/unshare") if os.path.exists(p)), None)
    if not sys.platform.startswith("linux"):
        return None, "none", f"the sandbox needs Linux namespaces; this is {sys.platform}"
    if unshare is None:
        return None, "none", "the `unshare` command (util-linux) is not installed"
    if os.uname().machine not in ("x86_64", "aarch64"):
        return None, "none", f"the sandbox's seccomp filter knows x86_64 and aarch64, not {os.uname().machine}"
    root = os.geteuid() == 0
    why = "`unshare` could not create user, network, PID and mount namespaces"
    for flags in ((_UNSHARE_ROOT, _UNSHARE_USER) if root else (_UNSHARE_USER,)):
        prefix = (unshare, *flags)
        if not _unshare_works([*prefix, "true"]):
            continue
        mode = "namespace+uid" if flags is _UNSHARE_ROOT else "namespace"
        probe = Program("def f():\n    return 1\n", "assert candidate() == 1\n", "f")
        result = _execute(probe, SandboxLimits(timeout=10.0), mode, prefix, False, ())
        if result.all_pass:
            return prefix, mode, ""
        why = f"the sandbox could not start in namespaces ({result.reason}; {result.stderr.strip()[-300:]})"
    return None, "none", why


def isolation_mode(isolation: Isolation = "auto") -> str:
    """The isolation a sandbox gets here: ``"namespace+uid"`` (root), ``"namespace"`` or ``"none"``.

    ``"auto"`` and ``"namespace"`` raise :class:`ConfigError` where the OS gives no
    namespaces (saying how to enable them): nothing is scored unconfined unless asked
    for with ``"none"``.
    """
    if isolation not in ISOLATIONS:
        raise ConfigError(f"isolation must be one of {list(ISOLATIONS)}, got {isolation!r}")
    if isolation == "none":
        return "none"
    prefix, mode, why = _namespace_support()
    if prefix is None:
        raise ConfigError(
            f"the code sandbox cannot isolate programs here: {why}. To fix: {HOW_TO_ENABLE}. "
            "To run model-written code unconfined anyway (it can read your files, reach the network and "
            "forge its score), pass isolation='none'"
        )
    return mode


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

    ``isolation``: ``"auto"`` or ``"namespace"`` (the same today: namespaces,
    or a :class:`ConfigError` that says how to enable them) or ``"none"`` (an
    explicit opt-in to run unconfined, with a warning); ``site_packages``: let
    programs import installed third-party packages, read-only (off by default:
    the standard library only); ``hidden_paths``: more folders inside the
    program's view to cover with an empty one (package data folders are
    always hidden, see :mod:`textgym.sandbox.policy`).

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
        if self.isolation == "none":
            warnings.warn(
                "textgym.sandbox: isolation='none' runs model-written code UNCONFINED, as your user: it can "
                "read and write your files, reach the network, leave processes behind and forge its own "
                "score. Use it only for code you trust.",
                RuntimeWarning,
                stacklevel=3,
            )

    @property
    def max_workers(self) -> int:
        """Programs run at once (default: 4 per CPU core, at most 32)."""
        return self.workers or min(32, 4 * (os.cpu_count() or 1))

    def run_batch(self, programs: Sequence[Program]) -> list[ExecutionResult]:
        """Run every program, ``max_workers`` at a time; results in input order.

        A program that timed out is run again alone (after the batch) before its
        timeout is recorded, so that CPU-hungry neighbours cannot fail it.
        """
        programs = list(programs)
        for i, program in enumerate(programs):
            if not isinstance(program, Program):
                raise TypeError(f"programs[{i}] must be a textgym.sandbox.Program, got {type(program).__name__}")
        if len(programs) <= 1:
            return [self.run(p) for p in programs]
        with ThreadPoolExecutor(min(self.max_workers, len(programs)), thread_name_prefix="textgym-sandbox") as pool:
            results = list(pool.map(self.run, programs))
        for i, result in enumerate(results):
            if result.status == "timeout":
                alone = self.run(programs[i])
                if alone.status == "timeout":
                    alone = replace(alone, reason=f"{alone.reason} (also when run alone)")
                results[i] = alone
        return results

    def run(self, program: Program) -> ExecutionResult:
        """Run one program and its tests; never raises for anything the program does."""
        mode = isolation_mode(self.isolation)
        prefix = _namespace_support()[0] if mode != "none" else ()
        hidden = tuple(self.hidden_paths or ())
        return _execute(program, self.limits, mode, prefix or (), self.site_packages, hidden)


# -- one program ------------------------------------------------------------------------------
def _execute(program: Program, limits: SandboxLimits, mode: str, prefix: tuple[str, ...], site_packages: bool,
             hidden: tuple[str, ...]) -> ExecutionResult:
    start = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="textgym-sandbox-") if mode == "none" else None
    try:
        result = _launch(program, limits, prefix, _job(program, limits, mode, site_packages, hidden, workdir),
                         workdir)
    finally:
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
    return replace(result, wall_time=time.monotonic() - start, isolation=mode,
                   reason=None if result.reason is None else result.reason[:MAX_REASON],
                   first_failure=None if result.first_failure is None else result.first_failure[:MAX_FAILURE])


def _job(program: Program, limits: SandboxLimits, mode: str, site_packages: bool, hidden: tuple[str, ...],
         workdir: str | None) -> dict[str, object]:
    uid = None
    if os.geteuid() == 0 and mode != "none":
        uid = 100_000 + int.from_bytes(os.urandom(4), "big") % 900_000  # a throw-away uid per run
    return {
        "program": program.program,
        "context": program.context,
        "entry_point": program.entry_point,
        "timeout": limits.timeout,
        "limits": limits.rlimits(),
        "memory_bytes": limits.memory_mb * 2**20,
        "tree_cpu_seconds": limits.cpu,
        "disk_mb": limits.file_size_mb,
        "uid": uid,
        "isolate": mode != "none",
        "net_guard": mode == "none",
        **candidate_view(site_packages, hidden),
        "workdir": workdir,
    }


def _launch(program: Program, limits: SandboxLimits, prefix: tuple[str, ...], job: dict[str, object],
            workdir: str | None) -> ExecutionResult:
    report_r, report_w = os.pipe()
    site = ("-S",)  # no site: ~20 ms faster per program; the candidate imports from its own view
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
    data = _frame(job) + _frame({"test": program.test})
    output, report, killed = _Output(), bytearray(), None
    deadline = time.monotonic() + limits.timeout + 0.7  # backstop; the harness stops itself
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
            if output.total > limits.output_bytes:
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
        return ExecutionResult("output_limit", reason=f"the program wrote more than {limits.output_bytes} "
                               "bytes to stdout/stderr", stdout=stdout, stderr=stderr)
    try:
        verdict = json.loads(report.decode("utf-8"))
    except ValueError:
        if killed == "timeout":
            reason = f"wall-clock time limit of {limits.timeout} s exceeded"
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
