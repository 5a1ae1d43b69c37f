"""The examples run as a user would run them (so they cannot drift from the code)."""

from __future__ import annotations

import runpy
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
from gymnasium.utils.env_checker import check_env

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run(script: str, cwd: Path, timeout: int = 600) -> str:
    result = subprocess.run([sys.executable, str(EXAMPLES / script)], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result.stdout


def test_quickstart(tmp_path) -> None:
    out = run("quickstart.py", tmp_path)
    assert "reward:" in out and "rewards collected by the 8 slots" in out


def test_custom_task_is_short_passes_check_env_and_trains(tmp_path) -> None:
    source = (EXAMPLES / "custom_task.py").read_text()
    assert len(source.splitlines()) < 50
    namespace = runpy.run_path(str(EXAMPLES / "custom_task.py"), run_name="example")  # registers, does not train
    assert namespace["exact_number"](["It is 12.", "twelve"], [type("S", (), {"references": ["12"]})()] * 2) == [1.0, 0.0]
    check_env(gym.make("my/WordProblems-v0", model="tiny-random").unwrapped)
    out = run("custom_task.py", tmp_path)
    assert "n_updates" in out


def test_benchmark_all(tmp_path) -> None:
    out = run("benchmark_all.py", tmp_path)
    assert "| env | main metric | random | zero-shot | shout |" in out
    assert (tmp_path / "bench_results" / "main_metric.png").is_file()
