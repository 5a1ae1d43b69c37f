"""textgym/GuessNumber-v0: the multi-turn sanity task (higher/lower replies, action mask, scoring, data)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import textgym
from tests.conftest import TINY
from textgym.errors import ConfigError
from textgym.tasks.guess import GuessNumberTask, read_guess
from textgym.wrappers import SequenceLevel

ENV_ID = "textgym/GuessNumber-v0"


@pytest.fixture(scope="module")
def env():
    return SequenceLevel(gym.make(ENV_ID, model=TINY, split="test"))


def index_of(env, target: int) -> int:
    return next(i for i, s in enumerate(env.unwrapped.setup.samples) if s.meta["target"] == target)


def test_action_mask_allows_only_the_ten_digits_and_eos(env) -> None:
    setup = env.unwrapped.setup
    allowed = np.flatnonzero(setup.action_mask)
    assert sorted(setup.tokenizer.decode([t]) for t in allowed if t != setup.eos_id) == list("0123456789")
    assert setup.eos_id in allowed and len(allowed) == 11


def test_replies_say_higher_or_lower_and_a_right_guess_ends_the_episode(env) -> None:
    for target in range(10):
        for guess in range(10):
            _, info = env.reset(options={"index": index_of(env, target)})
            assert info["references"] == []  # the number stays hidden
            _, reward, terminated, truncated, info = env.step(str(guess))
            assert reward == pytest.approx(1 - abs(guess - target) / 9)
            if guess == target:
                assert terminated and info["turns"] == 1 and info["metrics"]["guess_correct"] == 1.0
            else:
                assert not (terminated or truncated)
                assert info["prompt"] == ("higher" if guess < target else "lower")
                assert info["reply_text"] == f"\n\n{info['prompt']}\n"  # no chat template: a short plain reply


def test_a_bisecting_player_always_finds_it_and_outscores_a_stubborn_one(env) -> None:
    """The return is the mean closeness of the game's guesses: bisection finds every number and beats always-"0"."""
    bisecting, stubborn = [], []
    for target in range(10):
        env.reset(options={"index": index_of(env, target)})
        low, high, total, done, info, close = 0, 9, 0.0, False, {}, []
        while not done:
            guess = (low + high) // 2
            close.append(1 - abs(guess - target) / 9)
            _, reward, terminated, truncated, info = env.step(str(guess))
            total += reward
            done = terminated or truncated
            if not done:
                low, high = (guess + 1, high) if info["prompt"] == "higher" else (low, guess - 1)
        assert terminated and info["turns"] <= 4 and info["metrics"]["guess_correct"] == 1.0
        assert total == pytest.approx(np.mean(close)) == pytest.approx(info["turn_scores"][-1])
        bisecting.append(total)
        env.reset(options={"index": index_of(env, target)})
        total = 0.0
        for _ in range(4):
            _, reward, terminated, truncated, info = env.step("0")
            total += reward
            if terminated or truncated:
                break
        assert info["turns"] == (1 if target == 0 else 4)
        assert total == pytest.approx(1 - target / 9) == pytest.approx(info["turn_scores"][-1])
        stubborn.append(total)
    assert np.mean(bisecting) > np.mean(stubborn) + 0.2


def test_a_random_player_gets_a_varied_reward_from_the_first_episode() -> None:
    """The learning signal: uniform tokens over the action mask make a guess on most turns, and returns vary."""
    env = gym.make(ENV_ID, model=TINY)
    rng = np.random.default_rng(0)
    allowed = np.flatnonzero(env.unwrapped.action_masks())
    returns, guesses, turns = [], 0, 0
    for seed in range(48):
        env.reset(seed=seed)
        total, done = 0.0, False
        while not done:
            _, reward, terminated, truncated, info = env.step(int(rng.choice(allowed)))
            total += reward
            done = terminated or truncated
        returns.append(total)
        turns += info["turns"]
        guesses += sum(read_guess(t) is not None for t in info["turn_texts"])
        assert total == pytest.approx(info["turn_scores"][-1])  # "final": the return is the last guess's score
    assert guesses / turns > 0.8
    assert 0.3 < np.mean(returns) < 0.95 and np.std(returns) > 0.1


def test_data_is_deterministic_and_every_number_is_in_every_split() -> None:
    task = GuessNumberTask()
    sizes = task.splits_info()
    assert sizes == {"train": 512, "validation": 64, "test": 64}
    for split in sizes:
        assert [s.meta["target"] for s in task.samples(split)] == [s.meta["target"] for s in GuessNumberTask().samples(split)]
        assert {s.meta["target"] for s in task.samples(split)} == set(range(10))


def test_turns_sets_the_guesses_and_is_validated() -> None:
    one = gym.make(ENV_ID, model=TINY, turns=1).unwrapped
    assert one.text_spec.max_turns == 1 and one.observation_space["input_ids"].shape == (80 + 2,)
    spec = gym.make(ENV_ID, model=TINY).unwrapped.text_spec
    assert (spec.max_turns, spec.max_new_tokens, spec.max_reply_tokens) == (4, 2, 24) and spec.multi_turn
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ConfigError, match=r"turns must be an integer >= 1 \(guesses per episode\), got"):
            gym.make(ENV_ID, model=TINY, turns=bad)


def test_list_and_info_show_the_new_envs(capsys) -> None:
    from textgym.cli import main

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert ENV_ID in out and "textgym/CodeRepairFeedback-v0" in out
    assert main(["info", ENV_ID, "--model", TINY]) == 0
    out = capsys.readouterr().out
    assert "guess_closeness" in out and "train=512" in out and "higher/lower" in out
    assert textgym.ENVS[ENV_ID].kwargs["turns"] == 4


def test_readme_multi_turn_example_runs_as_written(capsys) -> None:
    from tests.test_authoring import readme_block

    namespace = {"__name__": "readme"}
    exec(compile(readme_block("multi-turn"), "README.md", "exec"), namespace)
    out = capsys.readouterr().out
    assert "higher" in out or "lower" in out
    info = namespace["info"]
    assert info["metrics"]["guess_correct"] == 1.0  # bisection found it
    assert namespace["total"] == pytest.approx(info["turn_scores"][-1]) and 0.5 < namespace["total"] <= 1.0
