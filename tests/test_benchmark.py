"""textgym bench: every cell, the three outputs, determinism, resume, failing cells."""

from __future__ import annotations

import json
import math

import pytest

from agents import benchmark
from agents.baselines import SequenceAgent
from tests.conftest import TINY, builtin_ids
from textgym.cli import main


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    code = main(["bench", "--envs", "all", "--agents", "random,zero-shot", "--episodes", "4", "--model", TINY, "--out", str(out)])
    assert code == 0
    return out


def test_bench_writes_json_markdown_and_plot_with_every_cell(bench_dir) -> None:
    results = json.loads((bench_dir / "results.json").read_text())
    cells = {(c["env"], c["agent"]): c for c in results["cells"]}
    for env_id in builtin_ids():
        for agent in ("random", "zero-shot"):
            cell = cells[(env_id, agent)]
            assert cell["error"] is None, cell.get("traceback")
            main_metric = cell["metrics"][cell["main_metric"]]
            assert main_metric["n"] == 4 and math.isfinite(main_metric["mean"]) and math.isfinite(main_metric["std"])
    assert results["versions"]["torch"] and results["settings"]["seed"] == 0
    table = (bench_dir / "results.md").read_text()
    assert all(env_id in table for env_id in builtin_ids()) and "| env | main metric | random | zero-shot |" in table
    assert (bench_dir / "main_metric.png").read_bytes()[:4] == b"\x89PNG"


def test_same_seed_gives_identical_metrics(tmp_path) -> None:
    args = dict(envs="textgym/Copy-v0,textgym/Translation-v0", agents=["random", "zero-shot"], episodes=3, model=TINY, progress=False)
    first = benchmark.run_benchmark(out=tmp_path / "a", **args)
    second = benchmark.run_benchmark(out=tmp_path / "b", **args)
    assert [c["metrics"] for c in first["cells"]] == [c["metrics"] for c in second["cells"]]


def test_interrupted_bench_resumes_and_skips_finished_pairs(tmp_path, monkeypatch) -> None:
    args = dict(envs="textgym/Copy-v0,textgym/Translation-v0", agents=["random"], episodes=2, model=TINY, progress=False)
    straight = benchmark.run_benchmark(out=tmp_path, **args)
    (next((tmp_path / "cells").glob("*Translation*"))).unlink()  # as if killed before this cell
    calls = []
    real = benchmark.run_cell
    monkeypatch.setattr(benchmark, "run_cell", lambda env_id, *a, **k: calls.append(env_id) or real(env_id, *a, **k))
    results = benchmark.run_benchmark(out=tmp_path, **args)
    assert calls == ["textgym/Translation-v0"] and len(results["cells"]) == 2
    # the resumed cell starts from the agent's seed, as it did after Copy-v0 in the straight run
    assert [c["metrics"] for c in results["cells"]] == [c["metrics"] for c in straight["cells"]]


def test_a_failing_cell_is_recorded_and_the_others_run(tmp_path) -> None:
    def broken(prompts):
        raise RuntimeError("API quota exceeded")

    agents = [SequenceAgent(broken, name="broken-api"), SequenceAgent(lambda ps: ["red blue" for _ in ps], name="constant")]
    results = benchmark.run_benchmark("textgym/Copy-v0", agents, episodes=2, model=TINY, out=tmp_path, progress=False)
    by = {c["agent"]: c for c in results["cells"]}
    assert by["broken-api"]["error"] == "RuntimeError: API quota exceeded"
    assert by["constant"]["error"] is None and by["constant"]["metrics"]["copy_accuracy"]["n"] == 2
    assert "error" in (tmp_path / "results.md").read_text()


def test_unknown_agent_and_env_are_clear_errors(tmp_path, capsys) -> None:
    assert main(["bench", "--envs", "textgym/Nope-v0", "--agents", "random", "--out", str(tmp_path)]) == 2
    assert "unknown env id(s) ['textgym/Nope-v0']" in capsys.readouterr().err
    results = benchmark.run_benchmark("textgym/Copy-v0", ["gpt5"], episodes=1, model=TINY, out=tmp_path, progress=False)
    assert results["cells"][0]["error"].startswith("ConfigError: unknown agent 'gpt5'; use random, zero-shot, ppo:DIR")


def test_sampling_lm_agent_predict_is_reproducible_for_a_seed() -> None:
    import gymnasium as gym

    from agents.baselines import LMAgent

    env = gym.make_vec("textgym/Copy-v0", num_envs=4, model=TINY)
    obs, _ = env.reset(seed=0)
    draws = [
        LMAgent(TINY, greedy=False, temperature=5.0, seed=seed).predict(obs)[0].tolist() for seed in (1, 1, 2)
    ]
    assert draws[0] == draws[1]  # same seed, same tokens
    assert draws[0] != draws[2]  # temperature 5 over ~49k tokens: another seed draws others
