"""What every on-policy algorithm shares: exact resume, the episodes-per-update warning, defaults that learn."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import gymnasium as gym
import pytest
import torch

import textgym  # noqa: F401
from agents import ALGORITHMS, algorithm

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = {"model": "tiny-random", "learning_rate": 1e-3, "n_epochs": 2, "n_rollouts": 1, "group_size": 2}


def copy_env(n: int = 4, **kwargs):
    return gym.make_vec("textgym/Copy-v0", num_envs=n, model="tiny-random", **kwargs)


@pytest.mark.parametrize("algo", sorted(ALGORITHMS))
def test_resume_equals_straight_training(tmp_path: Path, algo: str) -> None:
    cls = algorithm(algo)
    first = cls("LMPolicy", copy_env(), seed=3, **FAST)
    first.learn(1)  # one update
    n1 = first.num_timesteps
    first.save(tmp_path / "ck")
    resumed = cls.load(tmp_path / "ck", env=copy_env())
    assert resumed.num_timesteps == n1 and type(resumed) is cls
    resumed.learn(1, reset_num_timesteps=False)  # one more update
    straight = cls("LMPolicy", copy_env(), seed=3, **FAST)
    straight.learn(n1 + 1)  # two updates in one call
    assert straight.n_updates == resumed.n_updates == 2 and straight.num_timesteps == resumed.num_timesteps
    moved = max(float((a - b).abs().max()) for a, b in zip(first.policy.state_dict().values(),
                                                            straight.policy.state_dict().values()))  # fmt: skip
    assert moved > 1e-4  # the second update changed the weights: the comparison is not empty
    for a, b in zip(straight.policy.state_dict().values(), resumed.policy.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_load_refuses_another_algorithms_checkpoint(tmp_path: Path) -> None:
    from agents import TextGRPO, TextPPO, load_agent
    from agents.common.persistence import CheckpointError

    TextGRPO("LMPolicy", copy_env(), seed=0, **FAST).save(tmp_path / "grpo")
    with pytest.raises(CheckpointError, match=r"is a 'grpo' agent, not 'ppo'"):
        TextPPO.load(tmp_path / "grpo")
    assert type(load_agent(str(tmp_path / "grpo"))) is TextGRPO


def test_few_episodes_per_update_warn_and_the_default_collects_64() -> None:
    from agents import TextPPO

    with pytest.warns(UserWarning, match=r"4 episodes per update"):
        TextPPO("LMPolicy", copy_env(), model="tiny-random", n_rollouts=1)
    assert TextPPO("LMPolicy", copy_env(8), model="tiny-random").n_rollouts == 8  # 8 x 8 = min_episodes


@pytest.mark.parametrize("algo", ["grpo", "rloo"])
def test_group_algorithms_need_groups(algo: str) -> None:
    from textgym.errors import ConfigError

    with pytest.raises(ConfigError, match=r"group_size must be >= 2, got 1"):
        algorithm(algo)("LMPolicy", copy_env(), model="tiny-random", group_size=1)


# RAFT learns from its best answers only, and a random model's best answer to Copy-v0 is mostly its own guesses:
# fine-tuning on them sharpens its biases as much as the correct tokens (no negative examples push them down).
# Measured with the CLI defaults (40k tokens): 0.071 -> 0.167; 0.15-0.19 with 2-4 epochs, groups of 8, keeping
# 2-4 or temperature 0.7, and 0.159 after 120k tokens. It is meant for a competent model: `sft+raft`.
COPY_GAIN = {"raft": 0.05}


@pytest.mark.learning
@pytest.mark.parametrize("algo", sorted(ALGORITHMS))
def test_cli_defaults_learn_copy(tmp_path: Path, algo: str) -> None:
    """Every algorithm's defaults learn Copy-v0: ``textgym train textgym/Copy-v0 --model tiny-random --algo X``,
    no other flag, takes greedy test accuracy up by at least 0.2 (RAFT: 0.05, see ``COPY_GAIN``) in a few CPU
    minutes."""
    from agents.common.persistence import newest_checkpoint
    from agents.common.policies import LMPolicy
    from agents.evaluation import evaluate_policy_on_env

    test_env = gym.make_vec("textgym/Copy-v0", num_envs=32, model="tiny-random", split="test")

    def accuracy(model: str) -> float:
        policy = LMPolicy(test_env.single_observation_space, test_env.single_action_space, lambda _: 0.0, model=model,
                          action_mask=test_env.text_spec.action_mask)  # fmt: skip
        return evaluate_policy_on_env(policy, test_env)["reward_mean"]

    run = tmp_path / algo
    cmd = [sys.executable, "-m", "textgym", "train", "textgym/Copy-v0", "--model", "tiny-random", "--algo", algo,
           "--out", str(run)]  # fmt: skip
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, text=True,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
        # CPU seconds of that process (os.wait4's rusage), not wall-clock: the other tests share the cores, so a
        # wall-clock figure would measure the load as much as the training
        _, status, usage = os.wait4(proc.pid, 0)
        err.seek(0)
        assert os.waitstatus_to_exitcode(status) == 0, f"textgym train --algo {algo} failed: {err.read()[-3000:]}"
    seconds = usage.ru_utime + usage.ru_stime
    before, after = accuracy("tiny-random"), accuracy(str(newest_checkpoint(run)))
    print(f"{algo}: copy accuracy {before:.3f} -> {after:.3f} in {seconds:.0f} CPU s")
    assert after >= before + COPY_GAIN.get(algo, 0.2), (before, after)
    # one thread: 60-150 CPU s on this project's CPUs (the slowest, 55 GFLOP/s in fp32); the bound catches a
    # training that became several times slower, not a slower machine
    assert seconds < 300, f"{algo}: {seconds:.0f} CPU seconds"


@pytest.mark.learning
def test_readme_textppo_block_runs_as_written_and_learns(tmp_path: Path, monkeypatch) -> None:
    from tests.test_authoring import readme_block

    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme"}
    exec(compile(readme_block("textppo"), "README.md", "exec"), namespace)
    rewards = [h["rollout/ep_rew_mean"] for h in namespace["agent"].history]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert last >= first + 0.05, (first, last)
    assert namespace["action"].shape == (8,) and isinstance(namespace["texts"][0], str)


def test_readme_textgrpo_block_runs_as_written(tmp_path: Path, monkeypatch) -> None:
    from tests.test_authoring import readme_block

    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme"}
    exec(compile(readme_block("textgrpo"), "README.md", "exec"), namespace)
    agent = namespace["agent"]
    assert agent.config.loss_type == "dr_grpo" and agent.n_updates >= 1
