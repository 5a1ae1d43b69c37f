"""TextSpec: the public, frozen facts about a text env that an agent needs.

Agents build a language-model policy against an env without reading its
internals: which tokenizer and vocabulary, which ids end and pad a sequence,
how many prompt and answer tokens the observation holds, which tokens are
allowed, how prompts are formatted, and how long a conversation can grow.
``env.text_spec`` (on a
:class:`~textgym.env.TextEnv` and a :class:`~textgym.vector.TextVectorEnv`)
returns one.

Example:
    >>> import gymnasium as gym, textgym
    >>> spec = gym.make_vec("textgym/Copy-v0", num_envs=2, model="tiny-random").text_spec
    >>> spec.eos_id == spec.tokenizer.eos_token_id, spec.action_mask is not None
    (True, True)
    >>> spec.max_turns, spec.conversation_tokens == spec.max_new_tokens
    (1, True)
    >>> spec = gym.make("textgym/GuessNumber-v0", model="tiny-random").unwrapped.text_spec
    >>> spec.max_turns, spec.conversation_tokens == 4 * spec.max_new_tokens + 3 * spec.max_reply_tokens
    (4, True)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class TextSpec:
    """What an agent needs to know about a text env (see the module docstring).

    Attributes:
        env_id: the registered id (None for an env built from a task directly).
        model: the model spec the env's tokenizer came from (None: the default model).
        tokenizer: the env's tokenizer (a transformers tokenizer).
        vocab_size: number of token ids (the action space's ``n``).
        eos_id: the id that ends an answer; pad_id: the id that pads prompts (may equal eos_id).
        max_prompt_tokens: observation columns of the (left-padded) first prompt.
        max_new_tokens: the longest answer, per turn.
        action_mask: read-only bool array ``(vocab_size,)`` of allowed tokens, or None (all allowed).
        chat: the task wraps its prompts in the tokenizer's chat template.
        multi_turn: the task's episodes may go on after an answer (``max_turns > 1``).
        num_samples: samples in the env's split (its shard, under data parallelism).
        main_metric: the ``info["metrics"]`` entry that tables and benchmarks report first.
        max_turns: the most answers of one episode (1: single-turn).
        max_reply_tokens: the longest message the env appends between two answers (0 when single-turn).

    The observation holds ``max_prompt_tokens + conversation_tokens`` columns.
    """

    env_id: str | None
    model: str | None
    tokenizer: Any
    vocab_size: int
    eos_id: int
    pad_id: int
    max_prompt_tokens: int
    max_new_tokens: int
    action_mask: np.ndarray | None
    chat: bool
    multi_turn: bool
    num_samples: int
    main_metric: str
    max_turns: int = 1
    max_reply_tokens: int = 0

    @property
    def conversation_tokens(self) -> int:
        """Observation columns after the prompt: room for every answer and every reply between two answers,
        ``max_turns * max_new_tokens + (max_turns - 1) * max_reply_tokens`` (``max_new_tokens`` when single-turn)."""
        return self.max_turns * self.max_new_tokens + (self.max_turns - 1) * self.max_reply_tokens

    @property
    def filler_token(self) -> int:
        """An allowed token that is not EOS, to keep finished slots of a lockstep batch busy.

        A slot that ended gets it until the batch ends: Gymnasium's autoreset
        starts a new episode there, which would need ``max_new_tokens`` more
        steps to end its first turn, so a single-turn one is never scored before
        the next ``reset()``.  EOS
        only when the action mask allows nothing else.
        """
        allowed = np.ones(self.vocab_size, dtype=bool) if self.action_mask is None else self.action_mask.copy()
        allowed[self.eos_id] = False
        others = np.flatnonzero(allowed)
        return int(others[0]) if others.size else int(self.eos_id)

    @property
    def allowed_tokens(self) -> np.ndarray:
        """The ids an agent may emit (every id when there is no action mask)."""
        return np.arange(self.vocab_size) if self.action_mask is None else np.flatnonzero(self.action_mask)
