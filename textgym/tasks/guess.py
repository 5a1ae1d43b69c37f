"""GuessNumber: a multi-turn sanity task a tiny randomly initialised model learns in seconds.

The env hides a number from 0 to 9; the agent guesses, the env replies
``higher`` or ``lower`` (the next user turn), and the agent guesses again, up
to ``turns`` guesses (default 4: bisection finds any of the ten numbers in
four); a right guess ends the episode.  It is to multi-turn training what
``Copy-v0`` is to single turns: the action mask allows only the ten digit
tokens and EOS, so even a random model makes a guess almost every turn and the
reward moves from the first update.

The guess is the answer's first digit (an answer is one digit and EOS;
anything after the first digit is ignored).  Each guess scores
``guess_closeness = 1 - |guess - target| / 9`` (0 for an answer without a
digit; ``guess_correct`` is 1 for the right number), and the game so far
scores ``game_score``, the mean closeness of its guesses: the reward.
``turn_rewards = "final"``: the reward of a turn is the change of the game
score, so an episode's return is the mean closeness of all its guesses -- 1
only for a right first guess, 0.89 for 5, 8, 7 when the number is 7.  Every
guess counts, so each one gets credit: the first should be central, a guess
after ``higher`` larger than the last.  A ``"sum"`` of turn scores would pay
more for a long game of near misses (0.89 + 1) than for an immediate right
guess (1), and the last guess alone would leave the early ones without signal.

Data: targets drawn from fixed seeds (one stream per split, no files):
512 train, 64 validation and 64 test episodes.

Example:
    >>> import gymnasium as gym, textgym
    >>> env = gym.make("textgym/GuessNumber-v0", model="tiny-random")
    >>> obs, info = env.reset(seed=0)
    >>> tokenizer = env.unwrapped.tokenizer
    >>> _ = env.step(tokenizer.convert_tokens_to_ids("0"))
    >>> obs, reward, terminated, truncated, info = env.step(tokenizer.eos_token_id)
    >>> info["prompt"] in ("higher", "lower") or terminated
    True
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from textgym.data.base import Sample, check_split
from textgym.errors import ConfigError
from textgym.tasks.base import Task

DIGITS = "0123456789"
SPLIT_SIZES = {"train": 512, "validation": 64, "test": 64}
SPLIT_SEEDS = {"train": 0, "validation": 1, "test": 2}
PROMPT = "Guess my number, 0 to 9: one digit. I say higher or lower."
NO_GUESS = "One digit, 0 to 9."
_DIGIT = re.compile(r"\d")


def closeness(text: str, target: int) -> float:
    """``1 - |guess - target| / 9`` of an answer's guess (0 without a digit).

    >>> closeness("7", 7), round(closeness("5", 7), 3), closeness("no", 7)
    (1.0, 0.778, 0.0)
    """
    guess = read_guess(text)
    return 0.0 if guess is None else 1.0 - abs(guess - target) / 9.0


def read_guess(text: str) -> int | None:
    """The guess an answer makes: its first digit, or None.

    Example:
        >>> read_guess("7"), read_guess(" 42"), read_guess("no idea")
        (7, 4, None)
    """
    match = _DIGIT.search(text)
    return None if match is None else int(match.group())


def guess_scores(texts: Sequence[str], samples: Sequence[Sample], names: frozenset[str]) -> dict[str, np.ndarray]:
    """Metric group of ``guess_closeness``, ``guess_correct`` and ``game_score`` (the turn's sample carries the
    closeness of the game's earlier guesses in ``meta["earlier"]``)."""
    close, correct, game = [], [], []
    for text, sample in zip(texts, samples):
        target = int(sample.meta["target"])
        close.append(closeness(text, target))
        correct.append(float(read_guess(text) == target))
        earlier = sample.meta.get("earlier", ())
        game.append((sum(earlier) + close[-1]) / (len(earlier) + 1))
    out = {"guess_closeness": np.array(close), "guess_correct": np.array(correct), "game_score": np.array(game)}
    return {name: out[name] for name in names}


class GuessNumberTask(Task):
    """Find a hidden digit from ``higher`` / ``lower`` replies (see the module docstring)."""

    description = "Synthetic multi-turn sanity task: guess a hidden digit 0-9 from higher/lower replies (action-masked)"
    default_reward = "game_score"
    info_metrics = ("guess_closeness", "guess_correct", "game_score")
    main_metric = "game_score"
    turn_rewards = "final"
    chat = False  # a short plain prompt: a tiny random model must attend from its guess to the reply

    def __init__(self, turns: int = 4) -> None:
        super().__init__()
        if isinstance(turns, bool) or not isinstance(turns, int) or turns < 1:
            raise ConfigError(f"turns must be an integer >= 1 (guesses per episode), got {turns!r}")
        self.max_turns = turns

    def load(self, split: str) -> list[Sample]:
        split = check_split(split)
        targets = np.random.default_rng(SPLIT_SEEDS[split]).integers(0, 10, size=SPLIT_SIZES[split])
        return [Sample(f"guess-{split}-{i}", PROMPT, (str(t),), {"target": int(t)}) for i, t in enumerate(targets)]

    def public_references(self, sample: Sample) -> list[str]:
        """None: the reference is the hidden number."""
        return []

    def followup(self, sample: Sample, responses: Sequence[str]) -> Sample | None:
        """``higher`` / ``lower`` after a wrong guess (a reminder after an answer without a digit); None after a right one."""
        guess, target = read_guess(responses[-1]), int(sample.meta["target"])
        if guess == target:
            return None
        message = NO_GUESS if guess is None else "higher" if guess < target else "lower"
        earlier = tuple(closeness(text, target) for text in responses)
        return Sample(sample.id, message, sample.references, {**sample.meta, "earlier": earlier})

    def action_mask(self, tokenizer: Any) -> np.ndarray:
        mask = np.zeros(len(tokenizer), dtype=bool)
        for digit in DIGITS:
            ids = tokenizer.encode(digit, add_special_tokens=False)
            if len(ids) != 1:
                raise ConfigError(f"GuessNumber needs one token per digit; {digit!r} is {len(ids)} tokens for this tokenizer")
            mask[ids[0]] = True
        mask[tokenizer.eos_token_id] = True
        return mask
