"""Code tasks with execution feedback (feedback_turns=k): the failure shown, redacted, bounded; final-attempt reward."""

from __future__ import annotations

import json

import gymnasium as gym
import pytest

import textgym
from tests.conftest import TINY
from textgym.errors import ConfigError
from textgym.tasks.code import FEEDBACK_CHARS, FEEDBACK_REQUEST, feedback_message
from textgym.wrappers import SequenceLevel

ADD = {
    "task_id": "add",
    "prompt": 'def add(a, b):\n    """Return a + b."""\n',
    "canonical_solution": "    return a + b\n",
    "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(0, 0) == 0\n"
            "    assert candidate(2, 5) == 7\n",
    "entry_point": "add",
}
WRONG = "    return a * b\n"  # passes only candidate(0, 0) == 0
RIGHT = "```python\ndef add(a, b):\n    return a + b\n```"


@pytest.fixture(scope="module")
def problems(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("code") / "add.jsonl"
    path.write_text(json.dumps(ADD) + "\n", encoding="utf-8")
    return str(path)


def make(problems: str, **kwargs) -> SequenceLevel:
    kwargs = {"feedback_turns": 2, "max_reply_tokens": 160, **kwargs}
    return SequenceLevel(gym.make("textgym/CodeGeneration-v0", model=TINY, split="test", data_files={"test": problems},
                                  **kwargs))


def failure_of(message: str) -> str:
    request, failure = message.split("\n", 1)
    assert request == FEEDBACK_REQUEST
    return failure


def test_a_wrong_attempt_is_told_what_failed_and_a_right_one_scores_1(problems) -> None:
    env = make(problems)
    env.reset(seed=0)
    _, reward1, terminated, truncated, turn = env.step(WRONG)
    assert not (terminated or truncated) and turn["turn"] == 1
    assert reward1 == pytest.approx(1 / 3) and turn["turn_score"] == pytest.approx(1 / 3)
    failure = failure_of(turn["prompt"])
    assert failure == "1 of 3 tests passed. The first failing test's assertion failed: a wrong result."
    assert "== 3" not in turn["reply_text"] and "candidate(1, 2)" not in turn["reply_text"]  # no hidden test shown
    assert turn["prompt"] in turn["reply_text"] and turn["execution"]["status"] == "assertion_failure"
    _, reward2, terminated, truncated, final = env.step(RIGHT)
    assert terminated and final["turns"] == 2
    assert final["turn_scores"] == pytest.approx([1 / 3, 1.0])
    assert reward1 + reward2 == pytest.approx(1.0)  # "final": the return is the final attempt's pass rate
    assert final["metrics"]["pass_rate"] == 1.0 and final["metrics"]["all_pass"] == 1.0


def test_expose_solutions_shows_the_failing_assert(problems) -> None:
    env = make(problems, expose_solutions=True)
    env.reset(seed=0)
    *_, turn = env.step(WRONG)
    assert failure_of(turn["prompt"]) == "1 of 3 tests passed. The first failing test: assert candidate(1, 2) == 3 (AssertionError)."


def test_errors_are_shown_with_their_message_bounded(problems) -> None:
    env = make(problems)
    env.reset(seed=0)
    *_, turn = env.step("    raise ValueError('bad input ' * 100)\n")
    failure = failure_of(turn["prompt"])
    assert failure.startswith("0 of 3 tests passed. The first failing test raised ValueError: bad input bad input")
    assert len(failure) == FEEDBACK_CHARS and failure.endswith("...")
    *_, turn = env.step("    return (\n")
    assert failure_of(turn["prompt"]) == "The code does not compile: SyntaxError: '(' was never closed (line 3)."


def test_the_last_attempt_ends_the_episode_with_its_own_score(problems) -> None:
    env = make(problems, feedback_turns=1)
    assert env.unwrapped.text_spec.max_turns == 2
    env.reset(seed=0)
    rewards = [env.step("no code here")[1]]
    _, reward, terminated, truncated, final = env.step(WRONG)
    rewards.append(reward)
    assert terminated and final["turns"] == 2 and final["turn_scores"] == pytest.approx([0.0, 1 / 3])
    assert sum(rewards) == pytest.approx(1 / 3) and final["metrics"]["pass_rate"] == pytest.approx(1 / 3)
    env.reset(seed=0)
    _, reward, terminated, _, final = env.step(RIGHT)  # right at once: no feedback turn
    assert terminated and reward == 1.0 and final["turns"] == 1


def test_feedback_turns_0_is_the_single_turn_env(problems) -> None:
    env = make(problems, feedback_turns=0)
    spec = env.unwrapped.text_spec
    assert (spec.max_turns, spec.max_reply_tokens, spec.multi_turn) == (1, 0, False)
    assert env.unwrapped.observation_space["input_ids"].shape == (spec.max_prompt_tokens + spec.max_new_tokens,)
    env.reset(seed=0)
    _, reward, terminated, _, info = env.step(WRONG)
    assert terminated and "turns" not in info and reward == pytest.approx(1 / 3)
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(ConfigError, match=r"feedback_turns must be an integer >= 0 \(attempts after the first\), got"):
            make(problems, feedback_turns=bad)


@pytest.mark.parametrize(("status", "reason", "expected"), [
    ("no_code", "no Python code found in the answer", "Your answer held no Python code."),
    ("timeout", "", "0 of 4 tests passed. The code ran out of time (an endless loop, or far too slow)."),
    ("memory_limit", "", "0 of 4 tests passed. The code ran out of memory."),
    ("test_error", "NameError", "0 of 4 tests passed. The tests did not pass (test_error: NameError)."),
])
def test_every_status_has_a_message(status: str, reason: str, expected: str) -> None:
    execution = {"status": status, "passed": 0, "total": 0 if status == "no_code" else 4, "first_failure": "",
                 "reason": reason}
    assert failure_of(feedback_message({"score": 0.0, "metrics": {}, "execution": execution})) == expected
    custom = feedback_message({"score": 0.25, "metrics": {}})  # a reward without execution details
    assert failure_of(custom) == "Your answer scored 0.25 of 1."


def test_code_repair_feedback_is_registered_with_room_for_three_attempts() -> None:
    entry = textgym.ENVS["textgym/CodeRepairFeedback-v0"]
    assert entry.task == "textgym.tasks.code:CodeRepairTask" and entry.kwargs["feedback_turns"] == 2
    spec = gym.make("textgym/CodeRepairFeedback-v0", model=TINY, split="test").unwrapped.text_spec
    assert (spec.max_turns, spec.max_new_tokens, spec.max_reply_tokens) == (3, 256, 128)
    assert spec.conversation_tokens == 3 * 256 + 2 * 128
