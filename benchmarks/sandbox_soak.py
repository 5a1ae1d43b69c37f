"""Sandbox soak: many mixed hostile episodes, and nothing of them is left on the host afterwards.

Runs ``--episodes`` programs (default 1000) through ``Sandbox.run_batch`` in
batches of 8, cycling through good, wrong, crashing, forking, daemonising
(``setsid`` double fork that sleeps), SysV-shm-allocating, file-writing (host
``/tmp``, ``/run/lock``, ``/var/tmp``, ``/dev/shm`` and its own tmp),
keyring-adding, CPU-hog and memory-hog programs.  Before and after, it takes a
:func:`snapshot` of the host: processes (all of them, and those of the
sandbox), this process's open file descriptors, the entries of the temporary
and world-writable directories, System V IPC objects, kernel keys and mounts.
Prints each count before/after and ``OK`` or the differences; exit code 1 on
any leftover (or when a verdict is wrong: a correct program that does not
pass, a wrong one that does)::

    python benchmarks/sandbox_soak.py [--episodes 1000] [--timeout 2] [--isolation auto]

The snapshot helpers are imported by ``tests/test_sandbox_attacks.py``.  On a
machine shared with other jobs, processes and temporary entries count as the
sandbox's only when they belong to a sandbox uid (65534 or >= 100000), name
the harness or carry the ``tgx`` marker of these programs; IPC objects, keys,
mounts and file descriptors count whenever they are new.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import textwrap
import time
from collections import Counter
from dataclasses import dataclass

MARKER = "tgx"  #: every file and key name of the hostile programs starts with this
SANDBOX_UID_FLOOR = 100_000  #: throw-away uids of the sandbox run as root
NOBODY = 65534  #: the unprivileged uid of the attack tests (and the kernel's overflow uid)
WATCHED_DIRS = (tempfile.gettempdir(), "/var/tmp", "/run/lock", "/dev/shm")
BATCH = 8
TESTS = "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(-4, 4) == 0\n"


# -- snapshots ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Snapshot:
    """What a sandbox could leave behind on the host (see :func:`snapshot`)."""

    processes: dict[tuple[int, int], tuple[int, str]]  #: (pid, start time) -> (uid, command line)
    fds: frozenset[tuple[int, str]]  #: this process's open fds: (number, target)
    entries: dict[str, int]  #: path of each entry of WATCHED_DIRS -> owner uid
    ipc: frozenset[str]  #: "shm|msg|sem key id" of every System V IPC object
    keys: frozenset[str]  #: "key <id> <type> <description>" (visible keys) and "uid <uid>" (/proc/key-users)
    mounts: frozenset[str]  #: "<mount point> <fs type> <source>" of our mount namespace

    def counts(self) -> dict[str, int]:
        return {
            "processes": len(self.processes),
            "sandbox processes": sum(_sandbox_process(u, c) for u, c in self.processes.values()),
            "fds": len(self.fds),
            "temp entries": len(self.entries),
            "ipc objects": len(self.ipc),
            "keys": len(self.keys),
            "mounts": len(self.mounts),
        }


def _read(path: str) -> str:
    try:
        with open(path, "rb") as handle:
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _processes() -> dict[tuple[int, int], tuple[int, str]]:
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        stat, status = _read(f"/proc/{name}/stat"), _read(f"/proc/{name}/status")
        uid = next((line.split()[1] for line in status.splitlines() if line.startswith("Uid:")), None)
        if not stat or uid is None:
            continue  # gone meanwhile
        start = int(stat.rsplit(")", 1)[1].split()[19])
        cmd = _read(f"/proc/{name}/cmdline").replace("\0", " ").strip()[:200]
        out[(int(name), start)] = (int(uid), cmd)
    return out


def _fds() -> frozenset[tuple[int, str]]:
    here = f"/proc/{os.getpid()}/fd"
    out = set()
    for name in os.listdir(here):
        try:
            target = os.readlink(f"{here}/{name}")
        except OSError:
            continue  # the descriptor of the listing itself
        if target != here:
            out.add((int(name), target))
    return frozenset(out)


def _entries() -> dict[str, int]:
    out = {}
    for folder in dict.fromkeys(WATCHED_DIRS):
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        for name in names:
            try:
                out[os.path.join(folder, name)] = os.lstat(os.path.join(folder, name)).st_uid
            except OSError:
                pass
    return out


def _ipc() -> frozenset[str]:
    out = set()
    for kind in ("shm", "msg", "sem"):
        for line in _read(f"/proc/sysvipc/{kind}").splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 2:
                out.add(f"{kind} {fields[0]} {fields[1]}")
    return frozenset(out)


def _keys() -> frozenset[str]:
    out = set()
    for line in _read("/proc/keys").splitlines():
        fields = line.split(None, 8)
        if len(fields) == 9:
            out.add(f"key {fields[0]} {fields[7]} {fields[8].split(':')[0]}")
    for line in _read("/proc/key-users").splitlines():
        out.add(f"uid {line.split(':')[0].strip()}")
    return frozenset(out)


def _mounts() -> frozenset[str]:
    out = set()
    for line in _read("/proc/self/mountinfo").splitlines():
        fields = line.split()
        tail = fields[fields.index("-") + 1:] if "-" in fields else []
        out.add(" ".join([fields[4], *tail[:2]]))
    return frozenset(out)


def snapshot() -> Snapshot:
    """The host's state that a sandbox must leave as it found it.

    Example:
        >>> before = snapshot()
        >>> leftovers(before, snapshot())
        {}
    """
    return Snapshot(_processes(), _fds(), _entries(), _ipc(), _keys(), _mounts())


def _sandbox_uid(uid: int) -> bool:
    return uid == NOBODY or uid >= SANDBOX_UID_FLOOR


def _sandbox_process(uid: int, cmd: str) -> bool:
    return _sandbox_uid(uid) or "harness" in cmd or MARKER in cmd


def leftovers(before: Snapshot, after: Snapshot) -> dict[str, list[str]]:
    """What ``after`` has that ``before`` had not (only the sandbox's, see the module doc); {} when clean."""
    found = {
        "processes": [f"pid {pid} uid {uid}: {cmd}" for (pid, start), (uid, cmd) in after.processes.items()
                      if (pid, start) not in before.processes and _sandbox_process(uid, cmd)],
        "fds": [f"fd {fd} -> {target}" for fd, target in sorted(after.fds - before.fds)],
        "temp entries": [f"{path} (uid {uid})" for path, uid in sorted(after.entries.items())
                         if path not in before.entries
                         and (_sandbox_uid(uid) or os.path.basename(path).startswith((MARKER, "textgym")))],
        "ipc objects": sorted(after.ipc - before.ipc),
        "keys": sorted(after.keys - before.keys),
        "mounts": sorted(after.mounts - before.mounts),
    }
    return {name: items for name, items in found.items() if items}


def wait_for_leftovers(before: Snapshot, wait: float = 5.0) -> dict[str, list[str]]:
    """:func:`leftovers` after giving processes up to ``wait`` seconds to be reaped.

    Only what stays for the whole wait counts (a neighbour's short-lived
    process seen once is not ours).
    """
    first = leftovers(before, snapshot())
    deadline = time.monotonic() + wait
    found = first
    while found and time.monotonic() < deadline:
        time.sleep(0.2)
        found = leftovers(before, snapshot())
    return {name: [i for i in items if i in first.get(name, ())] for name, items in found.items()
            if any(i in first.get(name, ()) for i in items)}


def report(before: Snapshot, after: Snapshot, found: dict[str, list[str]]) -> str:
    """Each count before -> after, then ``OK`` or the leftovers."""
    lines = [f"{name:>18}: {b} -> {a}" for (name, b), a in zip(before.counts().items(), after.counts().values())]
    if not found:
        return "\n".join([*lines, "OK"])
    for name, items in found.items():
        lines.append(f"LEFT OVER {name} ({len(items)}):")
        lines += [f"    {item}" for item in items[:20]]
    return "\n".join(lines)


# -- the mixed episodes ----------------------------------------------------------------
KEYCTL = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
"""

BODIES = {
    # kind: (module-level code, body of add(a, b), whether the answer is right)
    "good": ("", "return a + b", True),
    "wrong": ("", "return a - b", False),
    "crashing": ("import ctypes\nctypes.string_at(0)\n", "return a + b", False),
    "forking": ("", """
        import os, time
        for _ in range(3):
            try:
                if os.fork() == 0:
                    time.sleep(30)
                    os._exit(0)
            except OSError:
                pass
        return a + b
    """, True),
    "daemonising": ("", """
        import os, time
        try:
            if os.fork() == 0:
                os.setsid()
                if os.fork() == 0:
                    time.sleep(30)
                os._exit(0)
        except OSError:
            pass
        return a + b
    """, True),
    "shm": ("", """
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.shmat.restype = ctypes.c_void_p
        shmid = libc.shmget(0, 64 << 20, 0o1600)  # IPC_PRIVATE, IPC_CREAT | 0600, never removed
        if shmid >= 0:
            addr = libc.shmat(shmid, None, 0)
            if addr not in (None, ctypes.c_void_p(-1).value):
                ctypes.memset(addr, 1, 1 << 20)
        libc.msgget(0, 0o1600)
        libc.semget(0, 4, 0o1600)
        return a + b
    """, True),
    "file-writing": ("", """
        import os
        for folder in ('/tmp', '/run/lock', '/var/tmp', '/dev/shm', '.'):
            try:
                with open(os.path.join(folder, 'tgx-soak-%d' % os.getpid()), 'wb') as f:
                    f.write(b'x' * (1 << 20))
            except OSError:
                pass
        return a + b
    """, True),
    "keyring": (KEYCTL, """
        for ring in (-4, -5, -3):  # user, user session and session keyrings
            key = libc.syscall(248, b'user', b'tgx-soak', b'note', 4, ring)  # add_key
            if key > 0:
                libc.syscall(250, 15, key, 120)  # keyctl(KEYCTL_SET_TIMEOUT): gone in 2 min at worst
        return a + b
    """, True),
    "cpu-hog": ("", """
        import os
        for _ in range(3):
            try:
                if os.fork() == 0:
                    os.setsid()
                    while True:
                        pass
            except OSError:
                pass
        while True:
            pass
    """, False),
    "memory-hog": ("", """
        x = [bytearray(b'1') * (64 << 20) for _ in range(64)]
        return a + b
    """, False),
}
KINDS = tuple(BODIES)


def program(kind: str):
    """The episode program of ``kind`` (a :class:`textgym.sandbox.Program` of ``add(a, b)``)."""
    from textgym.sandbox import Program

    module, body, _ = BODIES[kind]
    code = textwrap.dedent(module) + "\ndef add(a, b):\n" + textwrap.indent(textwrap.dedent(body).strip(), "    ")
    return Program(code + "\n", TESTS, "add")


def episodes(n: int) -> list[tuple[str, object]]:
    """``n`` (kind, program) pairs, the kinds in turn."""
    return [(KINDS[i % len(KINDS)], program(KINDS[i % len(KINDS)])) for i in range(n)]


def wrong_verdicts(kinds: list[str], results: list) -> list[str]:
    """Episodes whose verdict contradicts the program: a right answer that fails or a wrong one that passes."""
    return [f"{kind}: {r.status} {r.passed}/{r.total} {(r.reason or '')[:120]}" for kind, r in zip(kinds, results)
            if r.all_pass != BODIES[kind][2]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=2.0)
    parser.add_argument("--memory-mb", type=int, default=512)
    parser.add_argument("--isolation", default="auto", choices=("auto", "namespace", "none"))
    args = parser.parse_args(argv)
    from textgym.sandbox import Sandbox, SandboxLimits, isolation_mode

    box = Sandbox(SandboxLimits(timeout=args.timeout, memory_mb=args.memory_mb), workers=BATCH,
                  isolation=args.isolation)
    print(f"isolation: {isolation_mode(args.isolation)}  uid: {os.geteuid()}  episodes: {args.episodes}", flush=True)
    before = snapshot()
    start, statuses, wrong = time.monotonic(), Counter(), []
    pairs = episodes(args.episodes)
    for i in range(0, len(pairs), BATCH):
        kinds = [k for k, _ in pairs[i:i + BATCH]]
        results = box.run_batch([p for _, p in pairs[i:i + BATCH]])
        statuses.update(f"{k}:{r.status}" for k, r in zip(kinds, results))
        wrong += wrong_verdicts(kinds, results)
        if (i // BATCH) % 25 == 0:
            print(f"  {i + len(kinds)}/{len(pairs)} episodes, {time.monotonic() - start:.0f} s", flush=True)
    found = wait_for_leftovers(before)
    print(f"{len(pairs)} episodes in {time.monotonic() - start:.1f} s")
    print("verdicts: " + ", ".join(f"{k} {n}" for k, n in sorted(statuses.items())))
    print(report(before, snapshot(), found))
    if wrong:
        print(f"WRONG VERDICTS ({len(wrong)}):\n    " + "\n    ".join(wrong[:20]))
    return 1 if found or wrong else 0


if __name__ == "__main__":
    sys.exit(main())
