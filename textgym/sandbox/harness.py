"""The in-sandbox harness of :mod:`textgym.sandbox` (run as a script; standard library only).

The launcher starts it in fresh network, PID, mount, IPC and UTS namespaces
(and a user namespace when the trainer is not root).  Inside, three roles:

* the *supervisor* (this script's process) reads the job from stdin, compiles
  the program, starts the candidate and then runs the test statements itself.
  It never executes candidate code.  ``candidate(...)`` in the tests is a
  proxy: the arguments go to the candidate over a pipe and only plain data
  (None, bool, int, float, complex, str, bytes, list, tuple, dict, set,
  frozenset -- exact types, no subclasses) comes back, so an object whose
  ``__eq__`` always returns True, a patched builtin or ``os._exit`` in the
  candidate changes nothing here.  It is not dumpable, and the verdict
  leaves through a file descriptor no other process holds.
* the *init* (forked; PID 1 of a new PID namespace in which the supervisor
  does not exist) enters a new mount namespace, builds the candidate's root
  (:func:`build_root`: the interpreter, its standard library and the system
  libraries read-only, a private size-capped ``/tmp``, a few device nodes,
  its own ``/proc``), pivots into it and forks the candidate.  Then it reaps
  every process of the namespace and bounds the memory (PSS) and CPU time of
  the whole tree; when it exits, the kernel kills every process left.
* the *candidate* closes every file descriptor but its two pipes, drops its
  credentials (a throw-away uid when we are root; otherwise ``nobody`` in a
  nested user namespace: no capability there and none where the supervisor
  lives), sets its rlimits, ``PR_SET_NO_NEW_PRIVS`` and a seccomp filter
  (:data:`DENIED`, namespace-creating clones), runs the program and answers
  calls.  It is forked before the tests are read, so it holds no copy of them.

Without isolation (``isolation="none"``, an explicit opt-in) the candidate is
forked directly, with the same rlimits, credentials (when root) and seccomp
filter, but it shares the trainer's filesystem, network and processes.

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


# -- kernel interfaces (ctypes; the harness runs with the standard library only) --------------
LIBC = ctypes.CDLL(None, use_errno=True)
LIBC.syscall.restype = ctypes.c_long
CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID = 0x00020000, 0x10000000, 0x20000000
#: every namespace flag of clone/unshare (time, ns, cgroup, uts, ipc, user, pid, net)
CLONE_NAMESPACES = 0x80 | 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER, MNT_DETACH = 38, 22, 2, 2
MS_PRIVATE, MS_RELATIME, MS_NOATIME, MS_NODIRATIME = 1 << 18, 1 << 21, 1024, 2048
# statvfs f_flag bits -> mount flags (a remount must keep the flags the source mount has locked)
ST_TO_MS = ((1, MS_RDONLY), (2, MS_NOSUID), (4, MS_NODEV), (8, MS_NOEXEC), (1024, MS_NOATIME),
            (2048, MS_NODIRATIME), (4096, MS_RELATIME))


def check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    def enc(text: str | None) -> bytes | None:
        return text.encode() if text is not None else None

    check(LIBC.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)), f"mount {target}")


def unshare(flags: int) -> None:
    check(LIBC.unshare(flags), "unshare")


# -- seccomp: a classic BPF filter, built here -----------------------------------------------
#: system calls the candidate may not make (EPERM), by name; the numbers per architecture follow
DENIED = (
    "mount", "umount2", "pivot_root", "chroot", "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount",
    "fspick", "mount_setattr", "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "kcmp",
    "unshare", "setns", "shmget", "shmat", "shmctl", "shmdt", "semget", "semop", "semctl", "semtimedop",
    "msgget", "msgsnd", "msgrcv", "msgctl", "keyctl", "add_key", "request_key", "bpf", "perf_event_open",
    "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register", "kexec_load", "kexec_file_load",
    "init_module", "finit_module", "delete_module", "reboot", "swapon", "swapoff", "acct", "quotactl",
    "open_by_handle_at", "name_to_handle_at", "fanotify_init", "sethostname", "setdomainname",
    "settimeofday", "clock_settime", "adjtimex", "syslog",
    "memfd_create",  # its pages are in no process's PSS: memory the init could not see
)
#: (audit arch, {name: number}) from the kernel's unistd headers
SYSCALLS = {
    "x86_64": (0xC000003E, dict(
        mount=165, umount2=166, pivot_root=155, chroot=161, open_tree=428, move_mount=429, fsopen=430,
        fsconfig=431, fsmount=432, fspick=433, mount_setattr=442, ptrace=101, process_vm_readv=310,
        process_vm_writev=311, pidfd_getfd=438, kcmp=312, unshare=272, setns=308, shmget=29, shmat=30,
        shmctl=31, shmdt=67, semget=64, semop=65, semctl=66, semtimedop=220, msgget=68, msgsnd=69, msgrcv=70,
        msgctl=71, keyctl=250, add_key=248, request_key=249, bpf=321, perf_event_open=298, userfaultfd=323,
        io_uring_setup=425, io_uring_enter=426, io_uring_register=427, kexec_load=246, kexec_file_load=320,
        init_module=175, finit_module=313, delete_module=176, reboot=169, swapon=167, swapoff=168, acct=163,
        quotactl=179, open_by_handle_at=304, name_to_handle_at=303, fanotify_init=300, sethostname=170,
        setdomainname=171, settimeofday=164, clock_settime=227, adjtimex=159, syslog=103, memfd_create=319,
        fcntl=72, clone=56, clone3=435,
    )),
    "aarch64": (0xC00000B7, dict(
        mount=40, umount2=39, pivot_root=41, chroot=51, open_tree=428, move_mount=429, fsopen=430,
        fsconfig=431, fsmount=432, fspick=433, mount_setattr=442, ptrace=117, process_vm_readv=270,
        process_vm_writev=271, pidfd_getfd=438, kcmp=272, unshare=97, setns=268, shmget=194, shmat=196,
        shmctl=195, shmdt=197, semget=190, semop=193, semctl=191, semtimedop=192, msgget=186, msgsnd=189,
        msgrcv=188, msgctl=187, keyctl=219, add_key=217, request_key=218, bpf=280, perf_event_open=241,
        userfaultfd=282, io_uring_setup=425, io_uring_enter=426, io_uring_register=427, kexec_load=104,
        kexec_file_load=294, init_module=105, finit_module=273, delete_module=106, reboot=142, swapon=224,
        swapoff=225, acct=89, quotactl=60, open_by_handle_at=265, name_to_handle_at=264, fanotify_init=262,
        sethostname=161, setdomainname=162, settimeofday=170, clock_settime=112, adjtimex=171, syslog=116,
        memfd_create=279, fcntl=25, clone=220, clone3=435,
    )),
}
RET_KILL, RET_ALLOW, RET_EPERM, RET_ENOSYS = 0x80000000, 0x7FFF0000, 0x00050000 | 1, 0x00050000 | 38
LD_W_ABS, JEQ, JSET, JGE, RET = 0x20, 0x15, 0x45, 0x35, 0x06
F_SETPIPE_SZ = 1031


class SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]


def seccomp_program(machine: str) -> list[tuple[int, int, int, int]]:
    """The filter: other ABIs are killed; DENIED, namespace-creating clones and growing a pipe's
    buffer (``F_SETPIPE_SZ``: kernel memory outside the tree's PSS) get EPERM; clone3 gets
    ENOSYS (its flags are behind a pointer; the C library falls back to clone)."""
    arch, numbers = SYSCALLS[machine]
    prog = [(LD_W_ABS, 0, 0, 4), (JEQ, 1, 0, arch), (RET, 0, 0, RET_KILL), (LD_W_ABS, 0, 0, 0)]
    if machine == "x86_64":  # the x32 ABI shares the arch value: refuse it
        prog += [(JGE, 0, 1, 0x40000000), (RET, 0, 0, RET_EPERM)]
    for name in DENIED:
        prog += [(JEQ, 0, 1, numbers[name]), (RET, 0, 0, RET_EPERM)]
    prog += [(JEQ, 0, 1, numbers["clone3"]), (RET, 0, 0, RET_ENOSYS),
             (JEQ, 0, 4, numbers["fcntl"]), (LD_W_ABS, 0, 0, 24),  # fcntl's command (args[1])
             (JEQ, 0, 1, F_SETPIPE_SZ), (RET, 0, 0, RET_EPERM), (RET, 0, 0, RET_ALLOW),
             (JEQ, 0, 3, numbers["clone"]), (LD_W_ABS, 0, 0, 16),  # clone's flags (low 32 bits of args[0])
             (JSET, 0, 1, CLONE_NAMESPACES), (RET, 0, 0, RET_EPERM), (RET, 0, 0, RET_ALLOW)]
    return prog


def install_seccomp() -> None:
    """No new privileges, then the filter (irreversible for this process and its children)."""
    check(LIBC.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    prog = seccomp_program(os.uname().machine)
    array = (SockFilter * len(prog))(*[SockFilter(*ins) for ins in prog])
    fprog = SockFprog(len(prog), array)
    check(LIBC.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0), "prctl(PR_SET_SECCOMP)")


# -- the candidate's filesystem: a minimal read-only root --------------------------------------
def bind_readonly(source: str, target: str) -> None:
    mount(source, target, None, MS_BIND | MS_REC, None)
    locked = os.statvfs(source).f_flag
    flags = MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV
    flags |= sum(ms for st, ms in ST_TO_MS if locked & st)
    mount(None, target, None, flags, None)


def build_root(job: dict, root: str) -> None:
    """A fresh tmpfs at ``root`` holding only the paths of ``job["view"]`` (read-only binds), the
    symlinks of ``job["links"]``, a few device nodes, a private size-capped ``/tmp`` with the work
    dir and an empty ``/proc`` mount point; ``job["hide"]`` inside the view are covered by empty
    read-only tmpfs."""
    mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755")
    for path in job["view"]:
        target = root + path
        if os.path.isdir(path):
            os.makedirs(target, exist_ok=True)
        elif os.path.exists(path):
            os.makedirs(os.path.dirname(target), exist_ok=True)
            open(target, "w").close()
        else:
            continue
        bind_readonly(path, target)
    for link, dest in job["links"]:
        if not os.path.lexists(root + link):
            os.makedirs(os.path.dirname(root + link), exist_ok=True)
            os.symlink(dest, root + link)
    for path in job["hide"]:
        if os.path.isdir(root + path):
            mount("tmpfs", root + path, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=4k")
    os.makedirs(root + "/dev", exist_ok=True)
    for name in ("null", "zero", "full", "random", "urandom"):
        open(f"{root}/dev/{name}", "w").close()
        mount(f"/dev/{name}", f"{root}/dev/{name}", None, MS_BIND, None)
    for name in ("proc", "tmp"):
        os.makedirs(f"{root}/{name}", exist_ok=True)
    mount("tmpfs", root + "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"size={int(job['disk_mb'])}m,mode=1777")
    os.mkdir(root + "/tmp/work", 0o700)
    if job["uid"] is not None:
        os.chown(root + "/tmp/work", job["uid"], job["uid"])


def enter_root(job: dict) -> None:
    """In a new mount namespace: build the root, mount this PID namespace's /proc, pivot into it."""
    unshare(CLONE_NEWNS)
    mount(None, "/", None, MS_REC | MS_PRIVATE, None)
    root = "/tmp"  # any directory: the new tmpfs covers it in this namespace only
    build_root(job, root)
    # /proc before the old root goes: mounting a proc needs a fully visible one in the namespace
    mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None)
    os.chdir(root)
    check(LIBC.syscall(SYSCALLS[os.uname().machine][1]["pivot_root"], b".", b"."), "pivot_root")
    check(LIBC.umount2(b".", MNT_DETACH), "umount old root")
    os.chdir("/")
    mount(None, "/", None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, None)
    os.chdir("/tmp/work")


def drop_privileges(job: dict) -> None:
    """No capabilities and credentials that are not the supervisor's.

    As root: a throw-away uid.  Unprivileged: a nested user namespace in which we are
    ``nobody`` (65534): no capability there, none in the supervisor's namespace.
    """
    if job["uid"] is not None:
        os.setgroups([])
        os.setresgid(job["uid"], job["uid"], job["uid"])
        os.setresuid(job["uid"], job["uid"], job["uid"])
        return
    if not job["isolate"]:
        return  # isolation="none": the trainer's own user
    outer_uid, outer_gid = os.geteuid(), os.getegid()
    unshare(CLONE_NEWUSER)
    for name, text in (("setgroups", "deny"), ("uid_map", f"65534 {outer_uid} 1"), ("gid_map", f"65534 {outer_gid} 1")):
        with open(f"/proc/self/{name}", "w") as handle:
            handle.write(text)
    os.setresgid(65534, 65534, 65534)
    os.setresuid(65534, 65534, 65534)


# -- the candidate's PID namespace: a small init that watches the whole process tree -----------
EXIT_MEMORY, EXIT_CPU, EXIT_SETUP = 120, 121, 122
PAGE, CLOCK_TICKS = os.sysconf("SC_PAGE_SIZE"), os.sysconf("SC_CLK_TCK")


def tree_usage(memory: int) -> tuple[int, float]:
    """(memory in bytes, CPU seconds) of the live processes of this PID namespace but its init; CPU time
    includes what each has reaped of its own children.  Memory is the resident set size while that stays
    within ``memory`` (cheap to read), else the proportional set size (shared pages counted once)."""
    pids = [name for name in os.listdir("/proc") if name.isdigit() and name != "1"]
    rss, ticks = 0, 0
    for name in pids:
        try:
            with open(f"/proc/{name}/stat", "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
            ticks += sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
            rss += int(fields[21]) * PAGE  # rss (pages)
        except (OSError, IndexError, ValueError):
            continue  # it just ended
    if rss <= memory:
        return rss, ticks / CLOCK_TICKS
    pss = 0
    for name in pids:
        try:
            with open(f"/proc/{name}/smaps_rollup", "rb") as handle:
                for line in handle:
                    if line.startswith(b"Pss:"):
                        pss += int(line.split()[1]) * 1024
                        break
        except (OSError, IndexError, ValueError):
            continue
    return pss, ticks / CLOCK_TICKS


def init_main(job: dict, child: int) -> None:
    """PID 1 of the candidate's namespace: reap everything, bound the memory and CPU time of the
    whole tree, exit with the candidate's status (ending the namespace kills every process in it)."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_DFL)  # PID 1 ignores signals it has no handler for
    memory, cpu = job["memory_bytes"], job["tree_cpu_seconds"]
    while True:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                os._exit(EXIT_SETUP)
            if pid == 0:
                break
            if pid == child:
                if os.WIFSIGNALED(status):
                    os._exit(64 + os.WTERMSIG(status))
                os._exit(min(os.WEXITSTATUS(status), 63))
        pss, seconds = tree_usage(memory)
        reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
        seconds += reaped.ru_utime + reaped.ru_stime
        if pss > memory:
            os._exit(EXIT_MEMORY)
        if seconds > cpu:
            os._exit(EXIT_CPU)
        time.sleep(0.01)


def exit_reason(status: int) -> tuple[str, str]:
    """Why the candidate's namespace ended, from its init's exit status."""
    if os.WIFSIGNALED(status):
        return "crash", f"the sandbox was killed by signal {signal.Signals(os.WTERMSIG(status)).name}"
    code = os.WEXITSTATUS(status)
    if code == EXIT_MEMORY:
        return "memory_limit", "the program's processes together used more memory than memory_mb"
    if code == EXIT_CPU:
        return "timeout", "the program's processes together used more CPU time than allowed"
    if code == EXIT_SETUP:
        return "crash", "the sandbox could not start the program"
    if code >= 64:
        sig = code - 64
        if sig == signal.SIGXCPU:
            return "timeout", "CPU time limit exceeded (SIGXCPU)"
        name = signal.Signals(sig).name if sig in signal.valid_signals() else str(sig)
        return "crash", f"the program's process was killed by signal {name}"
    return "crash", f"the program's process exited with status {code}"


# -- supervisor ----------------------------------------------------------------------------------
# -- the candidate process ---------------------------------------------------------------------
def candidate_main(job: dict, base: dict, rfd: int, wfd: int) -> None:
    """Close every other fd, drop privileges, limits, seccomp; run the program, answer calls; never returns."""
    keep = sorted({0, 1, 2, rfd, wfd})
    for low, high in zip(keep, [*keep[1:], resource.getrlimit(resource.RLIMIT_NOFILE)[0]]):
        os.closerange(low + 1, max(low + 1, high))
    os.chdir("/tmp/work" if job["isolate"] else job["workdir"])
    drop_privileges(job)
    for name, value in job["limits"].items():
        resource.setrlimit(getattr(resource, name), (value, value + 1 if name == "RLIMIT_CPU" else value))
    install_seccomp()
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


def start_candidate(job: dict, base: dict, rfd: int, wfd: int) -> None:
    """In the forked child: with isolation, become PID 1 of the new PID namespace in a new root
    and fork the candidate; without, become the candidate.  Never returns."""
    try:
        if job["isolate"]:
            try:
                enter_root(job)
                child = os.fork()
            except BaseException as err:
                os.write(2, f"textgym sandbox setup failed: {err}\n".encode())
                os._exit(EXIT_SETUP)
            if child:
                os.close(rfd)
                os.close(wfd)
                init_main(job, child)
        candidate_main(job, base, rfd, wfd)
    finally:
        os._exit(EXIT_SETUP)


class CandidateFailed(Exception):
    """The candidate raised, died or ran out of time during a call."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind, self.reason = kind, reason


class Candidate:
    """The supervisor's handle on the candidate (with isolation: on its PID namespace's init)."""

    def __init__(self, job: dict, base: dict, report_fd: int, deadline: float) -> None:
        in_r, in_w = os.pipe()  # supervisor -> candidate
        out_r, out_w = os.pipe()  # candidate -> supervisor
        self.deadline, self.dead, self.kind, self.reason = deadline, False, "", ""
        self.isolated = bool(job["isolate"])
        if self.isolated:
            unshare(CLONE_NEWPID)  # our next child is PID 1 of a namespace in which we do not exist
        self.pid = os.fork()
        if self.pid == 0:
            try:
                os.close(report_fd)
                os.close(in_w)
                os.close(out_r)
                null = os.open(os.devnull, os.O_RDONLY)
                os.dup2(null, 0)
                os.close(null)
                start_candidate(job, base, in_r, out_w)
            finally:
                os._exit(EXIT_SETUP)
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
        """Why the candidate ended (it closed its pipe)."""
        try:
            _, status = os.waitpid(self.pid, 0)
        except ChildProcessError:
            return "crash", "the program's process ended"
        if self.isolated:
            return exit_reason(status)
        if os.WIFSIGNALED(status):
            return exit_reason((64 + os.WTERMSIG(status)) << 8)
        return exit_reason(min(os.WEXITSTATUS(status), 63) << 8)

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
            exc, msg = str(reply.get("exc"))[:100], str(reply.get("msg") or "")[:500]  # the candidate wrote these
            kind = {"MemoryError": "memory_limit", "SyntaxError": "syntax_error"}.get(exc, "error")
            message = f"{exc}: {msg}" if msg else exc
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
    LIBC.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
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
    if job["isolate"]:  # this PID namespace's own /proc (the candidate mounts its own in turn)
        mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None)
    base: dict = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        exec(compile(job["context"], "<context>", "exec"), base)
    except Exception as err:
        write_report(report_fd, {"status": "test_error", "passed": 0, "total": None, "first_failure": None,
                                 "reason": f"the problem's context code failed: {type(err).__name__}: {err}"})
        return
    candidate = Candidate(job, base, report_fd, deadline)
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
