"""One way to find a checkpoint (run dir, checkpoint, model dir, x.zip), what eval / bench / load print,
checkpoint callbacks, training curves from progress.csv, --device, and eval's samples, pass@k and outputs."""

from __future__ import annotations

import json
import math
import shutil
from itertools import combinations
from pathlib import Path

import gymnasium as gym
import pytest
import torch

import textgym  # noqa: F401
from agents import TextPPO, load_agent
from agents.baselines import PPOCheckpointAgent
from agents.common.checkpoints import CheckpointError, checkpoint_algorithm, resolve_checkpoint
from agents.common.launch import checked_device
from agents.evaluation import pass_at_k, sampled_metrics
from textgym.cli import main
from textgym.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = {"model": "tiny-random", "learning_rate": 1e-3, "n_epochs": 1, "n_rollouts": 1}
PROGRESS = "time/total_timesteps,rollout/ep_rew_mean,train/loss\n100,0.1,1.0\n200,,0.9\n300,0.3,0.8\n"


def copy_env(n: int = 4):
    return gym.make_vec("textgym/Copy-v0", num_envs=n, model="tiny-random")


@pytest.fixture(scope="module")
def agent():
    torch.set_num_threads(1)
    return TextPPO("LMPolicy", copy_env(), seed=0, **FAST)


@pytest.fixture(scope="module")
def run(agent, tmp_path_factory) -> Path:
    """A folder holding an old save at its root (1 update) and a run's checkpoints (3 and 12 updates)."""
    root = tmp_path_factory.mktemp("runs") / "copy"
    for updates, tokens, save in ((1, 100, lambda: agent.save(root)), (3, 2_500, None), (12, 9_984, None)):
        agent.n_updates, agent.num_timesteps = updates, tokens
        (save or (lambda: agent.save_checkpoint(root, keep=5)))()
    (root / "progress.csv").write_text(PROGRESS)
    return root


# -- 1. the resolver --------------------------------------------------------------------------------------
def test_the_newest_valid_checkpoint_wins_over_a_save_at_the_root(run: Path, tmp_path: Path) -> None:
    newest = run / "checkpoint-000012"
    assert resolve_checkpoint(run) == newest and resolve_checkpoint(newest) == newest
    assert checkpoint_algorithm(run) == "ppo"
    broken = tmp_path / "copy"
    shutil.copytree(run, broken)
    (broken / "checkpoint-000012" / "optimizer.pt").unlink()
    with pytest.warns(UserWarning, match="skipping a checkpoint that failed validation"):
        assert resolve_checkpoint(broken) == broken / "checkpoint-000003"
    (broken / "checkpoint-000003" / "optimizer.pt").unlink()
    with pytest.warns(UserWarning):
        assert resolve_checkpoint(broken) == broken  # every checkpoint-* is broken: the save at the root
    (broken / "optimizer.pt").unlink()
    with pytest.warns(UserWarning), pytest.raises(CheckpointError, match="has no valid checkpoint"):
        resolve_checkpoint(broken)


def test_model_dirs_zip_names_and_empty_folders(run: Path, tmp_path: Path) -> None:
    model = tmp_path / "hf"
    model.mkdir()
    (model / "config.json").write_text("{}")
    assert resolve_checkpoint(model, allow_model=True) == model
    with pytest.raises(CheckpointError, match=r"holds no checkpoint: looked for checkpoint-<updates>/ folders .*textppo"):
        resolve_checkpoint(model)  # loading an agent needs the training state
    with pytest.raises(CheckpointError, match=r"looked for .* or config.json \(a Hugging Face model\)"):
        resolve_checkpoint(tmp_path, allow_model=True)
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_checkpoint(tmp_path / "nowhere")
    assert resolve_checkpoint(str(run / "checkpoint-000012") + ".zip") == run / "checkpoint-000012"


def test_load_agent_and_algo_load_take_the_same_checkpoint_and_say_so(run: Path, capsys) -> None:
    loaded = load_agent(str(run), verbose=1)
    assert (loaded.n_updates, loaded.num_timesteps) == (12, 9_984)
    assert capsys.readouterr().out == f"loaded {run}/checkpoint-000012 (ppo, 12 updates, 9,984 tokens)\n"
    assert TextPPO.load(run, verbose=0).n_updates == 12 and capsys.readouterr().out == ""  # verbose 0: quiet


# -- 2. checkpoint callbacks --------------------------------------------------------------------------------
def test_checkpoint_callbacks_write_no_zip_folders(tmp_path: Path, capsys) -> None:
    from stable_baselines3.common.callbacks import CheckpointCallback as SB3CheckpointCallback

    from agents.common.callbacks import CheckpointCallback

    agent = TextPPO("LMPolicy", copy_env(), seed=0, **FAST)
    agent.learn(30, callback=[CheckpointCallback(1, tmp_path / "run", verbose=1),
                              SB3CheckpointCallback(save_freq=4, save_path=str(tmp_path / "sb3"))])  # fmt: skip
    assert agent.n_updates >= 2
    names = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert names == [f"checkpoint-{agent.n_updates - 1:06d}", f"checkpoint-{agent.n_updates:06d}"]  # keep=2
    assert f"saved {tmp_path / 'run'}/checkpoint-{agent.n_updates:06d}" in capsys.readouterr().out
    assert TextPPO.load(tmp_path / "run").n_updates == agent.n_updates
    sb3 = sorted((tmp_path / "sb3").iterdir())
    assert sb3 and not [p for p in sb3 if p.suffix == ".zip"] and sb3[0].name.startswith("rl_model_")
    assert TextPPO.load(str(sb3[0]) + ".zip").num_timesteps > 0  # SB3's habit: load("x.zip")
    with pytest.raises(CheckpointError, match=r"CheckpointCallback \(rl_model_.*pass one of them"):
        resolve_checkpoint(tmp_path / "sb3")


# -- 3. training curves ---------------------------------------------------------------------------------------
def test_training_curve_is_found_for_a_run_and_for_a_checkpoint_in_it(run: Path) -> None:
    for path in (run, run / "checkpoint-000003"):
        xs, ys, column = PPOCheckpointAgent(path, algo="ppo").training_curve()
        assert (xs, ys, column) == ([100.0, 300.0], [0.1, 0.3], "rollout/ep_rew_mean")  # the empty row is left out


# -- 4. --device -------------------------------------------------------------------------------------------------
def test_device_check(run: Path, tmp_path: Path, capsys) -> None:
    assert checked_device("cpu") == torch.device("cpu")
    assert checked_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="not a device"):
        checked_device("gpu0")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the error path cannot be seen")
    for argv in (["eval", "textgym/Copy-v0", "--model", "tiny-random", "--device", "cuda"],
                 ["bench", "--envs", "textgym/Copy-v0", "--agents", "random", "--device", "cuda", "--out", str(tmp_path)],
                 ["train", "textgym/Copy-v0", "--model", "tiny-random", "--device", "cuda", "--out", str(tmp_path / "t")]):  # fmt: skip
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--device cuda was asked for, but" in err and "use --device cpu" in err, err


# -- 5. eval ------------------------------------------------------------------------------------------------------
def test_eval_of_a_run_says_what_it_loaded_prints_each_metric_once_and_writes_answers(run: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "answers.jsonl"
    argv = ["eval", "textgym/Copy-v0", "--checkpoint", str(run), "--episodes", "3", "--num-envs", "4", "--device", "cpu"]
    assert main([*argv, "--output", str(out)]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0] == f"loaded {run}/checkpoint-000012 (ppo, 12 updates, 9,984 tokens)"
    assert "3 samples, greedy" in lines[1] and "\reval: " in captured.err  # the progress bar is on stderr
    names = [line.split()[0] for line in lines[2:-1]]
    assert names[0] == "copy_accuracy" and len(names) == len(set(names)) and {"reward", "tokens"} <= set(names)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["index"] for r in records] == [0, 1, 2] and {"prompt", "output", "references", "metrics"} <= set(records[0])
    assert main([*argv, "--samples", "3", "--json"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)  # --json: stdout is the JSON alone, the "loaded" line goes to stderr
    assert f"loaded {run}/checkpoint-000012" in captured.err
    assert (summary["n"], summary["answers"], summary["samples"]) == (3, 9, 3)
    assert summary["at_k"]["copy_accuracy/best_of_3"] >= summary["metrics"]["copy_accuracy"]


def test_pass_at_k_is_the_unbiased_estimator() -> None:
    for n, c, k in [(5, 2, 1), (5, 2, 2), (5, 2, 3), (6, 0, 2), (6, 6, 4), (7, 3, 5)]:
        draws = list(combinations([1] * c + [0] * (n - c), k))
        assert math.isclose(pass_at_k(n, c, k), sum(any(d) for d in draws) / len(draws))
    records = [{"index": i, "reward": 0.0, "metrics": {"pass_rate": 0.5, "all_pass": float(ok)}}
               for i, answers in enumerate([[1, 0, 0, 0], [0, 0, 0, 0]]) for ok in answers]  # fmt: skip
    assert sampled_metrics(records, "pass_rate", 4) == {"pass@1": 0.125, "pass@4": 0.5}
    text = [{"index": i, "reward": s, "metrics": {"chrf": s}} for i, s in [(0, 0.1), (0, 0.5), (1, 0.2), (1, 0.2)]]
    assert sampled_metrics(text, "chrf", 2) == {"chrf/best_of_2": pytest.approx(0.35)}


def test_eval_samples_on_a_code_env_reports_pass_at_k(capsys) -> None:
    argv = ["eval", "textgym/CodeGeneration-v0", "--model", "tiny-random", "--episodes", "1", "--num-envs", "2",
            "--samples", "2"]  # fmt: skip
    assert main(argv) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]]
    assert names[0] == "pass_rate" and {"pass@1", "pass@2", "all_pass"} <= set(names)


# -- bench -------------------------------------------------------------------------------------------------------
def test_bench_takes_run_dirs_prints_what_it_loaded_and_plots_the_curve(run: Path, tmp_path: Path, capsys) -> None:
    argv = ["bench", "--envs", "textgym/Copy-v0", "--episodes", "2", "--model", "tiny-random", "--device", "cpu"]
    assert main([*argv, "--agents", f"random,ppo:{run},checkpoint:{run}/checkpoint-000003", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"loaded {run}/checkpoint-000012 (ppo, 12 updates, 9,984 tokens)" in out
    assert f"loaded {run}/checkpoint-000003 (ppo, 3 updates, 2,500 tokens)" in out
    assert (tmp_path / "training_curves.png").read_bytes()[:4] == b"\x89PNG" and "training_curves.png" in out
    cells = json.loads((tmp_path / "results.json").read_text())["cells"]
    assert [c["error"] for c in cells] == [None, None, None]


@pytest.mark.parametrize(("agents", "message"), [
    ("random,gpt5", "unknown agent 'gpt5'; use random, zero-shot, ppo:DIR, grpo:DIR"),
    ("grpo:{run}", "holds a 'ppo' agent, not 'grpo'; name it ppo:"),
    ("ppo:{run}/nowhere", "does not exist"),
    ("ppo:", "ppo: needs a path"),
])  # fmt: skip
def test_bench_with_a_bad_agent_exits_non_zero_before_running(run: Path, tmp_path: Path, capsys, agents: str, message: str) -> None:
    argv = ["bench", "--envs", "textgym/Copy-v0", "--agents", agents.format(run=run), "--out", str(tmp_path / "b")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("textgym: error: "), err
    assert not (tmp_path / "b").exists()  # nothing ran
