"""Wrappers around TextEnv.

:class:`SequenceLevel` turns the token-level env into one whose action is a
whole response string: for agents that produce full texts (zero-shot
language models, API models, humans).  The string is tokenized with the
env's tokenizer, cut to ``max_new_tokens`` and played token by token, so the
reward and ``info`` are exactly the token-level env's.  One step is one
episode, or, in a multi-turn task, one turn (one answer).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from textgym.episodes import check_actions
from textgym.errors import InvalidAction


def response_tokens(setup: Any, answer: str | Sequence[int]) -> list[int]:
    """The token-level actions of a whole answer (a text, or its token ids): its tokens, cut to
    ``max_new_tokens``, then EOS if room."""
    if isinstance(answer, str):
        ids = setup.tokenizer(answer, add_special_tokens=False)["input_ids"]
    else:
        ids = check_actions(np.asarray(answer, dtype=np.int64) if len(answer) else np.zeros(0, np.int64),
                            len(answer), setup.vocab_size).tolist()
    tokens = ids[: setup.max_new_tokens]
    if len(tokens) < setup.max_new_tokens:
        tokens.append(setup.eos_id)
    return tokens


class SequenceLevel(gym.Wrapper):
    """One step per answer: the action is the complete answer, as text or as token ids.

    A single-turn episode is one step.  In a multi-turn task (e.g.
    ``Dialogue-v0`` with ``turns=k``, ``GuessNumber-v0``) each step answers one
    turn: it returns that turn's reward, the observation with the env's reply
    appended (the conversation so far) and the token-level env's info of the
    turn's last token (``turn``, ``turn_text``, ``turn_metrics``,
    ``turn_score``, ``reply_ids``, ``reply_text`` and the message as
    ``prompt``); the step of the last turn ends the episode with the final info
    (``turns``, ``turn_texts``, ``turn_scores``).  The rewards of an episode sum
    to the token-level env's.

    Example:
        >>> import gymnasium as gym, textgym
        >>> from textgym.wrappers import SequenceLevel
        >>> env = SequenceLevel(gym.make("textgym/Copy-v0", model="tiny-random"))
        >>> obs, info = env.reset(seed=0)
        >>> _, reward, terminated, truncated, info = env.step(info["references"][0])
        >>> reward
        1.0
    """

    #: one step of this wrapper is many steps of the env below (see :func:`textgym.env.outer_time_limit`)
    aggregates_steps: ClassVar[bool] = True

    def __init__(self, env: gym.Env, max_chars: int = 100_000) -> None:
        super().__init__(env)
        self.action_space = gym.spaces.Text(max_length=max_chars, min_length=0)
        self._setup = env.unwrapped.setup

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        ids = isinstance(action, (list, tuple, np.ndarray)) and all(
            isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in action)
        if not (isinstance(action, str) or ids):
            raise InvalidAction("SequenceLevel actions are response strings or lists of token ids, "
                                f"got {type(action).__name__} {action!r:.200}")
        total = 0.0
        for token in response_tokens(self._setup, action):
            obs, reward, terminated, truncated, info = self.env.step(np.int64(token))
            total += float(reward)
            if terminated or truncated or "turn" in info:  # the episode, or this turn, is over
                return obs, total, bool(terminated), bool(truncated), info
        raise AssertionError("unreachable: a turn always ends within max_new_tokens")
