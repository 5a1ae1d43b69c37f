"""Attacks on the code sandbox (issue 15), each as root and as an unprivileged user.

Every attack is a program whose test passes only if the attack worked: it must
return a random secret the test put where the program must not reach (a file
in the host's ``/tmp`` or ``/run/lock``, a Unix or TCP server, a note left by
the previous episode in System V IPC, a keyring or a world-writable folder,
the supervisor's memory, HumanEval's canonical solution ...), or a forged
verdict must count.  Each attack must score no more than the same problem
with a ``return None`` body, and leave nothing behind on the host
(:func:`benchmarks.sandbox_soak.wait_for_leftovers`: processes, this
process's fds, temp and world-writable folders, IPC objects, keys, mounts).

Modes: ``root`` runs the sandbox in this process (when we are root);
``user`` runs it in a driver process as uid/gid 65534 (``nobody``) from a
copy of the ``textgym`` package owned by that user -- the usual setup, in
which the harness file belongs to the trainer's user.  When the tests
themselves run unprivileged, ``user`` runs in-process and ``root`` is skipped.
"""

from __future__ import annotations

import contextlib
import ctypes
import gzip
import hashlib
import importlib.util
import json
import os
import secrets
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import warnings
from pathlib import Path

import pytest

from textgym.errors import ConfigError
from textgym.sandbox import HARNESS, Program, Sandbox, SandboxLimits, launcher

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("sandbox_soak", ROOT / "benchmarks" / "sandbox_soak.py")
soak = sys.modules.setdefault("sandbox_soak", importlib.util.module_from_spec(_spec))  # dataclasses look it up
_spec.loader.exec_module(soak)

MODES = ["root", "user"]
NOBODY = 65534
TIMEOUT = 3.0
LIMITS = {"timeout": TIMEOUT}
NONE_BODY = "def f(*args):\n    return None\n"

#: The driver: runs steps (each a batch of programs with its own Sandbox settings); results as JSON.
DRIVER = """
import json, sys
from dataclasses import asdict
from textgym.sandbox import Program, Sandbox, SandboxLimits


def drive(job):
    out = []
    for step in job["steps"]:
        box = Sandbox(SandboxLimits(**step["limits"]), workers=step.get("workers"), isolation=step["isolation"])
        programs = [Program(*p) for p in step["programs"]]
        out.append([asdict(r) for r in box.run_batch(programs)])
    return out


if __name__ == "__main__":  # one job per line on stdin, one result per line on stdout
    for line in sys.stdin:
        print(json.dumps(drive(json.loads(line))), flush=True)
"""

#: Shared by the attacks: routes to the host (other processes' roots, unmounting what covers it).
TOOLKIT = '''
import ctypes, os, re, signal, socket
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
libc.shmat.restype = ctypes.c_void_p


def pids():
    try:
        return [p for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()]
    except OSError:
        return []


def unmount_all():
    """Detach every mount we can, deepest first, so that what they cover (the host's) shows."""
    for _ in range(3):
        try:
            points = [line.split()[4] for line in open("/proc/self/mountinfo")]
        except OSError:
            points = ["/proc", "/tmp", "/run/lock", "/dev/shm", "/var/tmp", "/"]
        for point in reversed(points):
            libc.umount2(point.encode(), 2)


def routes(path):
    return [path] + ["/proc/%s/root%s" % (pid, path) for pid in pids()]


def grab(path):
    """The bytes of a host file by any route, or None."""
    for attempt in range(2):
        for where in routes(path):
            try:
                with open(where, "rb") as handle:
                    return handle.read()
            except OSError:
                pass
        unmount_all()
    return None
'''


# -- running programs as root or as nobody ----------------------------------------------------
def _driver_env(package_dir: str) -> dict[str, str]:
    site_dirs = [p for p in sys.path if p.rstrip("/").endswith(("site-packages", "dist-packages"))]
    return {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": package_dir, "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONPATH": os.pathsep.join([package_dir, *site_dirs])}


def _as_nobody(python: str, package_dir: str, args: list[str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([python, *args], user=NOBODY, group=NOBODY, extra_groups=[], env=_driver_env(package_dir),
                          cwd=package_dir, capture_output=True, text=True, timeout=timeout)


class Runner:
    """Runs steps of programs in one mode; ``harness`` is the harness file that mode's sandbox runs.

    As nobody, one driver process serves every test of the module (a job per line), so that each
    test does not pay for an interpreter start and the imports."""

    def __init__(self, mode: str, python: str | None = None, package_dir: str | None = None) -> None:
        self.mode, self.python, self.package_dir = mode, python, package_dir
        self.harness = Path(package_dir, "textgym", "sandbox", "harness.py") if package_dir else HARNESS
        self.driver: subprocess.Popen | None = None

    def run(self, *steps: dict) -> list[list[dict]]:
        job = {"steps": [{"limits": LIMITS, "isolation": "auto", **s} for s in steps]}
        if self.python is None:
            namespace: dict = {"__name__": "textgym_attack_driver"}
            exec(compile(DRIVER, "<driver>", "exec"), namespace)
            return namespace["drive"](job)
        self.start()
        budget = sum(len(s["programs"]) * 2 * s.get("limits", LIMITS)["timeout"] + 15 for s in job["steps"])
        self.driver.stdin.write(json.dumps(job) + "\n")
        self.driver.stdin.flush()
        ready, _, _ = select.select([self.driver.stdout], [], [], budget)
        line = self.driver.stdout.readline() if ready else ""
        if not line:
            self.close()
            pytest.fail(f"the driver as uid {NOBODY} gave no result within {budget} s:\n{self.driver.stderr.read()[-3000:]}")
        return json.loads(line)

    def start(self) -> None:
        """The driver process (started before any test's snapshot, so that it is no leftover)."""
        if self.python is not None and (self.driver is None or self.driver.poll() is not None):
            self.driver = subprocess.Popen(
                [self.python, "-c", DRIVER], user=NOBODY, group=NOBODY, extra_groups=[],
                env=_driver_env(self.package_dir), cwd=self.package_dir, text=True,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )

    def close(self) -> None:
        if self.driver is not None and self.driver.poll() is None:
            self.driver.kill()
            self.driver.communicate()


def _probe_nobody(package_dir: str) -> tuple[str | None, str]:
    """An interpreter with which uid 65534 imports textgym.sandbox from ``package_dir``, or the reasons why none."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    interpreters = dict.fromkeys(p for p in (sys.executable, shutil.which(version), f"/usr/bin/{version}")
                                 if p and os.path.exists(p))
    code = ("import json, textgym.sandbox as s; from textgym.errors import ConfigError\n"
            "try:\n    mode = s.isolation_mode('auto')\nexcept ConfigError as err:\n    mode = 'refused: ' + str(err)\n"
            "print(json.dumps([s.__file__, mode]))")
    reasons = []
    for python in interpreters:
        try:
            done = _as_nobody(python, package_dir, ["-c", code], 60)
        except (OSError, subprocess.SubprocessError) as err:
            reasons.append(f"{python}: {err}")
            continue
        if done.returncode != 0:
            reasons.append(f"{python}: {done.stderr.strip().splitlines()[-1:] or done.returncode}")
            continue
        where, mode = json.loads(done.stdout)
        if not where.startswith(package_dir):
            reasons.append(f"{python} imported textgym.sandbox from {where}, not from {package_dir}")
        elif mode.startswith("refused"):
            return None, f"unprivileged user namespaces are unavailable to uid {NOBODY}: {mode}"
        else:
            return python, ""
    return None, f"uid {NOBODY} cannot import textgym.sandbox: " + "; ".join(reasons)


@pytest.fixture(scope="module")
def _nobody_runner():
    if os.geteuid() != 0:
        yield Runner("user")
        return
    package_dir = tempfile.mkdtemp(prefix="tgx-user-")
    try:
        shutil.copytree(ROOT / "textgym", Path(package_dir, "textgym"),
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        for path in [Path(package_dir), *Path(package_dir).rglob("*")]:
            os.lchown(path, NOBODY, NOBODY)
        os.chmod(package_dir, 0o755)
        python, why = _probe_nobody(package_dir)
        runner = Runner("user", python, package_dir) if python else None
        if runner is not None:
            runner.start()
        yield runner or why
        if runner is not None:
            runner.close()
    finally:
        shutil.rmtree(package_dir, ignore_errors=True)


@pytest.fixture(params=MODES)
def runner(request, _nobody_runner) -> Runner:
    if request.param == "root":
        if os.geteuid() != 0:
            pytest.skip("the tests run unprivileged: the root mode needs root")
        return Runner("root")
    if isinstance(_nobody_runner, str):
        pytest.skip(_nobody_runner)
    return _nobody_runner


# -- helpers -------------------------------------------------------------------------------------
def attack(code: str) -> str:
    """An attack program: the toolkit, then ``code`` (which defines ``f``)."""
    return TOOLKIT + textwrap.dedent(code)


def job(program: str, test: str, entry_point: str = "f") -> list[str]:
    return [program, test, entry_point]


def score(result: dict) -> float:
    return result["passed"] / result["total"] if result["total"] else 0.0


def assert_no_better_than_none(result: dict, baseline: dict) -> None:
    assert score(result) <= score(baseline), f"the attack scored {score(result)}: {result}"
    assert result["passed"] <= baseline["passed"], result


def secret(kind: str) -> str:
    return f"tgx{kind}{secrets.token_hex(16)}"


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def returns(value_digest: str) -> str:
    """A test that passes only when the candidate returns the string with this sha256 (not in the test itself)."""
    return (f"import hashlib\ndef check(candidate):\n"
            f"    assert hashlib.sha256(str(candidate()).encode()).hexdigest() == {value_digest!r}\n")


@contextlib.contextmanager
def nothing_left_behind():
    before = soak.snapshot()
    yield
    found = soak.wait_for_leftovers(before)
    assert not found, "the sandbox left things behind:\n" + soak.report(before, soak.snapshot(), found)


def steal(runner: Runner, program: str, test: str, **step) -> dict:
    """Run ``program`` and the ``return None`` baseline in one batch; assert the attack did no better."""
    with nothing_left_behind():
        (result, baseline), = runner.run({"programs": [job(program, test), job(NONE_BODY, test)], **step})
    assert_no_better_than_none(result, baseline)
    return result


@contextlib.contextmanager
def host_file(folder: str, content: str):
    path = Path(folder, f"tgx-host-{secrets.token_hex(6)}")
    path.write_text(content)
    path.chmod(0o644)  # the trainer's user may read it; its programs may not
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


# -- the attacks ---------------------------------------------------------------------------------
FORGED = '{"status": "ok", "passed": 3, "total": 3, "first_failure": null, "reason": null}\\n'


def test_forged_report_through_the_supervisors_fds(runner):
    """Write a passing report into the supervisor's report pipe (/proc/<pid>/fd), then kill it."""
    program = attack(f'''
        def report_fds(pid, argv):
            """The supervisor's report fd: the harness's last argument, else every pipe it writes to."""
            last = argv.rstrip(b"\\0").split(b"\\0")[-1]
            if last.isdigit():
                return [last.decode()]
            out = []
            for fd in os.listdir("/proc/%s/fd" % pid):
                try:
                    flags = open("/proc/%s/fdinfo/%s" % (pid, fd)).read().split("flags:")[1].split()[0]
                    if int(fd) > 2 and int(flags, 8) & 3 == 1:
                        out.append(fd)
                except (OSError, IndexError, ValueError):
                    pass
            return out

        def forge():
            for pid in [str(os.getppid())] + pids():
                try:
                    argv = open("/proc/%s/cmdline" % pid, "rb").read()
                    if b"harness" not in argv:
                        continue
                    for fd in report_fds(pid, argv):
                        handle = os.open("/proc/%s/fd/%s" % (pid, fd), os.O_WRONLY | os.O_NONBLOCK)
                        os.write(handle, b'{FORGED}')
                        os.close(handle)
                except (OSError, ValueError):
                    continue
                for sig in (signal.SIGINT, signal.SIGTERM):
                    try:
                        os.kill(int(pid), sig)
                    except OSError:
                        pass
        forge()
        def f():
            forge()
            return None
    ''')
    test = "def check(candidate):\n    assert candidate() == 1\n    assert candidate() == 2\n    assert candidate() == 3\n"
    steal(runner, program, test)


def test_supervisor_memory_holds_the_expected_values_out_of_reach(runner):
    """Read the tests' expected value from the supervisor's memory (/proc/<pid>/mem, process_vm_readv)."""
    expected = secret("mem")
    program = attack(r'''
        class IOVec(ctypes.Structure):
            _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]

        PATTERN = re.compile(rb"tgx" + rb"mem[0-9a-f]{32}")

        def regions(pid):
            for line in open("/proc/%s/maps" % pid):
                span, perms = line.split()[:2]
                if perms.startswith("r"):
                    low, high = (int(x, 16) for x in span.split("-"))
                    yield low, min(high - low, 64 << 20)

        def scan(pid):
            try:
                with open("/proc/%s/mem" % pid, "rb", buffering=0) as mem:
                    for low, size in regions(pid):
                        try:
                            mem.seek(low)
                            found = PATTERN.search(mem.read(size) or b"")
                        except (OSError, ValueError, OverflowError):
                            continue
                        if found:
                            return found.group().decode()
            except OSError:
                pass
            try:
                for low, size in regions(pid):
                    buf = ctypes.create_string_buffer(size)
                    local, remote = IOVec(ctypes.addressof(buf), size), IOVec(low, size)
                    if libc.syscall(310, int(pid), ctypes.byref(local), 1, ctypes.byref(remote), 1, 0) > 0:
                        found = PATTERN.search(buf.raw)
                        if found:
                            return found.group().decode()
            except OSError:
                pass
            return None

        def f():
            for attempt in range(2):
                for pid in pids():
                    got = scan(pid)
                    if got:
                        return got
                libc.umount2(b"/proc", 2)  # the host's /proc may be underneath
            return None
    ''')
    steal(runner, program, f"def check(candidate):\n    assert candidate() == {expected!r}\n")


def test_host_files_in_tmp_and_run_lock_are_out_of_reach(runner):
    """Read a file of the host's /tmp and /run/lock, directly, via /proc/<pid>/root or after umount2."""
    value = secret("file")
    with host_file(tempfile.gettempdir(), value[:20]) as in_tmp, host_file("/run/lock", value[20:]) as in_lock:
        program = attack(f'''
            def f():
                parts = [grab({str(in_tmp)!r}), grab({str(in_lock)!r})]
                return b"".join(p or b"" for p in parts).decode()
        ''')
        steal(runner, program, returns(digest(value)))


def test_humaneval_canonical_solution_is_out_of_reach(runner):
    """Return HumanEval/0's canonical solution, read from the installed dataset (site-packages)."""
    from textgym.tasks.code import humaneval_path

    path = humaneval_path()
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        solution = json.loads(handle.readline())["canonical_solution"]
    program = attack(f'''
        import gzip, io, json
        def f():
            data = grab({str(path)!r})
            if data is None:
                return None
            return json.loads(gzip.GzipFile(fileobj=io.BytesIO(data)).readline())["canonical_solution"]
    ''')
    steal(runner, program, returns(digest(solution)))


def test_harness_cannot_be_rewritten(runner):
    """Rewrite the harness (user-owned in the user mode) so that every later report passes; then an
    honest wrong program must still score 0 and the file must be byte for byte the same."""
    original = runner.harness.read_bytes()
    program = attack(f'''
        HOOK = b"def write_report(fd: int, result: dict) -> None:\\n"
        FORCE = HOOK + b"    result = dict(result, status='ok', passed=result['total'] or 1, first_failure=None)\\n"
        def f():
            for attempt in range(2):
                for where in routes({str(runner.harness)!r}):
                    try:
                        with open(where, "r+b") as handle:
                            text = handle.read()
                            handle.seek(0)
                            handle.write(text.replace(HOOK, FORCE) if HOOK in text else text + b"# tgx-tampered\\n")
                            handle.truncate()
                        return "rewritten"
                    except OSError:
                        pass
                unmount_all()
            return None
    ''')
    test = "def check(candidate):\n    assert candidate() == 1\n"
    try:
        with nothing_left_behind():
            (result, baseline), (later,) = runner.run(
                {"programs": [job(program, test), job(NONE_BODY, test)]}, {"programs": [job(NONE_BODY, test)]})
        assert_no_better_than_none(result, baseline)
        assert later["passed"] == 0 and later["status"] == "assertion_failure", later
        assert runner.harness.read_bytes() == original, "the program rewrote the harness"
    finally:
        if runner.harness.read_bytes() != original:
            runner.harness.write_bytes(original)


def test_host_processes_are_invisible(runner):
    """Find a host process (its command line holds the secret) after unmounting the sandbox's /proc."""
    value = secret("proc")
    sentinel = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", value])
    try:
        program = attack(r'''
            def look():
                for pid in pids():
                    try:
                        found = re.search(rb"tgx" + rb"proc[0-9a-f]{32}", open("/proc/%s/cmdline" % pid, "rb").read())
                    except OSError:
                        continue
                    if found:
                        return found.group().decode()
            def f():
                got = look()
                if got is None:
                    for point in ("/proc", "/proc", "/"):
                        libc.umount2(point.encode(), 2)
                    got = look()
                return got
        ''')
        steal(runner, program, returns(digest(value)))
    finally:
        sentinel.kill()
        sentinel.wait()


@contextlib.contextmanager
def servers(value: str):
    """A Unix socket in the host's /tmp, an abstract one and a TCP one on 127.0.0.1: each sends ``value``."""
    path = os.path.join(tempfile.gettempdir(), f"tgx-sock-{secrets.token_hex(6)}")
    unix, abstract, tcp = (socket.socket(socket.AF_UNIX), socket.socket(socket.AF_UNIX), socket.socket())
    unix.bind(path)
    os.chmod(path, 0o777)
    abstract.bind(f"\0tgx-abs-{secrets.token_hex(6)}")
    tcp.bind(("127.0.0.1", 0))
    stop = threading.Event()

    def serve(listener: socket.socket) -> None:
        listener.listen(8)
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            with conn:
                conn.sendall(value.encode())

    threads = [threading.Thread(target=serve, args=(s,), daemon=True) for s in (unix, abstract, tcp)]
    for thread in threads:
        thread.start()
    try:
        yield path, abstract.getsockname(), tcp.getsockname()[1]
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        for s in (unix, abstract, tcp):
            s.close()
        os.unlink(path)


def test_unix_and_tcp_servers_of_the_host_are_unreachable(runner):
    """Connect to a Unix socket in the host's /tmp (directly, via /proc/<pid>/root, after umount2), an
    abstract Unix socket and a TCP server on 127.0.0.1."""
    value = secret("sock")
    with servers(value) as (path, abstract, port):
        program = attack(f'''
            def receive(family, address):
                s = socket.socket(family)
                s.settimeout(0.5)
                try:
                    s.connect(address)
                    return s.recv(100).decode()
                except OSError:
                    return None
                finally:
                    s.close()
            def f():
                got = receive(socket.AF_INET, ("127.0.0.1", {port})) or receive(socket.AF_UNIX, {abstract!r})
                for attempt in range(2):
                    for where in routes({path!r}):
                        got = got or receive(socket.AF_UNIX, where)
                    unmount_all()
                return got
        ''')
        steal(runner, program, returns(digest(value)))


def _carry(runner: Runner, writer: str, reader: str, value: str) -> None:
    """Episode 1 (``writer``, knows ``value``) leaves a note; episode 2 (``reader``) must not find it."""
    test = returns(digest(value))
    with nothing_left_behind():
        (written,), (result, baseline) = runner.run(
            {"programs": [job(writer, "def check(candidate):\n    assert candidate() is None\n")]},
            {"programs": [job(reader, test), job(NONE_BODY, test)]})
    assert_no_better_than_none(result, baseline)


def test_sysv_ipc_does_not_carry_notes_between_episodes(runner):
    """A System V shared memory segment and message queue of one episode, read by the next."""
    value, key = secret("shm"), 0x7467_0000 + secrets.randbelow(0xFFFF)
    writer = attack(f'''
        def f():
            note = {value!r}.encode()
            shmid = libc.shmget({key}, 4096, 0o1666)
            if shmid >= 0:
                addr = libc.shmat(shmid, None, 0)
                if addr not in (None, ctypes.c_void_p(-1).value):
                    ctypes.memmove(addr, note, len(note))
            qid = libc.msgget({key}, 0o1666)
            if qid >= 0:
                message = ctypes.create_string_buffer(8 + len(note))
                ctypes.memmove(ctypes.addressof(message), (1).to_bytes(8, "little") + note, 8 + len(note))
                libc.msgsnd(qid, message, len(note), 0o4000)
            return None
    ''')
    reader = attack(f'''
        def f():
            shmid = libc.shmget({key}, 0, 0)
            if shmid >= 0:
                addr = libc.shmat(shmid, None, 0)
                if addr not in (None, ctypes.c_void_p(-1).value):
                    return ctypes.string_at(addr, 36).decode()
            qid = libc.msgget({key}, 0)
            if qid >= 0:
                message = ctypes.create_string_buffer(8 + 100)
                size = libc.msgrcv(qid, message, 100, 0, 0o4000)
                if size > 0:
                    return message.raw[8:8 + size].decode()
            return None
    ''')
    try:
        _carry(runner, writer, reader, value)
    finally:  # a segment or queue that outlived its sandbox: remove it (ours only, by key)
        libc = ctypes.CDLL(None, use_errno=True)
        for get, ctl, args in ((libc.shmget, libc.shmctl, (0, 0)), (libc.msgget, libc.msgctl, (0,))):
            ident = get(key, *args)
            if ident >= 0:
                ctl(ident, 0, None)  # IPC_RMID


def test_world_writable_folders_do_not_carry_notes_between_episodes(runner):
    """Notes in /run/lock, /var/tmp, /dev/shm and /tmp of one episode (plus 48 MiB of filler in /run/lock),
    read by the next."""
    value, name = secret("note"), f"tgx-note-{secrets.token_hex(6)}"
    folders = ("/run/lock", "/var/tmp", "/dev/shm", "/tmp")
    writer = attack(f'''
        def f():
            for folder in {folders!r}:
                try:
                    with open(folder + "/{name}", "w") as handle:
                        handle.write({value!r})
                except OSError:
                    pass
            for i in range(3):
                try:
                    with open("/run/lock/{name}-filler%d" % i, "wb") as handle:
                        handle.write(bytes(16 << 20))
                except OSError:
                    pass
            return None
    ''')
    reader = attack(f'''
        def f():
            for folder in {folders!r}:
                got = grab(folder + "/{name}")
                if got:
                    return got.decode()
            return None
    ''')
    try:
        _carry(runner, writer, reader, value)
    finally:
        for path in [Path(f, name) for f in folders] + list(Path("/run/lock").glob(f"{name}-filler*")):
            path.unlink(missing_ok=True)


def test_kernel_keyrings_do_not_carry_notes_between_episodes(runner):
    """A key in the user, user-session or session keyring of one episode, read by the next."""
    value, name = secret("key"), f"tgx-key-{secrets.token_hex(6)}"
    writer = attack(f'''
        def f():
            note = {value!r}.encode()
            for ring in (-4, -5, -3):  # user, user session, session keyring
                key = libc.syscall(248, b"user", b"{name}", note, len(note), ring)  # add_key
                if key > 0:
                    libc.syscall(250, 15, key, 60)  # KEYCTL_SET_TIMEOUT: gone within a minute anyway
            return None
    ''')
    reader = attack(f'''
        def f():
            found = [libc.syscall(250, 10, ring, b"user", b"{name}", 0) for ring in (-4, -5, -3)]  # KEYCTL_SEARCH
            found.append(libc.syscall(249, b"user", b"{name}", None, 0))  # request_key
            for key in found:
                if key > 0:
                    buf = ctypes.create_string_buffer(100)
                    size = libc.syscall(250, 11, key, buf, 100)  # KEYCTL_READ
                    if size > 0:
                        return buf.raw[:size].decode()
            return None
    ''')
    _carry(runner, writer, reader, value)


def test_memory_bounds_the_whole_sandbox(runner):
    """memory_mb=1024: four forked children each touching 700 MiB must not all succeed."""
    program = attack('''
        def f():
            r, w = os.pipe()
            for _ in range(4):
                if os.fork() == 0:
                    block = bytearray(b"\\1") * (700 << 20)
                    os.write(w, b"1")
                    import time
                    time.sleep(30)
                    os._exit(0)
            got = b""
            while len(got) < 4:
                got += os.read(r, 4)
            return len(got)
    ''')
    result = steal(runner, program, "def check(candidate):\n    assert candidate() == 4\n",
                   limits={"timeout": 6.0, "memory_mb": 1024})
    assert result["status"] in ("memory_limit", "crash"), (result["status"], result["reason"])


def test_memory_in_unmapped_memfds_counts_too(runner):
    """memory_mb=1024: three children each holding 56 memfds of 16 MiB (2.6 GiB, mapped nowhere) must fail."""
    program = attack('''
        def f():
            r, w = os.pipe()
            for _ in range(3):
                if os.fork() == 0:
                    held, fds = 0, []
                    try:
                        for i in range(56):
                            fd = os.memfd_create("tgx%d" % i)
                            os.posix_fallocate(fd, 0, 16 << 20)  # shmem pages, in no process's PSS
                            fds.append(fd)
                            held += 16 << 20
                    except OSError:
                        pass
                    os.write(w, held.to_bytes(8, "big"))
                    import time
                    time.sleep(30)
                    os._exit(0)
            return sum(int.from_bytes(os.read(r, 8), "big") for _ in range(3))
    ''')
    steal(runner, program, "def check(candidate):\n    assert candidate() >= 2 * 1024 * 2**20\n",
          limits={"timeout": 6.0, "memory_mb": 1024})


def test_nested_user_namespace_cannot_mount_a_tmpfs(runner):
    """unshare(CLONE_NEWUSER | CLONE_NEWNS), then mount a 20 GB tmpfs."""
    program = attack('''
        def f():
            if libc.unshare(0x10000000 | 0x00020000) != 0:
                return None
            for target in (b"/tmp", b"/"):
                if libc.mount(b"tmpfs", target, b"tmpfs", 0, b"size=20g") == 0:
                    return "mounted"
            return None
    ''')
    steal(runner, program, "def check(candidate):\n    assert candidate() == 'mounted'\n")


def test_daemons_do_not_outlive_the_sandbox(runner):
    """A setsid double-forked daemon (and plain forked children) sleeping for a minute."""
    program = attack('''
        import time
        def f():
            for _ in range(2):
                if os.fork() == 0:
                    os.setsid()
                    if os.fork() == 0:
                        time.sleep(60)
                    os._exit(0)
            if os.fork() == 0:
                time.sleep(60)
                os._exit(0)
            return None
    ''')
    steal(runner, program, "def check(candidate):\n    assert candidate() == 1\n")


def _spin_rounds(seconds: float) -> int:
    """Rounds of the honest programs' loop that take about ``seconds`` of CPU here."""
    rounds, start = 200_000, time.process_time()
    x = 0
    for _ in range(rounds):
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
    return int(rounds * seconds / max(time.process_time() - start, 1e-3))


def test_cpu_hogs_do_not_fail_honest_neighbours(runner):
    """A batch of 8: two hogs (forked setsid children spinning, and the hog itself) and six honest programs
    needing ~0.3 s of CPU each; all six must pass."""
    rounds = _spin_rounds(0.3)
    x = 0
    for _ in range(rounds):
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
    honest = ("def f(n):\n    x = 0\n    for _ in range(n):\n        x = (x * 1103515245 + 12345) & 0x7FFFFFFF\n"
              "    return x\n")
    hog = attack('''
        def f(n):
            for _ in range(6):
                try:
                    if os.fork() == 0:
                        os.setsid()
                        while True:
                            pass
                except OSError:
                    pass
            while True:
                pass
    ''')
    test = f"def check(candidate):\n    assert candidate({rounds}) == {x}\n"
    programs = [job(hog, test), job(hog, test)] + [job(honest, test)] * 6
    with nothing_left_behind():
        (*results,), = runner.run({"programs": programs, "workers": 8, "limits": {"timeout": 2.0}})
    assert [r["status"] for r in results[2:]] == ["ok"] * 6, [(r["status"], r["reason"]) for r in results]
    assert all(r["passed"] == 0 for r in results[:2]), results[:2]


def _forge_frame(payload: str) -> str:
    """Module-level code writing a raw reply frame (4-byte length + ``payload``) to the candidate's reply pipe."""
    return f'''
        import os
        def reply_fds():
            for fd in os.listdir("/proc/self/fd"):
                try:
                    flags = int(open("/proc/self/fdinfo/%s" % fd).read().split("flags:")[1].split()[0], 8)
                    if int(fd) > 2 and flags & 3 == 1 and os.readlink("/proc/self/fd/" + fd).startswith("pipe:"):
                        yield int(fd)
                except (OSError, IndexError, ValueError):
                    pass
        def forge():
            frame = {payload}
            frame = len(frame).to_bytes(4, "big") + frame
            for fd in list(reply_fds()):
                try:
                    os.write(fd, frame)
                except OSError:
                    pass
    '''


def test_strings_in_results_are_bounded(runner):
    """A 900 KB exception message and class name and forged 900 KB reply frames: reason stays short."""
    huge = "'x' * 900_000"  # under the 1 MB the launcher reads of a report: 900 KB came through before
    frame = "b'{\"exc\": \"' + b'E' * 450_000 + b'\", \"msg\": \"' + b'm' * 450_000 + b'\"}'"
    programs = [
        f"raise ValueError({huge})\ndef f():\n    return None\n",
        f"raise type({huge}, (Exception,), {{}})()\ndef f():\n    return None\n",
        f"def f():\n    raise type({huge}, (Exception,), {{}})({huge})\n",
        textwrap.dedent(_forge_frame(frame)) + "forge()\ndef f():\n    return None\n",
        textwrap.dedent(_forge_frame(frame)) + "def f():\n    forge()\n    return None\n",
        textwrap.dedent(_forge_frame("b'{\"ok\": \"' + b'y' * 900_000 + b'\"}'"))
        + "def f():\n    forge()\n    return None\n",
    ]
    test = "def check(candidate):\n    assert candidate() == 1, 'wrong'\n"
    with nothing_left_behind():
        (*results, baseline), = runner.run({"programs": [job(p, test) for p in programs] + [job(NONE_BODY, test)]})
    for result in results:
        assert_no_better_than_none(result, baseline)
        assert len(result["reason"] or "") <= 1000, (result["status"], len(result["reason"]))
        assert len(result["first_failure"] or "") <= 300, result["first_failure"][:400]
        assert len(result["stdout"]) + len(result["stderr"]) <= 20_000


def test_a_quick_soak_leaves_nothing_behind(runner):
    """40 mixed episodes of benchmarks/sandbox_soak.py in batches of 8: right verdicts, nothing left
    (no CPU hogs: each costs its timeout twice, and the hog batch above has them)."""
    pairs = [(k, p) for k, p in soak.episodes(44) if k != "cpu-hog"][:40]
    steps = [{"programs": [job(p.program, p.test, p.entry_point) for _, p in pairs[i:i + soak.BATCH]],
              "workers": soak.BATCH, "limits": {"timeout": 1.5, "memory_mb": 512}}
             for i in range(0, len(pairs), soak.BATCH)]
    with nothing_left_behind():
        outcomes = runner.run(*steps)
    results = [r for step in outcomes for r in step]
    kinds = [k for k, _ in pairs]
    wrong = [f"{k}: {r['status']} {r['passed']}/{r['total']} {r['reason']}" for k, r in zip(kinds, results)
             if (r["status"] == "ok" and bool(r["total"]) and r["passed"] == r["total"]) != soak.BODIES[k][2]]
    assert not wrong, wrong


# -- isolation modes -----------------------------------------------------------------------------
def test_isolation_none_is_a_loud_opt_in():
    with pytest.warns(RuntimeWarning, match="UNCONFINED"):
        box = Sandbox(SandboxLimits(timeout=TIMEOUT), isolation="none")
    assert box.run(Program("def f():\n    return 1\n", "assert candidate() == 1\n", "f")).all_pass


def test_auto_refuses_to_score_without_namespaces(monkeypatch):
    """Where unshare fails (simulated), ``auto`` and ``namespace`` raise and say how to enable isolation;
    nothing is run unconfined."""
    monkeypatch.setattr(launcher, "_namespace_support", lambda: (None, "none", "simulated: unshare failed"))
    marker = Path(tempfile.gettempdir(), f"tgx-ran-{secrets.token_hex(6)}")
    program = Program(f"open({str(marker)!r}, 'w').close()\ndef f():\n    return 1\n", "assert candidate() == 1\n", "f")
    for isolation in ("auto", "namespace"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            box = Sandbox(SandboxLimits(timeout=TIMEOUT), isolation=isolation)
        for run in (box.run, lambda p, box=box: box.run_batch([p, p])):
            with pytest.raises(ConfigError, match="user namespaces.*isolation='none'"):
                run(program)
    assert not marker.exists()

