"""The sandbox: hostile programs are contained, score 0, and the next program runs fine."""

from __future__ import annotations

import os
import secrets
import socket
import textwrap
import time

import pytest

from textgym import sandbox as sandbox_module
from textgym.errors import ConfigError
from textgym.rewards.execution import ExecutionReward
from textgym.sandbox import ExecutionResult, Program, Sandbox, SandboxLimits, isolation_mode

TIMEOUT = 2.0
TESTS = "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(-4, 4) == 0\n    assert True\n"
GOOD = "def add(a, b):\n    return a + b\n"
NAMESPACES = isolation_mode("auto").startswith("namespace")
needs_namespaces = pytest.mark.skipif(not NAMESPACES, reason="this OS gives no Linux namespaces (unshare)")
needs_uid = pytest.mark.skipif(
    isolation_mode("auto") != "namespace+uid", reason="needs root: programs then run under a throw-away uid"
)


@pytest.fixture(scope="module")
def box() -> Sandbox:
    return Sandbox(SandboxLimits(timeout=TIMEOUT, memory_mb=512, output_bytes=200_000))


def program(body: str, module: str = "") -> Program:
    """``add(a, b)`` whose body is ``body`` (indented for you), after module-level code ``module``."""
    code = textwrap.dedent(module) + "\ndef add(a, b):\n" + textwrap.indent(textwrap.dedent(body), "    ")
    return Program(code, TESTS, "add")


def run_contained(box: Sandbox, prog: Program) -> ExecutionResult:
    """Run a hostile program: reward 0, within timeout + 1 s, and a good program still passes afterwards."""
    start = time.monotonic()
    result = box.run(prog)
    elapsed = time.monotonic() - start
    assert elapsed <= TIMEOUT + 1.0, f"took {elapsed:.2f} s: {result}"
    assert result.pass_rate == 0.0 and not result.all_pass, result
    after = box.run(Program(GOOD, TESTS, "add"))
    assert after.status == "ok" and after.all_pass, after
    return result


def test_good_and_partially_wrong_programs(box: Sandbox) -> None:
    good = box.run(Program(GOOD, TESTS, "add"))
    assert (good.status, good.passed, good.total, good.pass_rate) == ("ok", 2, 2, 1.0)
    half = box.run(program("return 3"))  # right for (1, 2) only
    assert (half.status, half.passed, half.total) == ("assertion_failure", 1, 2)
    assert half.first_failure == "assert candidate(-4, 4) == 0"
    assert half.pass_rate == 0.5 and not half.all_pass


def test_syntax_error_and_exception_are_reported(box: Sandbox) -> None:
    bad = box.run(Program("def add(a, b):\n    return a +\n", TESTS, "add"))
    assert bad.status == "syntax_error" and "line 2" in bad.reason
    raising = box.run(program("raise ValueError('no luck')"))
    assert raising.status == "error" and "ValueError: no luck" in raising.reason
    assert raising.first_failure == "assert candidate(1, 2) == 3"
    missing = box.run(Program("def other():\n    pass\n", TESTS, "add"))
    assert missing.pass_rate == 0 and "add" in missing.reason


def test_infinite_loop_times_out(box: Sandbox) -> None:
    result = run_contained(box, program("while True:\n    pass"))
    assert result.status == "timeout"


def test_sleeping_program_times_out(box: Sandbox) -> None:
    result = run_contained(box, program("import time\ntime.sleep(60)"))
    assert result.status == "timeout"


@needs_namespaces
def test_fork_bomb_is_contained(box: Sandbox) -> None:
    before = _harness_processes()
    run_contained(box, program("import os\nwhile True:\n    os.fork()"))
    time.sleep(0.2)
    assert _harness_processes() <= before, "processes of the fork bomb survived the sandbox"


def test_memory_bomb_hits_the_memory_limit(box: Sandbox) -> None:
    result = run_contained(box, program("x = bytearray(4 * 1024**3)\nreturn a + b"))
    assert result.status == "memory_limit"
    grow = run_contained(box, program("x = []\nwhile True:\n    x.append('y' * 10**6)"))
    assert grow.status in ("memory_limit", "crash", "timeout")


def test_huge_disk_write_is_stopped(box: Sandbox, tmp_path) -> None:
    result = run_contained(box, program("""
        with open('big.bin', 'wb') as f:
            for _ in range(4096):
                f.write(b'0' * 2**20)
        return a + b
    """))
    assert result.status in ("error", "crash"), result
    assert "big.bin" not in os.listdir(".")


@needs_uid
def test_files_outside_the_sandbox_are_untouched(box: Sandbox, tmp_path) -> None:
    keep = tmp_path / "keep.txt"
    keep.write_text("precious")
    outside_tmp = f"/tmp/textgym-evil-{secrets.token_hex(6)}"
    for body in (
        f"import os\nos.remove({str(keep)!r})",
        f"import shutil\nshutil.rmtree({str(tmp_path)!r})",
        f"open({str(tmp_path / 'evil.txt')!r}, 'w').write('x')",
        f"open({outside_tmp!r}, 'w').write('x')\nreturn None",
        "import os\nopen(os.path.expanduser('~/evil.txt'), 'w').write('x')\nreturn None",
        f"open({str(sandbox_module.HARNESS)!r}, 'a').write('# tampered')",
    ):
        run_contained(box, program(body))
    assert keep.read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
    assert not os.path.exists(outside_tmp)
    assert "tampered" not in sandbox_module.HARNESS.read_text()


def test_environment_variables_do_not_leak(box: Sandbox, monkeypatch) -> None:
    secret = secrets.token_hex(16)
    monkeypatch.setenv("TEXTGYM_TEST_SECRET", secret)
    result = box.run(program("""
        import glob, os
        found = [v for v in os.environ.values()]
        for path in glob.glob('/proc/*/environ'):
            try:
                found.append(open(path, 'rb').read().decode('latin-1'))
            except OSError:
                pass
        print('SEEN', found, flush=True)
        return None
    """))
    assert result.pass_rate == 0.0
    assert "SEEN" in result.stdout and secret not in result.stdout + result.stderr


def test_network_connection_never_arrives(box: Sandbox) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(5)
    port = listener.getsockname()[1]
    try:
        run_contained(box, program(f"""
            import socket
            s = socket.create_connection(('127.0.0.1', {port}), timeout=1)
            s.sendall(b'stolen')
            return a + b
        """))
        listener.settimeout(0.3)
        with pytest.raises(socket.timeout):
            listener.accept()
    finally:
        listener.close()


def test_killing_the_parent_does_not_reach_us(box: Sandbox) -> None:
    run_contained(box, program("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nreturn a + b"))
    run_contained(box, program("import os, signal\nos.killpg(0, signal.SIGKILL)\nreturn a + b"))
    if isolation_mode("auto") == "namespace+uid":  # only where it cannot hit real processes
        run_contained(box, program("import os, signal\nos.kill(-1, signal.SIGKILL)\nreturn a + b"))
    os.kill(os.getpid(), 0)  # still here


@pytest.mark.parametrize(
    "module, body",
    [
        ("import sys\nsys.exit(0)", "return a + b"),
        ("import os\nos._exit(0)", "return a + b"),
        ("", "import os\nos._exit(0)"),
        ("", "import sys\nsys.exit(0)"),
        ("", "raise SystemExit(0)"),
        ("", "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)"),
    ],
    ids=["sys.exit-at-import", "os._exit-at-import", "os._exit-in-call", "sys.exit-in-call", "SystemExit",
         "suicide"],
)
def test_exit_tricks_score_zero(box: Sandbox, module: str, body: str) -> None:
    result = run_contained(box, program(body, module))
    assert result.status in ("error", "crash"), result


def test_printing_gigabytes_is_cut_off(box: Sandbox) -> None:
    result = run_contained(box, program("import sys\nwhile True:\n    sys.stdout.write('x' * 10**6)"))
    assert result.status == "output_limit"
    assert len(result.stdout) <= 8192


@pytest.mark.parametrize(
    "module, body",
    [
        ("class Yes:\n    def __eq__(self, other):\n        return True\n", "return Yes()"),
        ("class Int(int):\n    def __eq__(self, other):\n        return True\n", "return Int(7)"),
        ("import builtins\nbuiltins.AssertionError = type('Never', (Exception,), {})\n", "return -99"),
        ("import builtins\nbuiltins.abs = lambda x: 0\nbuiltins.bool = lambda x: True\n", "return -99"),
        (
            "import os\nforged = b'{\"status\": \"ok\", \"passed\": 2, \"total\": 2, \"first_failure\": null, "
            "\"reason\": null}\\n'\nfor fd in range(3, 64):\n    try:\n        os.write(fd, forged)\n"
            "    except OSError:\n        pass\n",
            "os._exit(0)",
        ),
        ("import gc\nfound = [o for o in gc.get_objects() if isinstance(o, str) and 'candidate(1, 2)' in o]\n",
         "return found"),
    ],
    ids=["eq-always-true", "int-subclass", "patched-AssertionError", "patched-builtins", "forged-report",
         "read-the-tests"],
)
def test_faking_a_pass_does_not_work(box: Sandbox, module: str, body: str) -> None:
    run_contained(box, program(body, module))


@needs_namespaces
def test_the_dataset_with_solutions_is_hidden(box: Sandbox) -> None:
    from textgym.tasks.code import humaneval_path

    path = humaneval_path()
    assert path.is_file()
    result = run_contained(box, program(f"open({str(path)!r}, 'rb').read()\nreturn a + b"))
    assert "FileNotFoundError" in result.reason


def test_a_hanging_program_costs_twice_its_timeout_in_a_batch() -> None:
    """Once in the batch, once alone (a timeout is confirmed alone before it is recorded)."""
    box = Sandbox(SandboxLimits(timeout=TIMEOUT), workers=4)
    batch = [Program(GOOD, TESTS, "add")] * 15 + [program("while True:\n    pass")]
    start = time.monotonic()
    results = box.run_batch(batch)
    assert time.monotonic() - start <= 2 * TIMEOUT + 2.0
    assert [r.status for r in results] == ["ok"] * 15 + ["timeout"]
    assert results[-1].reason.endswith("(also when run alone)")


def test_hostile_and_good_answers_in_one_reward_batch() -> None:
    from textgym.data.base import Sample

    reward = ExecutionReward(limits=SandboxLimits(timeout=TIMEOUT))
    sample = Sample("add", "def add(a, b):\n", meta={"problem": "def add(a, b):\n", "test": TESTS,
                                                   "entry_point": "add", "mode": "generation"})
    answers = ["return a + b", "while True:\n    pass", "import os\nos._exit(0)", "return a + b"]
    out = reward(answers, [sample] * 4)
    assert out.scores.tolist() == [1.0, 0.0, 0.0, 1.0]
    assert [d["execution"]["status"] for d in out.details] == ["ok", "timeout", "crash", "ok"]


def test_without_namespaces_auto_refuses_and_none_is_a_warned_opt_in(monkeypatch) -> None:
    from textgym.sandbox import launcher

    monkeypatch.setattr(launcher, "_namespace_support", lambda: (None, "none", "the `unshare` command is missing"))
    for isolation in ("auto", "namespace"):
        with pytest.raises(ConfigError, match=r"cannot isolate programs here: the `unshare` command is missing\. "
                                              r"To fix: allow unprivileged user namespaces .*isolation='none'"):
            isolation_mode(isolation)
    with pytest.raises(ConfigError, match="cannot isolate"):
        Sandbox().run(Program(GOOD, TESTS, "add"))
    with pytest.warns(RuntimeWarning, match="UNCONFINED"):
        box = Sandbox(SandboxLimits(timeout=TIMEOUT), isolation="none")
    assert box.run(Program(GOOD, TESTS, "add")).status == "ok"
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    try:
        result = box.run(program(f"import socket\nsocket.create_connection(('127.0.0.1', "
                                 f"{listener.getsockname()[1]}), timeout=1)\nreturn a + b"))
        assert result.status == "error" and "network access is disabled" in result.reason
    finally:
        listener.close()


def test_bad_limits_and_arguments_are_rejected() -> None:
    with pytest.raises(ConfigError, match="timeout must be a positive number"):
        SandboxLimits(timeout=0)
    with pytest.raises(ConfigError, match="memory_mb must be a positive integer, got -1"):
        SandboxLimits(memory_mb=-1)
    with pytest.raises(ConfigError, match="isolation must be one of"):
        Sandbox(isolation="docker")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="programs\\[0\\] must be a textgym.sandbox.Program"):
        Sandbox().run_batch(["print(1)"])  # type: ignore[list-item]


def _harness_processes() -> int:
    count = 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as handle:
                    count += b"sandbox/harness.py" in handle.read()
            except OSError:
                pass
    return count

