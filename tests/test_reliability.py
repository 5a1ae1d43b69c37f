"""Crash-safe training: run directories, signals, kills mid-update / mid-save, non-finite guards.

The kill tests start ``textgym train`` in a subprocess through a tiny launcher
that pauses the process at an exact point (after the first optimizer step of
an update, or after the weights of a checkpoint are written) and writes a
marker file; the test then SIGKILLs it, resumes with ``--resume`` and checks
the final checkpoint against an uninterrupted run: same update and token
counts and the same weights, so no update was lost or applied twice.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import textgym  # noqa: F401
from agents import TextPPO
from agents.common.persistence import CheckpointError, NonFiniteError, list_checkpoints, newest_checkpoint
from tests.test_ppo import FAST, copy_env

ROOT = Path(__file__).parents[1]
TRAIN = ["train", "textgym/Copy-v0", "--model", "tiny-random", "--num-envs", "4", "--timesteps", "60", "--save-every", "1", "--n-rollouts", "1"]


pytestmark = pytest.mark.usefixtures("one_thread")


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return load_file(str(checkpoint / "model.safetensors"))


def test_save_every_keeps_the_newest_and_load_takes_a_run_dir(tmp_path: Path) -> None:
    agent = TextPPO("LMPolicy", copy_env(4), seed=0, **FAST)
    agent.learn(40, save_dir=tmp_path / "run", save_every=1, keep_checkpoints=2)
    names = [p.name for p in list_checkpoints(tmp_path / "run")]
    assert names == [f"checkpoint-{agent.n_updates - 1:06d}", f"checkpoint-{agent.n_updates:06d}"]
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.startswith(".")]  # no temp folders left
    loaded = TextPPO.load(tmp_path / "run", env=copy_env(4))
    assert (loaded.n_updates, loaded.num_timesteps) == (agent.n_updates, agent.num_timesteps)


def test_a_corrupted_newest_checkpoint_is_reported_and_the_previous_used(tmp_path: Path) -> None:
    run = tmp_path / "run"
    agent = TextPPO("LMPolicy", copy_env(4), seed=0, **FAST)
    agent.learn(30, save_dir=run, save_every=1, keep_checkpoints=3)
    older, newest = list_checkpoints(run)[-2:]
    with open(newest / "model.safetensors", "r+b") as f:  # a disk that lost the tail of the file
        f.truncate(100)
    with pytest.raises(CheckpointError, match=r"corrupted; wrong size: model.safetensors \(100 bytes"):
        TextPPO.load(newest, env=copy_env(4))
    with pytest.warns(UserWarning, match="skipping a checkpoint that failed validation"):
        loaded = TextPPO.load(run, env=copy_env(4))
    assert loaded.n_updates == int(older.name.split("-")[1]) == agent.n_updates - 1
    with pytest.warns(UserWarning, match="failed validation"):
        assert newest_checkpoint(run) == older
    (newest / "manifest.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="manifest.json is unreadable"):
        TextPPO.load(newest, env=copy_env(4))


def test_a_broken_file_with_the_right_size_is_a_checkpoint_error(tmp_path: Path) -> None:
    agent = TextPPO("LMPolicy", copy_env(4), seed=0, **FAST)
    ck = agent.save_checkpoint(tmp_path / "run")
    size = (ck / "optimizer.pt").stat().st_size
    (ck / "optimizer.pt").write_bytes(b"\0" * size)
    with pytest.raises(CheckpointError, match=r"could not be read: .*"):
        TextPPO.load(ck, env=copy_env(4))
    with pytest.raises(CheckpointError, match="has no valid checkpoint"), pytest.warns(UserWarning):
        TextPPO.load(tmp_path / "run", env=copy_env(4))


def test_sigterm_finishes_the_update_saves_and_returns(tmp_path: Path) -> None:
    agent = TextPPO("LMPolicy", copy_env(4), seed=0, **FAST)
    sent = []

    def signal_mid_rollout(local, _globals) -> bool:
        if not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGTERM)
        return True

    handler = signal.getsignal(signal.SIGTERM)
    agent.learn(10_000, callback=signal_mid_rollout, save_dir=tmp_path / "run")
    assert agent.n_updates == 1 and agent.num_timesteps < 10_000  # the update of that rollout, then stop
    assert agent.stopped_by_signal
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["checkpoint-000001"]
    assert signal.getsignal(signal.SIGTERM) is handler  # the previous handler is back


def test_a_second_signal_interrupts_at_once() -> None:
    agent = TextPPO("LMPolicy", copy_env(4), seed=0, **FAST)

    def signal_twice(local, _globals) -> bool:
        os.kill(os.getpid(), signal.SIGINT)
        return True

    with pytest.raises(KeyboardInterrupt, match="second SIGINT"):
        agent.learn(10_000, callback=signal_twice)
    assert agent.n_updates == 0


def _nan_forward(policy):
    forward = policy.sequence_forward

    def poisoned(*args, **kwargs):
        logp, entropy, values = forward(*args, **kwargs)
        return logp, entropy, values * float("nan") if policy.training else values

    return poisoned


def test_non_finite_losses_skip_updates_then_stop_with_a_good_checkpoint(tmp_path: Path) -> None:
    agent = TextPPO("LMPolicy", copy_env(4), seed=0, max_nonfinite_updates=2, **FAST)
    agent.learn(10, save_dir=tmp_path / "run")
    before = {k: v.clone() for k, v in agent.policy.state_dict().items()}
    agent.policy.sequence_forward = _nan_forward(agent.policy)
    with pytest.warns(RuntimeWarning, match="non-finite loss or gradient skipped") as record:
        with pytest.raises(NonFiniteError, match=r"2 updates in a row had non-finite .*last good checkpoint: .*run/checkpoint-000001"):
            agent.learn(10_000, reset_num_timesteps=False, save_dir=tmp_path / "run")
    streaks = [re.search(r"\((\d+) update\(s\) in a row; stopping at 2\)", str(w.message)) for w in record]
    assert [m.group(1) for m in streaks if m] == ["1", "2"], [str(w.message) for w in record]
    for key, value in agent.policy.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)  # no NaN step reached the weights
    loaded = TextPPO.load(tmp_path / "run", env=copy_env(4))
    assert all(bool(torch.isfinite(p).all()) for p in loaded.policy.parameters())


def test_a_non_finite_reward_skips_one_update_and_training_goes_on(monkeypatch) -> None:
    from agents.common import on_policy

    real = on_policy.collect_episodes
    calls = []

    def one_nan_reward(*args, **kwargs):
        batch = real(*args, **kwargs)
        calls.append(1)
        if len(calls) == 1:
            batch.env_rewards[0, 0] = float("inf")
        return batch

    monkeypatch.setattr(on_policy, "collect_episodes", one_nan_reward)
    agent = TextPPO("LMPolicy", copy_env(4), seed=0, **FAST)
    before = agent.policy.lm.lm_head.weight.detach().clone()
    with pytest.warns(RuntimeWarning, match=r"1 episode\(s\) with a non-finite reward in the rollout; update skipped"):
        agent.learn(40)
    assert agent.history[0]["train/skipped_update"] == 1.0 and np.isnan(agent.history[0]["rollout/ep_rew_mean"])
    assert agent.n_updates == len(calls) - 1 >= 1 and agent.nonfinite_streak == 0
    assert not torch.equal(before, agent.policy.lm.lm_head.weight)  # the later updates trained


def test_save_refuses_non_finite_weights(tmp_path: Path) -> None:
    agent = TextPPO("LMPolicy", copy_env(4), seed=0, **FAST)
    agent.save(tmp_path / "ck")
    with torch.no_grad():
        agent.policy.lm.lm_head.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match=r"refusing to save .* 1 parameter tensor\(s\) hold NaN/inf \(first: lm\.(lm_head|model\.embed_tokens)"):
        agent.save(tmp_path / "ck")
    TextPPO.load(tmp_path / "ck", env=copy_env(4))  # the previous checkpoint is intact


# -- textgym train in a subprocess, killed at exact points ---------------------------------------
LAUNCHER = """
import os, sys, time, pathlib
from agents import ppo
from agents.common import persistence
marker, where, at = pathlib.Path(os.environ["MARKER"]), os.environ["PAUSE_IN"], int(os.environ["PAUSE_AT"])

def pause(what):
    marker.write_text(what)
    time.sleep(600)

if where == "update":  # after the first optimizer step of update number at + 1
    update = ppo.TextPPO.checked_train
    def paused_update(self, batch):
        if self.n_updates == at:
            step = self.policy.optimizer.step
            def first_step_then_pause(*a, **k):
                step(*a, **k)
                pause("update")
            self.policy.optimizer.step = first_step_then_pause
        return update(self, batch)
    ppo.TextPPO.checked_train = paused_update
else:  # while checkpoint-<at> is written: the weights are on disk, the rest is not
    write = persistence._write
    def paused_write(agent, out):
        if agent.n_updates == at:
            agent.policy.lm.save_pretrained(str(out), safe_serialization=True)
            pause("save")
        return write(agent, out)
    persistence._write = paused_write
from textgym.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"}


def _start_paused(args: list[str], where: str, at: int, marker: Path) -> subprocess.Popen:
    env = {**_env(), "MARKER": str(marker), "PAUSE_IN": where, "PAUSE_AT": str(at)}
    proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, *args], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    deadline = time.monotonic() + 240
    while not marker.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the run never reached the pause point:\n{proc.communicate()[0][-3000:]}")
        time.sleep(0.1)
    return proc


def _textgym(args: list[str]) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "textgym", *args], env=_env(), cwd=ROOT, capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory) -> Path:
    """The same run, never interrupted."""
    run = tmp_path_factory.mktemp("straight") / "run"
    _textgym([*TRAIN, "--out", str(run)])
    return newest_checkpoint(run)


@pytest.mark.parametrize("where, at", [("update", 2), ("save", 3)])
def test_sigkill_then_resume_loses_and_repeats_no_update(tmp_path: Path, straight_run: Path, where: str, at: int) -> None:
    run = tmp_path / "run"
    proc = _start_paused([*TRAIN, "--out", str(run)], where, at, tmp_path / "marker")
    proc.kill()
    proc.wait()
    saved = [int(p.name.split("-")[1]) for p in list_checkpoints(run)]
    if where == "update":  # checkpoints up to update `at`; update at + 1 had taken a step when killed
        assert saved[-1] == at
    else:  # checkpoint-<at> was being written: only its temp folder exists, the previous checkpoint is whole
        assert saved[-1] == at - 1 and [p.name for p in run.iterdir() if p.name.startswith(f".checkpoint-{at:06d}.tmp")]

    out = _textgym(["train", "textgym/Copy-v0", "--resume", str(run)])
    assert f"resuming {run}: {saved[-1]} updates" in out.stdout
    final = newest_checkpoint(run)
    assert final.name == straight_run.name  # same number of updates
    assert not [p for p in run.iterdir() if p.name.startswith(".")]  # the dead save's temp folder is cleaned up
    resumed, straight = TextPPO.load(final), TextPPO.load(straight_run)
    assert (resumed.n_updates, resumed.num_timesteps) == (straight.n_updates, straight.num_timesteps)
    assert len(resumed.history) == len(straight.history) == straight.n_updates
    a, b = weights(final), weights(straight_run)
    for key in b:
        torch.testing.assert_close(a[key], b[key], rtol=1e-6, atol=1e-7)


def test_the_first_signal_asks_to_stop_naming_the_algorithm_and_the_second_stops_at_once(capsys) -> None:
    from agents.common.interrupts import GracefulStop

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt, match="second SIGTERM: stopping without a checkpoint"):
        with GracefulStop("TextRAFT") as stop:
            os.kill(os.getpid(), signal.SIGTERM)
            assert stop.requested and stop.signal == signal.SIGTERM
            assert "TextRAFT: SIGTERM received; finishing the current update" in capsys.readouterr().err
            os.kill(os.getpid(), signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) is before  # the handlers are put back


def test_sigterm_to_textgym_train_exits_0_with_a_checkpoint(tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = [*TRAIN[:-4], "--timesteps", "100000", "--save-every", "1000", "--verbose", "1", "--out", str(run)]
    proc = subprocess.Popen([sys.executable, "-m", "textgym", *args], env=_env(), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    seen = []
    for line in proc.stdout:  # the first update's log table: training is under way
        seen.append(line)
        if "ep_rew_mean" in line:
            break
    assert proc.poll() is None, "".join(seen)[-3000:]
    proc.send_signal(signal.SIGTERM)
    output = "".join(seen) + proc.communicate(timeout=240)[0]
    assert proc.returncode == 0, output[-3000:]
    assert "TextPPO: SIGTERM received; finishing the current update" in output
    checkpoint = newest_checkpoint(run)  # --save-every 1000 was never reached: this is the signal's save
    agent = TextPPO.load(checkpoint)
    assert agent.n_updates >= 1 and checkpoint.name == f"checkpoint-{agent.n_updates:06d}"
    assert agent.num_timesteps < 100_000


def test_history_stays_bounded_and_spans_the_run() -> None:
    agent = TextPPO("LMPolicy", copy_env(2), seed=0, history_size=4, **FAST)
    while agent.n_updates < 10:
        agent.learn(1, reset_num_timesteps=False)
    updates = [int(h["train/n_updates"]) for h in agent.history]
    assert 2 <= len(updates) <= 4
    assert updates == sorted(updates) and updates[-1] == agent.n_updates  # the newest is always kept
    assert updates[0] <= agent.n_updates // 2  # and the early run is still represented
