"""Run untrusted Python programs against their tests, safely and in parallel.

The package has three parts:

* :mod:`textgym.sandbox.policy` -- what a program may use: :class:`SandboxLimits`,
  the isolation modes and the filesystem view it sees;
* :mod:`textgym.sandbox.launcher` -- :class:`Sandbox`: starts the harness in
  fresh namespaces, feeds it the job, reads the verdict, re-runs timeouts alone;
* ``textgym/sandbox/harness.py`` -- the script that runs inside (standard
  library only): a supervisor that runs the tests and a candidate process,
  with no capabilities, under a seccomp filter, that runs the program.

The threat model and what each mode guarantees are in ``docs/sandbox.md``.

Example:
    >>> from textgym.sandbox import Program, Sandbox
    >>> job = Program("def add(a, b):\\n    return a + b\\n", "def check(candidate):\\n"
    ...               "    assert candidate(1, 2) == 3\\n    assert candidate(2, 2) == 5\\n", "add")
    >>> result = Sandbox().run(job)
    >>> result.status, result.passed, result.total
    ('assertion_failure', 1, 2)
"""

from textgym.sandbox.launcher import HARNESS, STATUSES, ExecutionResult, Program, Sandbox, isolation_mode, run_programs
from textgym.sandbox.policy import ISOLATIONS, Isolation, SandboxLimits, default_hidden_paths

__all__ = [
    "HARNESS", "ISOLATIONS", "STATUSES", "ExecutionResult", "Isolation", "Program", "Sandbox", "SandboxLimits",
    "default_hidden_paths", "isolation_mode", "run_programs",
]
