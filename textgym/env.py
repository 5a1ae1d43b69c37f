"""TextEnv: one text-generation episode per prompt, one token per step."""

from __future__ import annotations

import sys
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np

from textgym.envsetup import EnvSetup
from textgym.episodes import Episodes, check_actions
from textgym.errors import ConfigError
from textgym.spec import TextSpec

RENDER_MODES = ["ansi"]


def check_render_mode(render_mode: str | None) -> str | None:
    if render_mode is not None and render_mode not in RENDER_MODES:
        raise ConfigError(f"render_mode must be None or one of {RENDER_MODES}, got {render_mode!r}")
    return render_mode


def outer_time_limit(env: gym.Env, max_frames: int = 32) -> int | None:
    """``max_episode_steps`` of the Gymnasium ``TimeLimit`` around ``env`` whose ``reset()`` is running.

    An env cannot see its wrappers, but a ``reset()`` through a ``TimeLimit`` runs
    inside that wrapper's ``reset``: the call stack (at most ``max_frames`` frames
    up) names it.  A ``TimeLimit`` that counts the steps of a wrapper that plays
    several env steps per step (``aggregates_steps = True``, as
    :class:`~textgym.wrappers.SequenceLevel`) does not limit the env's own steps and
    is skipped.  The smallest limit wins; None when there is none.
    """
    limits = []
    frame = sys._getframe(1)
    for _ in range(max_frames):
        frame = frame.f_back
        if frame is None:
            break
        wrapper = frame.f_locals.get("self")
        if not isinstance(wrapper, gym.wrappers.TimeLimit) or wrapper.unwrapped is not env:
            continue
        inner = wrapper.env
        while isinstance(inner, gym.Wrapper) and not getattr(type(inner), "aggregates_steps", False):
            inner = inner.env
        steps = getattr(wrapper, "_max_episode_steps", None)
        if inner is env and isinstance(steps, int):
            limits.append(steps)
    return min(limits) if limits else None


class TextEnv(gym.Env[dict[str, np.ndarray], np.int64]):
    """A text task as a Gymnasium environment: the agent writes the answer token by token.

    ## Description
    Each episode is one prompt drawn from the task's ``split``.  At every step
    the agent appends one token to its answer; the episode ends when it emits
    the tokenizer's EOS token or has written ``max_new_tokens`` tokens, and the
    answer is then scored by the task's metric.

    ## Action Space
    ``Discrete(vocab_size)``: the id of the next token.  Tasks may declare an
    action mask (``action_masks()``, and ``info["action_mask"]`` at reset) of
    the tokens a well-behaved agent uses; any in-range action is accepted.

    ## Observation Space
    A ``Dict`` of two int64 arrays of length ``max_prompt_tokens +
    conversation_tokens`` (``text_spec.conversation_tokens``; it is
    ``max_new_tokens`` for a single-turn task): ``input_ids`` (the left-padded
    prompt, then the tokens generated so far) and ``attention_mask`` (1 where
    ``input_ids`` holds a real token).  The pad id may equal EOS (SmolLM2):
    read lengths from the mask, never from the pad id.

    ## Rewards
    ``reward_mode="sparse"`` (default): 0 at every step, the task's score of
    the finished text at the last step.  ``reward_mode="dense"``: at every
    step the change of the score of the text so far; the rewards of an
    episode sum to its sparse reward.  ``info["metrics"]`` holds every metric
    of the finished text.

    ## Multi-turn tasks
    A task with ``max_turns > 1`` may continue an episode after an answer
    (:meth:`~textgym.tasks.base.Task.next_turn`).  A turn ends on EOS or after
    ``max_new_tokens`` tokens of that turn; it is scored (reward at its last
    token, by the task's ``turn_rewards``: ``"sum"``, the turn's score, or
    ``"final"``, the change from the previous turn's score, so the episode's
    return is the last turn's score).  When the episode goes on, the env's
    message is appended to the observation right after the answer (the
    conversation grows: ``[prompt | answer 1 | reply 1 | answer 2 ...]``, the
    answers exactly as emitted) and ``info`` of that step has ``turn``,
    ``turn_text``, ``turn_metrics``, ``turn_score``, ``reply_ids`` (exactly the
    tokens appended), ``reply_text``, ``prompt`` (the message) and
    ``references``.  The final ``info`` adds ``turns``, ``turn_texts`` and
    ``turn_scores``; its ``metrics`` are the means over turns (``"sum"``) or the
    last turn's (``"final"``).  An episode that still had turns left when the
    step limit cut it is ``truncated``.

    ## Episode End
    ``terminated``: the agent emitted EOS (ending the last turn).  ``truncated``:
    ``max_new_tokens`` tokens were written.  In both cases the text has been scored and the
    episode is over: unlike a Gymnasium time limit, there is nothing left to
    bootstrap, so agents should treat truncation as terminal (TextPPO does).
    A Gymnasium ``TimeLimit`` around the env (``gym.make(id,
    max_episode_steps=n)``, or ``TimeLimit(env, n)``) is honoured the same way:
    at its ``n``-th step (counted over every turn) the env itself ends the
    episode, ``truncated`` and scored, so the reward and ``info["metrics"]``
    are there (the env finds the wrapper at ``reset()``: :func:`outer_time_limit`).

    ## Arguments
    ``task``: the Task (class, ``"module:Class"`` or instance); ``model``: the
    model alias, path or hub id whose tokenizer the env uses (default
    ``smollm2-135m-instruct``); ``split``; ``max_new_tokens`` (per answer);
    ``max_prompt_tokens``; ``max_reply_tokens`` (multi-turn tasks: the longest
    message between two answers, default 64); ``reward`` (metric name, ``{name: weight}`` or a
    callable); ``reward_mode``; ``render_mode`` (``"ansi"``);
    ``scoring_workers`` (score text metrics of finished episodes in that many
    worker processes; 0 = in-process); and the task's own keyword arguments.

    ## Version History
    * v0: initial version.

    Example:
        >>> import gymnasium as gym, textgym
        >>> env = gym.make("textgym/Copy-v0", model="tiny-random")
        >>> obs, info = env.reset(seed=0)
        >>> obs["input_ids"].shape == env.observation_space["input_ids"].shape
        True
    """

    metadata: dict[str, Any] = {"render_modes": RENDER_MODES, "render_fps": 1}

    def __init__(self, task: Any, *, render_mode: str | None = None, **kwargs: Any) -> None:
        """``kwargs``: the env settings of :class:`~textgym.envsetup.EnvSetup` and the task's own."""
        self.render_mode = check_render_mode(render_mode)
        self.setup = EnvSetup(task, owner=type(self).__name__, **kwargs)
        self.observation_space = self.setup.observation_space
        self.action_space = self.setup.action_space
        self.reward_range = self.setup.reward.range
        self._episodes = Episodes(self.setup, 1)
        self._rows = np.zeros(1, dtype=np.int64)

    @property
    def task(self) -> Any:
        return self.setup.task

    @property
    def tokenizer(self) -> Any:
        return self.setup.tokenizer

    @property
    def text_spec(self) -> TextSpec:
        """Tokenizer, special ids, lengths, action mask and prompt format (:class:`~textgym.spec.TextSpec`)."""
        return self.setup.spec(None if self.spec is None else self.spec.id)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        self._episodes.step_limit = outer_time_limit(self)
        index = self.setup.draw(self.np_random, options)
        info = self._episodes.reset_slot(0, index)
        return self._episodes.obs(0), info

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], SupportsFloat, bool, bool, dict[str, Any]]:
        actions = check_actions(np.reshape(np.asarray(action), -1), 1, self.setup.vocab_size)
        self._episodes.check_running(self._rows)
        rewards, terminated, truncated, finals = self._episodes.step(actions, self._rows)
        info = finals.get(0, {})
        return self._episodes.obs(0), float(rewards[0]), bool(terminated[0]), bool(truncated[0]), info

    def action_masks(self) -> np.ndarray:
        """Allowed actions (sb3-contrib convention); all True when the task has no mask."""
        mask = self.setup.action_mask
        return np.ones(self.setup.vocab_size, dtype=bool) if mask is None else mask

    def render(self) -> str | None:
        if self.render_mode == "ansi":
            if not self._episodes.started[0]:
                return "(no episode yet: call reset())\n"
            return self._episodes.render(0)
        return None
