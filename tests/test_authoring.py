"""Writing new tasks: the README walk-through, register_task, new-task, authoring errors."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

import textgym
from tests.conftest import TINY
from textgym.cli import main
from textgym.errors import ConfigError, RewardError

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_block(tag: str) -> str:
    match = re.search(rf"<!-- readme-test: {re.escape(tag)} -->\n```\w*\n(.*?)```", README.read_text(), re.S)
    assert match, f"README has no block tagged {tag!r}"
    return match.group(1)


def test_readme_custom_task_walkthrough_runs_as_written(tmp_path, monkeypatch, capsys) -> None:
    (tmp_path / "capitals.jsonl").write_text(readme_block("capitals.jsonl"))
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "readme"}
    exec(compile(readme_block("python"), "README.md", "exec"), namespace)
    assert "1.0 {'reward': 1.0}" in capsys.readouterr().out
    exec(compile(readme_block("python-train"), "README.md", "exec"), namespace)
    assert namespace["agent"].n_updates >= 1 and "updates" in capsys.readouterr().out
    assert textgym.ENVS["my/Capitals-v0"].source == "user"


def test_register_task_with_samples_and_template() -> None:
    textgym.register_task(
        "test/Echo-v0",
        samples={"train": [{"prompt": "hi", "references": ["hi"], "lang": "en"}], "test": [{"prompt": "yo", "references": ["yo"], "lang": "en"}]},
        prompt="Repeat ({lang}): {prompt}",
        reward="chrf",
        allowed_tokens=["hi", "yo"],
        max_new_tokens=4,
    )
    env = gym.make("test/Echo-v0", model=TINY, split="test")
    _, info = env.reset(seed=0)
    assert "Repeat (en): yo" in info["prompt_text"]
    assert env.unwrapped.action_masks().sum() >= 3


def test_reward_with_wrong_shape_names_the_task() -> None:
    textgym.register_task("test/BadShape-v0", samples=[{"prompt": "a", "references": ["b"]}] * 20, reward=lambda t, s: [1.0, 2.0])
    env = gym.make("test/BadShape-v0", model=TINY, max_new_tokens=1)
    env.reset(seed=0)
    with pytest.raises(RewardError, match=r"reward of task 'test/BadShape-v0' returned shape \(2,\) for a batch of 1"):
        env.step(5)


def test_reward_with_nan_names_the_value() -> None:
    textgym.register_task("test/NaN-v0", samples=[{"prompt": "a", "references": ["b"]}] * 20, reward=lambda t, s: [float("nan")] * len(t))
    env = gym.make("test/NaN-v0", model=TINY, max_new_tokens=1)
    env.reset(seed=0)
    with pytest.raises(RewardError, match=r"reward of task 'test/NaN-v0' returned a non-finite value nan"):
        env.step(5)


def test_empty_prompt_is_an_error() -> None:
    textgym.register_task("test/Empty-v0", samples=[{"prompt": "a", "references": ["b"]}] * 20, prompt=lambda s: "  ")
    with pytest.raises(ConfigError, match=r"task 'test/Empty-v0': the prompt formatter returned an empty prompt"):
        gym.make("test/Empty-v0", model=TINY)


def test_template_with_unknown_key_lists_available() -> None:
    textgym.register_task("test/Tmpl-v0", samples=[{"prompt": "a", "references": ["b"]}] * 20, prompt="{question}")
    with pytest.raises(ConfigError, match=r"uses 'question' which sample .* does not have; available: \['prompt'"):
        gym.make("test/Tmpl-v0", model=TINY)


def test_register_task_needs_exactly_one_data_source() -> None:
    with pytest.raises(ConfigError, match="exactly one of samples=, data_files= and dataset="):
        textgym.register_task("test/NoData-v0")


def test_new_task_skeleton_passes_its_own_tests(tmp_path, capsys) -> None:
    assert main(["new-task", "word_sums", "--out", str(tmp_path)]) == 0
    assert {p.name for p in tmp_path.iterdir()} == {"word_sums_task.py", "word_sums.yaml", "test_word_sums.py"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_word_sums.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout
    capsys.readouterr()
    assert main(["new-task", "word_sums", "--out", str(tmp_path)]) == 2
    assert "refusing to overwrite existing files" in capsys.readouterr().err
    assert main(["new-task", "Bad-Name", "--out", str(tmp_path)]) == 2
    assert "task name must be a lower-case Python identifier like 'arithmetic', got 'Bad-Name'" in capsys.readouterr().err


def test_vector_env_of_a_user_task_steps_in_batches() -> None:
    textgym.register_task("test/Vec-v0", samples=[{"prompt": str(i), "references": [str(i)]} for i in range(30)], max_new_tokens=2)
    envs = gym.make_vec("test/Vec-v0", num_envs=3, model=TINY)
    envs.reset(seed=0)
    envs.step(np.array([5, 6, 7]))
    _, rewards, _, truncated, infos = envs.step(np.array([5, 6, 7]))
    assert truncated.all() and np.isfinite(rewards).all() and infos["_metrics"].all()
