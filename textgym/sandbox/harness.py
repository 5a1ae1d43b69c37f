"""The in-sandbox harness of :mod:`textgym.sandbox` (run as a script; standard library only).

Two processes inside the sandbox, so that the candidate can never forge its score:

* the *supervisor* (this script's process) reads the job from stdin, sets the
  sandbox up (private ``/tmp``, ``/proc``; in a mount namespace), compiles the
  program, forks the candidate process and then runs the test statements
  itself.  It never executes candidate code.  ``candidate(...)`` in the tests
  is a proxy: the arguments go to the candidate process over a pipe and only
  plain data (None, bool, int, float, complex, str, bytes, list, tuple, dict,
  set, frozenset -- exact types, no subclasses) comes back, so an object whose
  ``__eq__`` always returns True, a patched builtin, ``sys.exit`` or
  ``os._exit`` in the candidate changes nothing in the supervisor.  The
  verdict leaves through a file descriptor the candidate process closes
  before running any candidate code, and the supervisor is not dumpable (no
  ptrace, no ``/proc/<pid>/fd`` access for the candidate).
* the *candidate* process (forked) drops its privileges (a throw-away uid when
  the supervisor is root), sets its resource limits, executes the program and
  then answers calls.  It is forked before the tests are read, so it holds no
  copy of them.

Wire format: stdin carries two frames (8-byte big-endian length + JSON):
the job (program, context, entry point, limits ...) and then the tests.
"""

from __future__ import annotations

import ast
import ctypes
import json
import math
import os
import resource
import select
import signal
import sys
import time

MAX_MESSAGE = 16 * 2**20
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC = 1, 2, 4, 8, 32, 4096, 16384
PR_SET_DUMPABLE = 4
NET_EVENTS = frozenset({"socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg", "socket.getaddrinfo"})


# -- framing ----------------------------------------------------------------------
def read_exact(fd: int, n: int, deadline: float | None = None) -> bytes:
    chunks, got = [], 0
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError("deadline")
        chunk = os.read(fd, min(n - got, 1 << 20))
        if not chunk:
            raise EOFError("closed")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def read_frame(fd: int, deadline: float | None = None, header: int = 8) -> object:
    n = int.from_bytes(read_exact(fd, header, deadline), "big")
    if n > MAX_MESSAGE:
        raise ValueError(f"message of {n} bytes is over the {MAX_MESSAGE} byte limit")
    return json.loads(read_exact(fd, n, deadline).decode("utf-8"))


def write_frame(fd: int, obj: object) -> None:
    data = json.dumps(obj).encode("utf-8")
    data = len(data).to_bytes(4, "big") + data
    while data:
        data = data[os.write(fd, data):]


# -- plain-data codec (exact builtin types only) --------------------------------------
def encode(value: object, depth: int = 0) -> object:
    if depth > 100:
        raise TypeError("value nested too deeply")
    t = type(value)
    if value is None or t is bool or t is int or t is str:
        return value
    if t is float:
        return value if math.isfinite(value) else {"f": repr(value)}
    if t is list:
        return [encode(v, depth + 1) for v in value]
    if t is tuple:
        return {"t": [encode(v, depth + 1) for v in value]}
    if t is dict:
        return {"d": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in value.items()]}
    if t is set or t is frozenset:
        return {"s" if t is set else "fs": [encode(v, depth + 1) for v in value]}
    if t is complex:
        return {"c": [encode(value.real), encode(value.imag)]}
    if t is bytes:
        return {"y": value.hex()}
    raise TypeError(f"unsupported value of type {t.__name__} (only plain builtin data crosses the sandbox)")


def decode(obj: object) -> object:
    if isinstance(obj, list):
        return [decode(v) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if len(obj) != 1:
        raise ValueError("malformed value")
    (tag, raw), = obj.items()
    if tag == "f":
        return float(raw)
    if tag == "t":
        return tuple(decode(v) for v in raw)
    if tag == "d":
        return {decode(k): decode(v) for k, v in raw}
    if tag == "s":
        return {decode(v) for v in raw}
    if tag == "fs":
        return frozenset(decode(v) for v in raw)
    if tag == "c":
        return complex(decode(raw[0]), decode(raw[1]))
    if tag == "y":
        return bytes.fromhex(raw)
    raise ValueError(f"malformed value tag {tag!r}")


# -- sandbox setup (supervisor, as root inside a mount namespace) -------------------------
def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    libc = ctypes.CDLL(None, use_errno=True)

    def enc(text: str | None) -> bytes | None:
        return text.encode() if text is not None else None

    if libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {target}: {os.strerror(err)}")


def first_closed_ancestor(path: str) -> str | None:
    """The first directory on ``path`` that other users cannot traverse (e.g. ``/root``)."""
    parts = os.path.abspath(path).strip("/").split("/")
    for i in range(1, len(parts) + 1):
        here = "/" + "/".join(parts[:i])
        if os.path.isdir(here) and not os.stat(here).st_mode & 0o001:
            return here
    return None


def expose(paths: list[str]) -> None:
    """Make ``paths`` (the Python installation) readable to the throw-away uid.

    The closed ancestor is replaced by an empty tmpfs (hiding its other
    content) into which the needed directory is bind-mounted read-only.
    """
    plan = []
    for path in dict.fromkeys(paths):
        closed = first_closed_ancestor(path)
        if closed is not None and closed != "/":
            plan.append((closed, path, os.open(path, os.O_RDONLY | os.O_DIRECTORY)))
    for closed in dict.fromkeys(c for c, _, _ in plan):
        mount("tmpfs", closed, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755")
    for _, path, fd in plan:
        os.makedirs(path, exist_ok=True)
        mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC, None)
        mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID, None)
        os.close(fd)


def isolate(job: dict) -> str:
    """Private /proc, /tmp, /var/tmp, /dev/shm; hidden paths; returns the work dir."""
    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None)
    size = f"size={int(job['disk_mb'])}m,mode=1777"
    for tmp in ("/tmp", "/var/tmp", "/dev/shm"):
        if os.path.isdir(tmp):
            mount("tmpfs", tmp, "tmpfs", MS_NOSUID | MS_NODEV, size)
    if job["uid"] is not None:
        expose([os.path.dirname(os.path.dirname(os.path.realpath(sys.executable))), sys.base_prefix, sys.prefix])
    for path in job["hide"]:
        if os.path.isdir(path):
            mount("tmpfs", path, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV, "size=4k")
    workdir = "/tmp/work"
    os.mkdir(workdir, 0o700)
    if job["uid"] is not None:
        os.chown(workdir, job["uid"], job["uid"])
    return workdir


# -- candidate process ------------------------------------------------------------------------
def candidate_main(job: dict, base: dict, workdir: str, rfd: int, wfd: int) -> None:
    """Drop privileges, apply limits, run the program, answer calls; never returns."""
    limits = job["limits"]
    os.chdir(workdir)
    for name, value in limits.items():
        res = getattr(resource, name)
        resource.setrlimit(res, (value, value + 1 if name == "RLIMIT_CPU" else value))
    if job["uid"] is not None:
        os.setgroups([])
        os.setgid(job["uid"])
        os.setuid(job["uid"])
    if job["net_guard"]:
        def guard(event: str, args: tuple) -> None:
            if event in NET_EVENTS:
                raise PermissionError(f"network access is disabled in the sandbox ({event})")
        sys.addaudithook(guard)
    send, _exit, exc_info = write_frame, os._exit, sys.exc_info
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(line_buffering=True)

    def report_exception(where: str) -> None:
        err = exc_info()[1]
        send(wfd, {"exc": type(err).__name__, "msg": str(err)[:500], "where": where})

    ns = dict(base)
    try:
        exec(compile(job["program"], "<program>", "exec"), ns)
        fn = ns.get(job["entry_point"])
        if not callable(fn):
            raise NameError(f"the program does not define a function {job['entry_point']!r}")
        send(wfd, {"ready": True})
    except BaseException:
        report_exception("program")
        _exit(0)
    while True:
        try:
            request = read_frame(rfd, header=4)
        except BaseException:
            _exit(0)
        try:
            args = decode(request["args"])
            result = encode(fn(*args))
        except BaseException:
            try:
                report_exception("call")
            except BaseException:
                _exit(1)
            continue
        send(wfd, {"ok": result})


# -- supervisor ----------------------------------------------------------------------------------
class CandidateFailed(Exception):
    """The candidate raised, died or ran out of time during a call."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind, self.reason = kind, reason


class Candidate:
    """The supervisor's handle on the candidate process."""

    def __init__(self, job: dict, base: dict, workdir: str, report_fd: int, deadline: float) -> None:
        in_r, in_w = os.pipe()  # supervisor -> candidate
        out_r, out_w = os.pipe()  # candidate -> supervisor
        self.deadline, self.dead, self.kind, self.reason = deadline, False, "", ""
        self.pid = os.fork()
        if self.pid == 0:  # the candidate: keep only its own pipe ends and stdout/stderr
            try:
                os.close(report_fd)
                os.close(in_w)
                os.close(out_r)
                null = os.open(os.devnull, os.O_RDONLY)
                os.dup2(null, 0)
                os.close(null)
                candidate_main(job, base, workdir, in_r, out_w)
            finally:
                os._exit(1)
        os.close(in_r)
        os.close(out_w)
        self.wfd, self.rfd = in_w, out_r

    def wait_ready(self) -> None:
        """Wait until the program ran; raises :class:`CandidateFailed` when it did not."""
        self._receive("program")

    def _die(self, kind: str, reason: str) -> CandidateFailed:
        if not self.dead:
            self.dead, self.kind, self.reason = True, kind, reason
            self.kill()
        return CandidateFailed(self.kind, self.reason)

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def _exit_reason(self) -> tuple[str, str]:
        """Why the candidate process ended (it closed its pipe)."""
        try:
            _, status = os.waitpid(self.pid, 0)
        except ChildProcessError:
            return "crash", "the program's process ended"
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            if sig == signal.SIGXCPU:
                return "timeout", "CPU time limit exceeded (SIGXCPU)"
            return "crash", f"the program's process was killed by signal {signal.Signals(sig).name}"
        return "crash", f"the program's process exited with status {os.WEXITSTATUS(status)}"

    def _receive(self, where: str) -> object:
        if self.dead:
            raise CandidateFailed(self.kind, self.reason)
        try:
            reply = read_frame(self.rfd, self.deadline, header=4)
        except TimeoutError:
            raise self._die("timeout", f"wall-clock time limit exceeded during the {where}") from None
        except EOFError:
            raise self._die(*self._exit_reason()) from None
        except Exception as err:
            raise self._die("crash", f"the program's process sent a malformed reply ({err})") from None
        if not isinstance(reply, dict):
            raise self._die("crash", "the program's process sent a malformed reply")
        if "exc" in reply:
            exc = str(reply.get("exc"))
            kind = {"MemoryError": "memory_limit", "SyntaxError": "syntax_error"}.get(exc, "error")
            message = f"{exc}: {reply.get('msg', '')}" if reply.get("msg") else exc
            if where == "program":
                raise self._die(kind, f"the program raised {message} before the tests ran")
            raise CandidateFailed(kind, f"{message}")
        return reply

    def __call__(self, *args: object, **kwargs: object) -> object:
        if kwargs:
            raise TypeError("keyword arguments are not supported by the sandbox proxy")
        if self.dead:
            raise CandidateFailed(self.kind, self.reason)
        try:
            write_frame(self.wfd, {"args": encode(list(args))})
        except OSError:
            raise self._die(*self._exit_reason()) from None
        reply = self._receive("call")
        if "ok" not in reply:
            raise self._die("crash", "the program's process sent a malformed reply")
        try:
            return decode(reply["ok"])
        except Exception as err:
            raise self._die("crash", f"the program's process sent a malformed value ({err})") from None


def test_units(test: str) -> tuple[list[ast.stmt], str, list[ast.stmt]]:
    """(module statements, candidate parameter name, statements of ``check``'s body)."""
    tree = ast.parse(test)
    for i, node in enumerate(tree.body):
        if isinstance(node, ast.FunctionDef) and node.name == "check" and node.args.args:
            return tree.body[:i] + tree.body[i + 1:], node.args.args[0].arg, node.body
    return [], "candidate", tree.body


def run_tests(tests: dict, base: dict, candidate: Candidate, entry_point: str) -> dict:
    """Run the test statements one by one; statements that use the candidate are the units.

    The tests may name the function ``candidate`` or by its own name: both are the proxy.
    """
    module, param, body = test_units(tests["test"])
    names = {param, entry_point}
    counted = [any(isinstance(n, ast.Name) and n.id in names for n in ast.walk(s)) for s in body]
    result = {"status": "ok", "passed": 0, "total": sum(counted), "first_failure": None, "reason": None}
    scope = dict(base)
    exec(compile(ast.Module(body=module, type_ignores=[]), "<test>", "exec"), scope)
    scope[param] = scope[entry_point] = candidate
    try:
        candidate.wait_ready()
    except CandidateFailed as err:  # the program failed before any test: every unit fails
        return {**result, "status": err.kind, "reason": err.reason}
    for stmt, unit in zip(body, counted, strict=True):
        try:
            exec(compile(ast.Module(body=[stmt], type_ignores=[]), "<test>", "exec"), scope)
            result["passed"] += unit
            continue
        except CandidateFailed as err:
            kind, reason = err.kind, err.reason
        except AssertionError as err:
            kind, reason = "assertion_failure", f"AssertionError: {err}" if str(err) else "AssertionError"
        except Exception as err:
            kind, reason = "error", f"{type(err).__name__}: {err}"
        if result["first_failure"] is None:
            if not unit and kind in ("assertion_failure", "error"):
                kind = "test_error"  # the test's own setup failed
            result.update(status=kind, first_failure=ast.unparse(stmt)[:300], reason=reason[:500])
    return result


def main() -> None:
    report_fd = int(sys.argv[1])
    start = time.monotonic()
    job = read_frame(0)
    deadline = start + float(job["timeout"])
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    memory = job["limits"].get("RLIMIT_AS")
    if memory:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    try:
        compile(job["program"], "<program>", "exec")
    except (SyntaxError, ValueError, MemoryError, RecursionError) as err:
        line = f" (line {err.lineno})" if isinstance(err, SyntaxError) and err.lineno else ""
        write_report(report_fd, {
            "status": "syntax_error", "passed": 0, "total": None, "first_failure": None,
            "reason": f"{type(err).__name__}: {getattr(err, 'msg', err)}{line}",
        })
        return
    workdir = isolate(job) if job["isolate"] else job["workdir"]
    base: dict = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        exec(compile(job["context"], "<context>", "exec"), base)
    except Exception as err:
        write_report(report_fd, {"status": "test_error", "passed": 0, "total": None, "first_failure": None,
                                 "reason": f"the problem's context code failed: {type(err).__name__}: {err}"})
        return
    candidate = Candidate(job, base, workdir, report_fd, deadline)
    tests = read_frame(0)  # read only now: the candidate process never holds the tests
    try:
        result = run_tests(tests, base, candidate, job["entry_point"])
    finally:
        candidate.kill()
    write_report(report_fd, result)


def write_report(fd: int, result: dict) -> None:
    data = (json.dumps(result) + "\n").encode("utf-8")
    while data:
        data = data[os.write(fd, data):]
    os.close(fd)


if __name__ == "__main__":
    main()
