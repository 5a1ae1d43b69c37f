"""`textgym tune`: Optuna search spaces, a search whose best.yaml trains, a killed search that continues, and two
processes sharing one SQLite study."""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

optuna = pytest.importorskip("optuna")

from agents import ALGORITHMS, algorithm, load_agent  # noqa: E402
from agents.tune import SEARCH_SPACES, SearchSpace  # noqa: E402
from textgym.cli import main  # noqa: E402

ROOT = Path(__file__).parents[1]
ENV = "textgym/Copy-v0"
# a trial of a few seconds: 300 tokens of the tiny model, 8 episodes per update, 8 validation samples
FAST = ["--model", "tiny-random", "--timesteps", "300", "--min-episodes", "8", "--eval-every", "2",
        "--eval-episodes", "8"]  # fmt: skip
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
pytestmark = pytest.mark.usefixtures("one_thread")


def finished(study) -> dict[int, float | None]:
    return {t.number: t.value for t in study.get_trials(states=FINISHED)}


def load_study(out: Path, name: str = f"{ENV}-ppo"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{out.resolve() / 'study.db'}")


def tune_process(out: Path, trials: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    argv = [sys.executable, "-m", "textgym", "tune", ENV, *FAST, "--trials", str(trials), "--out", str(out)]
    return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


# -- the search spaces ------------------------------------------------------------------------------------------
def test_every_algorithm_has_a_search_space() -> None:
    assert set(SEARCH_SPACES) == set(ALGORITHMS)


@pytest.mark.parametrize("algo", sorted(ALGORITHMS))
def test_every_sample_is_a_valid_config_and_fixed_fields_are_not_searched(algo: str) -> None:
    config_class = algorithm(algo).config_class
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen: dict[str, set] = {}
    for _ in range(30):
        space = SearchSpace(study.ask(), fixed={"n_epochs": 2}, num_envs=12, learning_rate=1e-3)
        SEARCH_SPACES[algo](space)
        config = config_class.build(space.params)  # every sampled value passes the config's checks
        assert 12 % config.group_size == 0 and "n_epochs" not in space.params
        assert 1e-4 <= space.params["learning_rate"] <= 1e-2  # a decade either side of the centre
        for name, value in space.params.items():
            seen.setdefault(name, set()).add(value)
    assert {"learning_rate", "kl_coef", "temperature"} <= set(seen)
    assert all(len(values) > 1 for values in seen.values()), seen  # every parameter really varies
    if config_class.min_group_size > 1:
        assert seen["group_size"] == {2, 4}  # the sizes that divide num_envs=12 (8 and 16 do not)


# -- the command line --------------------------------------------------------------------------------------------
def test_help_shows_the_search_flags_and_the_fields_that_can_be_fixed(capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "1000")
    with pytest.raises(SystemExit):
        main(["tune", "--algo", "grpo", "--help"])
    text = capsys.readouterr().out
    for flag in ("--trials N", "--timeout S", "--storage URL", "--study-name NAME", "--timesteps N", "--pruner"):
        assert flag in text, flag
    assert "grpo hyperparameters held fixed (not searched)" in text and "--loss-type" in text
    assert "(default: 20)" in text and "else 4000)" in text


@pytest.mark.parametrize(
    "argv, expected",
    [
        ([ENV, "--algo", "a2c"], ["textgym tune: error:", "--algo", "'a2c'"]),
        ([ENV, "--trials", "0"], ["textgym tune: error:", "--trials", "positive integer"]),
        (["textgym/Nope-v0", "--model", "tiny-random"], ["textgym: error:", "Nope"]),
        ([ENV, "--algo", "grpo", "--num-envs", "3", "--model", "tiny-random"], ["textgym: error:", "num_envs=3"]),
        ([ENV, "--storage", "nodb://x", "--model", "tiny-random", "--learning-rate", "1e-3"],
         ["textgym: error:", "nodb://x"]),  # fmt: skip
    ],
)
def test_bad_input_is_one_line(argv: list[str], expected: list[str], tmp_path: Path, capsys) -> None:
    try:
        code = main(["tune", *argv, "--out", str(tmp_path / "out")])
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert all(word in err for word in expected), err


def test_a_study_is_continued_only_with_its_own_settings(tmp_path: Path, capsys) -> None:
    study = optuna.create_study(study_name=f"{ENV}-ppo", storage=f"sqlite:///{tmp_path / 'study.db'}")
    study.set_user_attr("textgym_settings", {"id": ENV, "timesteps": 1000})
    assert main(["tune", ENV, *FAST, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "timesteps=1000 (now 300)" in err and "--study-name" in err, err
    assert not load_study(tmp_path).trials  # nothing ran


# -- a search, its best.yaml, a kill, two processes -----------------------------------------------------------------
def test_readme_tune_runs_six_trials_and_its_best_yaml_trains(tmp_path: Path, monkeypatch, capsys) -> None:
    from tests.test_authoring import readme_block

    monkeypatch.chdir(tmp_path)
    commands = [shlex.split(line) for line in readme_block("tune").splitlines() if line.startswith("textgym ")]
    assert [c[1] for c in commands] == ["tune", "train"]
    assert main(commands[0][1:]) == 0
    out = tmp_path / "runs" / "tune-copy"
    study = load_study(out)
    assert len(finished(study)) == 6
    text = capsys.readouterr().out
    assert "6 finished trial(s) of 6" in text and f"best: trial {study.best_trial.number}" in text
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best == study.best_trial.user_attrs["config"] and best["min_episodes"] == 8  # the fixed field is kept
    assert {k: best[k] for k in study.best_trial.params} == study.best_trial.params
    rows = (out / "trials.csv").read_text().splitlines()
    assert len(rows) == 7 and rows[0].startswith("number,state,value")
    for plot in ("optimization_history.png", "param_importances.png"):
        assert (out / plot).read_bytes()[:4] == b"\x89PNG", plot
    assert main(commands[0][1:]) == 0 and len(finished(load_study(out))) == 6  # the study has its 6: none added

    assert main(commands[1][1:]) == 0  # textgym train --config best.yaml
    agent = load_agent(str(tmp_path / "runs" / "copy-tuned"))
    for name, value in study.best_trial.params.items():
        assert getattr(agent.config, name) == pytest.approx(value), name
    assert agent.num_timesteps >= 600


def test_two_processes_share_one_study_and_a_killed_one_loses_nothing(tmp_path: Path) -> None:
    """Two processes on one SQLite study; one is SIGKILLed once it has finished a trial, the other completes the
    study (seeing the killed one's trial), and a rerun continues the same study to a larger total."""
    out = tmp_path / "tune"
    first, second = tune_process(out, trials=3), tune_process(out, trials=3)
    worker = f"{socket.gethostname()}:{first.pid}"
    deadline = time.monotonic() + 120
    try:  # trials.csv is rewritten after each trial: kill the first once it lists a trial of its own
        while time.monotonic() < deadline and first.poll() is None:
            csv = (out / "trials.csv").read_text() if (out / "trials.csv").exists() else ""
            if any(re.search(r",(COMPLETE|PRUNED),", line) and worker in line for line in csv.splitlines()):
                break
            time.sleep(0.1)
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate()
    assert first.returncode == -signal.SIGKILL, "the first process ended before it could be killed"
    text = second.communicate(timeout=180)[0]
    assert second.returncode == 0, text
    before = finished(load_study(out))
    workers = {t.user_attrs["worker"] for t in load_study(out).get_trials(states=FINISHED)}
    assert workers == {worker, f"{socket.gethostname()}:{second.pid}"}  # both took trials of one study
    assert len(before) >= 3 and int(re.findall(r"(\d+) finished trial\(s\) of 3 \(", text)[-1]) >= 3, text

    rerun = tune_process(out, trials=len(before) + 1)
    text = rerun.communicate(timeout=180)[0]
    assert rerun.returncode == 0, text
    assert f"{len(before)} finished trial(s) of {len(before) + 1}" in text  # it continued the study
    after = finished(load_study(out))
    assert len(after) == len(before) + 1 and {n: after.get(n) for n in before} == before  # nothing lost or redone
    csv_workers = {line.split(",")[5] for line in (out / "trials.csv").read_text().splitlines()[1:]}
    assert workers <= csv_workers
