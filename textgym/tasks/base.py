"""What a task is: a data source, a prompt formatter and a reward.

A task does not know about tokens, spaces or episodes: :class:`~textgym.env.TextEnv`
does.  To write one, subclass :class:`Task` and implement :meth:`Task.load`;
override :meth:`Task.messages` to phrase the prompt.  Constructor keyword
arguments become ``gym.make`` keyword arguments of the env.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import numpy as np

from textgym.data.base import Sample, check_split, require_samples
from textgym.errors import ConfigError
from textgym.rewards.base import RewardSpec


class Task:
    """Base class of every task.

    Class attributes a subclass sets:
        default_reward: reward spec used when the env gets no ``reward=``.
        info_metrics: metrics always computed for ``info["metrics"]``.
        reward_guards: metrics with range [0, 1] that multiply the score of
            any reward (default or ``reward=``), e.g. Translation's
            ``("language_guard",)``: 0 for an answer not in the target
            language.  Reported in ``info["metrics"]`` too.
        main_metric: the metric tables and benchmarks report first.
        chat: phrase the prompt with the tokenizer's chat template.
        truncation_side: which side of ``Sample.prompt`` (the data, never the
            instruction) is cut when the prompt exceeds ``max_prompt_tokens``.
        max_turns, turn_rewards: multi-turn episodes (see :meth:`next_turn`).
    """

    default_reward: RewardSpec = "chrf"  # a class attribute, or set per instance
    info_metrics: tuple[str, ...] = ()  # a class attribute, or set per instance
    reward_guards: tuple[str, ...] = ()  # a class attribute, or set per instance
    main_metric: ClassVar[str] = "reward"
    chat: ClassVar[bool] = True
    truncation_side: ClassVar[Literal["left", "right"]] = "right"
    #: One line shown by ``textgym list``.
    description: ClassVar[str] = ""

    def __init__(self) -> None:
        self._splits: dict[str, list[Sample]] = {}

    # -- data -------------------------------------------------------------
    def load(self, split: str) -> Sequence[Sample]:
        """Return the samples of ``split`` ("train", "validation" or "test")."""
        raise NotImplementedError(f"{type(self).__name__} must implement load(split)")

    def samples(self, split: str) -> list[Sample]:
        """The samples of a split, loaded once and checked to be non-empty."""
        split = check_split(split)
        if split not in self._splits:
            self._splits[split] = require_samples(self.load(split), type(self).__name__, split)
        return self._splits[split]

    def resolve_reward(self, spec: RewardSpec) -> RewardSpec:
        """Map the env's reward spec to what this task scores with (default: unchanged).

        A task may replace a metric name by its own reward object, e.g. code
        tasks turn ``"pass_rate"`` into a sandbox reward that also reports
        why a program failed.
        """
        return spec

    # -- prompt -------------------------------------------------------------
    def messages(self, sample: Sample) -> list[dict[str, str]]:
        """The conversation shown to the model (the last turn is the user's)."""
        return [{"role": "user", "content": sample.prompt}]

    def format_prompt(self, sample: Sample, tokenizer: Any) -> str:
        """The prompt string: the chat template when the task and tokenizer have one."""
        messages = self.messages(sample)
        if not messages or not any(m.get("content", "").strip() for m in messages):
            raise ConfigError(
                f"{type(self).__name__}.messages() returned an empty prompt for sample {sample.id!r}"
            )
        if self.chat and getattr(tokenizer, "chat_template", None):
            return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return "\n\n".join(m["content"] for m in messages) + "\n"

    # -- multi-turn -------------------------------------------------------------
    #: The most answers one episode holds; a task with ``max_turns > 1`` is multi-turn and
    #: continues an episode through :meth:`next_turn` (set it per instance, e.g. from a keyword).
    max_turns: int = 1
    #: How a multi-turn episode's turns are rewarded (each turn's score comes at its last token):
    #: ``"sum"``: the reward of turn k is its score (the episode's return is the sum of the turn
    #: scores; the final ``info["metrics"]`` are the means over turns); ``"final"``: the reward of
    #: turn k is ``score_k - score_{k-1}`` (``score_0 = 0``), so the return is the LAST turn's score
    #: (tasks where each answer is a new attempt at one problem; ``info["metrics"]`` are the last turn's).
    turn_rewards: ClassVar[Literal["sum", "final"]] = "sum"

    @property
    def multi_turn(self) -> bool:
        """True when an episode may go on after its first answer (``max_turns > 1``)."""
        return self.max_turns > 1

    def followup(self, sample: Sample, responses: Sequence[str]) -> Sample | None:
        """The environment's next message in a multi-turn episode, or None when the episode is over.

        ``sample`` is the turn that just ended, ``responses`` the agent's answers so far (one per
        turn).  The returned Sample's ``prompt`` is the message the environment says next (the
        user's turn after the agent's answer: :meth:`format_reply`, or the chat template, shapes
        it), and its ``references`` score the agent's next answer.  The conversation grows: the
        observation keeps the first prompt, every answer as the agent wrote it and every message.
        Called by :meth:`next_turn` (override that one to see the turns' scores); at most
        ``max_turns`` answers are asked for, whatever this returns.

        Example (a task that asks for the same words again, reversed)::

            def followup(self, sample, responses):
                words = " ".join(reversed(sample.references[0].split()))
                return Sample(sample.id, f"Now reversed: {sample.prompt}", (words,))
        """
        return None

    def next_turn(
        self, sample: Sample, responses: Sequence[str], results: Sequence[Mapping[str, Any]]
    ) -> Sample | None:
        """The environment's next message, seeing how every finished turn scored (default: :meth:`followup`).

        ``results`` holds one dict per finished turn, in order: ``"score"`` (the reward's score
        of that answer), ``"metrics"`` (every metric) and the reward's details of that answer
        (e.g. the code reward's ``"execution"``: status, tests passed, the failure).  Same
        return value as :meth:`followup`.
        """
        return self.followup(sample, responses)

    def format_reply(self, sample: Sample) -> str:
        """The text appended after an answer for the message ``sample.prompt`` when the prompt has no
        chat template (with one, the template's own turn change is used).

        Example:
            >>> Task().format_reply(Sample("s", "higher", ("7",)))
            '\\n\\nhigher\\n'
        """
        return "\n\n" + sample.prompt + "\n"

    def public_references(self, sample: Sample) -> list[str]:
        """The references an agent may see in ``info["references"]`` (all of them by default;
        tasks whose references are solutions to hidden tests return none)."""
        return list(sample.references)

    # -- constraints ----------------------------------------------------------
    def action_mask(self, tokenizer: Any) -> np.ndarray | None:
        """A boolean mask over the vocabulary of allowed actions, or None (all allowed)."""
        return None

    def splits_info(self) -> dict[str, int]:
        """Number of samples per split (for ``textgym info``)."""
        return {split: len(self.samples(split)) for split in ("train", "validation", "test")}
