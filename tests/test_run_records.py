"""What a training run leaves behind: progress.csv, TensorBoard events, learning_curve.png, the progress bar,
evaluation during training with a best checkpoint, and a resume that appends exactly one row per update."""

from __future__ import annotations

import csv
import importlib.util
import io
import shutil
import sys
import warnings
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import gymnasium as gym
import pytest
from stable_baselines3.common.callbacks import StopTrainingOnRewardThreshold
from stable_baselines3.common.logger import configure

import textgym  # noqa: F401
from agents import TextPPO
from agents.common.callbacks import TextEvalCallback
from agents.common.persistence import list_checkpoints
from agents.common.records import ProgressCSV, TrackioOutput, parse_report_to, read_progress
from textgym.cli import main
from textgym.errors import DependencyNotInstalled

TRAIN = ["train", "textgym/Copy-v0", "--model", "tiny-random", "--timesteps", "400", "--num-envs", "4", "--n-rollouts", "1"]
PNG = b"\x89PNG\r\n\x1a\n"
SAME_TYPE = "Training and eval env are not of the same type"

pytestmark = pytest.mark.usefixtures("one_thread")


def rows(run: Path) -> list[dict[str, str]]:
    with open(run / "progress.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def updates_of(run: Path) -> int:
    return int(list_checkpoints(run)[-1].name.split("-")[1])


def tensorboard_steps(run: Path, tag: str) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run))
    events.Reload()  # older files' events from a purge step on are dropped, as TensorBoard shows them
    return [e.step for e in events.Scalars(tag)]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, str, str, list[str]]:
    """One `textgym train --eval-every 5` run: (run dir, stdout, stderr, warnings)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("records") / "run"
    stdout, stderr = io.StringIO(), io.StringIO()
    try:
        with warnings.catch_warnings(record=True) as caught, redirect_stdout(stdout), redirect_stderr(stderr):
            warnings.simplefilter("always")
            assert main([*TRAIN, "--eval-every", "5", "--eval-episodes", "4", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    return out, stdout.getvalue(), stderr.getvalue(), [str(w.message) for w in caught]


def test_a_run_leaves_progress_csv_tensorboard_and_a_learning_curve(run) -> None:
    out, stdout, _, _ = run
    n = updates_of(out)
    table = rows(out)
    assert n > 10 and len(table) == n  # one row per update
    assert [int(float(r["train/n_updates"])) for r in table] == list(range(1, n + 1))
    tokens = [float(r["time/total_timesteps"]) for r in table]
    assert tokens == sorted(set(tokens)) and tokens[-1] >= 400 and all(r["rollout/ep_rew_mean"] for r in table)
    assert list(out.glob("events.out.tfevents.*")) and len(tensorboard_steps(out, "rollout/ep_rew_mean")) == n
    assert (out / "learning_curve.png").read_bytes()[:8] == PNG
    assert "ep_rew_mean" not in stdout  # verbose 0 (the default, as SB3's): no log table
    assert f"records in {out}: progress.csv, learning_curve.png, best, TensorBoard events" in stdout


def test_bench_plots_the_training_curve_of_a_train_run(run, tmp_path: Path, capsys) -> None:
    out = run[0]
    argv = ["bench", "--envs", "textgym/Copy-v0", "--episodes", "2", "--model", "tiny-random", "--agents", f"ppo:{out}"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    assert f"loaded {list_checkpoints(out)[-1]}" in capsys.readouterr().out
    assert (tmp_path / "training_curves.png").read_bytes()[:8] == PNG


def test_the_progress_bar_shows_tokens_per_second_on_stderr(run) -> None:
    _, stdout, stderr, _ = run
    assert "tok/s" in stderr and "reward=" in stderr and "100%" in stderr and "tok/s" not in stdout


def test_evaluation_rows_and_a_best_checkpoint_that_loads(run) -> None:
    out, _, _, caught = run
    table = rows(out)
    evaluated = [int(float(r["train/n_updates"])) for r in table if r["eval/mean_reward"]]
    assert evaluated == [u for u in range(1, len(table) + 1) if u % 5 == 0]  # in the evaluated update's own row
    assert all(r["eval/copy_accuracy"] and r["eval/mean_ep_length"] for r in table if r["eval/mean_reward"])
    assert not [w for w in caught if SAME_TYPE in w]
    import json

    best = json.loads((out / "best" / "eval.json").read_text())
    assert best["mean_reward"] == pytest.approx(max(float(r["eval/mean_reward"]) for r in table if r["eval/mean_reward"]))
    agent = TextPPO.load(out / "best")  # a normal checkpoint
    assert agent.n_updates == best["n_updates"] and "best" not in [p.name for p in list_checkpoints(out)]
    assert len(tensorboard_steps(out, "eval/mean_reward")) == len(evaluated)


def test_resume_after_a_kill_appends_one_row_per_update(run, tmp_path: Path, monkeypatch, capsys) -> None:
    out = tmp_path / "run"
    shutil.copytree(run[0], out)
    shutil.rmtree(list_checkpoints(out)[-1])  # killed after the last update's row, before its checkpoint
    done = updates_of(out)
    assert len(rows(out)) > done
    targets = "csv,tensorboard"
    if importlib.util.find_spec("trackio") is not None:  # the test extra installs it
        monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))
        targets += ",trackio"
    assert main(["train", "textgym/Copy-v0", "--resume", str(out), "--timesteps", "600", "--report-to", targets]) == 0
    n = updates_of(out)
    table = rows(out)
    assert n > done + 5 and len(table) == n  # the dropped row's update was redone: no duplicate, none lost
    assert [int(float(r["train/n_updates"])) for r in table] == list(range(1, n + 1))
    assert (out / "progress.csv").read_text().count("time/total_timesteps") == 1  # the header, once
    steps = tensorboard_steps(out, "rollout/ep_rew_mean")
    assert len(steps) == len(set(steps)) == n and len(list(out.glob("events.out.tfevents.*"))) == 2
    assert "100%" in capsys.readouterr().err
    if "trackio" in targets:
        import trackio.utils

        assert (out / "trackio.json").is_file() and (Path(trackio.utils.TRACKIO_DIR) / "textgym.db").is_file()


def test_bad_report_to_or_eval_flags_are_one_line_errors(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([*TRAIN, "--report-to", "bogus", "--out", str(tmp_path / "a")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1, err
    assert err.startswith("textgym train: error: argument --report-to: unknown target(s) 'bogus'") and "trackio" in err
    assert main([*TRAIN, "--eval-episodes", "4", "--out", str(tmp_path / "b")]) == 2
    assert "--eval-episodes needs --eval-every" in capsys.readouterr().err
    assert parse_report_to("tensorboard, CSV,csv") == ("tensorboard", "csv") and parse_report_to("none") == ()
    assert parse_report_to(()) == () and parse_report_to([]) == ()  # "none", once parsed, handed on to learn()
    assert main([*TRAIN, "--report-to", "none", "--out", str(tmp_path / "c")]) == 0
    assert not (tmp_path / "c" / "progress.csv").exists() and list((tmp_path / "c").glob("checkpoint-*"))


def test_the_python_api_writes_the_same_records_unless_a_logger_was_set(tmp_path: Path) -> None:
    env = gym.make_vec("textgym/Copy-v0", num_envs=2, model="tiny-random")
    agent = TextPPO("LMPolicy", env, model="tiny-random", seed=0, n_rollouts=1, n_epochs=1)
    evaluation = TextEvalCallback(gym.make_vec("textgym/Copy-v0", num_envs=2, model="tiny-random", split="validation"),
                                  eval_every=2, n_eval_episodes=2, best_model_save_path=tmp_path / "api" / "best")  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        agent.learn(40, save_dir=tmp_path / "api", callback=evaluation)
    assert not [w for w in caught if SAME_TYPE in str(w.message)]
    table = rows(tmp_path / "api")
    assert len(table) == agent.n_updates and [r["eval/mean_reward"] != "" for r in table][1::2] == [True] * (len(table) // 2)
    assert list((tmp_path / "api").glob("events.out.tfevents.*")) and (tmp_path / "api" / "learning_curve.png").is_file()
    assert (tmp_path / "api" / "best" / "eval.json").is_file() and evaluation.best_mean_reward > -float("inf")

    stop = TextEvalCallback(eval_env=evaluation.eval_env, n_eval_episodes=2, verbose=0,
                            callback_on_new_best=StopTrainingOnRewardThreshold(reward_threshold=-1.0))  # fmt: skip
    done = agent.n_updates
    agent.learn(400, callback=stop, reset_num_timesteps=False)  # SB3's stop callbacks work: the first evaluation stops
    assert agent.n_updates == done + 1 and stop.best_mean_reward >= 0

    agent.set_logger(configure(str(tmp_path / "mine"), ["csv"]))  # a custom logger: the run writes none of its own
    agent.learn(20, save_dir=tmp_path / "custom", reset_num_timesteps=False)
    assert (tmp_path / "mine" / "progress.csv").is_file() and not (tmp_path / "custom" / "progress.csv").exists()
    assert list_checkpoints(tmp_path / "custom")
    with pytest.raises(ValueError, match="unknown target"):
        agent.learn(20, save_dir=tmp_path / "x", report_to="csv,wandb")
    with pytest.raises(ValueError, match="report_to needs save_dir"):
        agent.learn(20, report_to="csv")


def test_an_agent_without_a_run_directory_prints_its_table_and_leaves_no_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SB3_LOGDIR", str(tmp_path / "sb3"))  # where SB3's configure(None) would make its folder
    env = gym.make_vec("textgym/Copy-v0", num_envs=2, model="tiny-random")
    TextPPO("LMPolicy", env, model="tiny-random", seed=0, n_rollouts=1, n_epochs=1, verbose=1).learn(8)
    assert "ep_rew_mean" in capsys.readouterr().out  # verbose=1: the per-update table on stdout
    TextPPO("LMPolicy", env, model="tiny-random", seed=0, n_rollouts=1, n_epochs=1).learn(8)
    assert capsys.readouterr().out == "" and not (tmp_path / "sb3").exists()


def test_progress_csv_drops_rows_after_the_checkpoint_and_a_line_cut_by_a_kill(tmp_path: Path) -> None:
    path = tmp_path / "progress.csv"
    path.write_text("time/total_timesteps,rollout/ep_rew_mean\n10,0.1\n20,0.2\n30,0.3\n40,0.")  # killed mid-line
    output = ProgressCSV(path, keep_upto=20)
    assert read_progress(path) == (["time/total_timesteps", "rollout/ep_rew_mean"],
                                   [{"time/total_timesteps": "10", "rollout/ep_rew_mean": "0.1"},
                                    {"time/total_timesteps": "20", "rollout/ep_rew_mean": "0.2"}], False)  # fmt: skip
    output.write({"time/total_timesteps": 31, "rollout/ep_rew_mean": 0.5}, {"time/total_timesteps": None, "rollout/ep_rew_mean": None})
    output.write({"time/total_timesteps": 45, "eval/mean_reward": 0.7}, {"time/total_timesteps": None, "eval/mean_reward": None})
    output.close()
    assert path.read_text() == ("time/total_timesteps,rollout/ep_rew_mean,eval/mean_reward\n10,0.1,\n20,0.2,\n"
                                "31,0.5,\n45,,0.7\n")  # fmt: skip
    assert [r["time/total_timesteps"] for r in output.numbers()] == [10.0, 20.0, 31.0, 45.0]


def test_report_to_trackio_without_trackio_is_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "trackio", None)  # import trackio -> ImportError
    with pytest.raises(DependencyNotInstalled, match=r"report_to 'trackio' needs the trackio package: pip install"):
        TrackioOutput(tmp_path, {})
