"""Dialogue: continue a real two-person chat with the next turn.

Default data: the BYU Chit-Chat Challenge corpus (MIT), the ``dataset.json``
inside the installed ``chitchat-dataset`` wheel, read directly: 7,168
conversations between two people, about 139,000 turns (a turn = the messages
one person sent in a row, joined with spaces).  Every turn after the first is
one sample: its context is the previous ``context_turns`` turns (fewer at the
start of a conversation) and its reference is the turn itself.

Roles: the agent speaks as the chat template's ``assistant``; the person who
wrote the last context turn is the ``user`` and the two alternate backwards
from there.  A system message (``system_prompt=``) says what to do.

Splits: by a stable hash of the conversation id (80/10/10, the rule of
:func:`textgym.data.base.split_samples`), so no conversation is in two splits.

``data_files=`` takes your own conversations: JSONL/CSV rows with a list of
turns (JSONL) in the ``turns`` column and an optional ``id`` (rename with
``fields={"turns": ..., "id": ...}``); one file is split by conversation id,
or give ``{"train": path, "test": path}``.

Long contexts are cut on the left: the latest turns are kept.

Multi-turn mode (``turns=k``): one episode is k agent turns, one
conversation that grows.  After each agent answer the other person's real
next turn from the corpus is the env's reply (a user turn of the chat
template, or ``"\nFriend: ...\nYou:"`` in the plain transcript) and the agent
answers again; each answer is scored against the real turn at its position,
with the reward at the answer's last token (the episode's return is the sum
over its turns; the final ``info["metrics"]`` are the means).
``context_turns`` shapes only the first prompt: later turns keep the whole
conversation so far (the agent's own answers, not the corpus's, in between).
Only turns with k agent turns left in their conversation start an episode.
:class:`~textgym.wrappers.SequenceLevel` plays such an episode one turn (one
answer string) per step.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar, Literal

from textgym.data.base import Sample, check_split, hash_split
from textgym.data.files import DataFiles, iter_records
from textgym.errors import ConfigError, DataError, DependencyNotInstalled
from textgym.rewards.base import RewardSpec
from textgym.tasks.base import Task

DEFAULT_SYSTEM_PROMPT = (
    "You are chatting casually with a friend by text message. "
    "Reply with your next message only: short, natural and on topic."
)
#: Default reward weights: closeness to the real next turn in meaning
#: (semantic similarity) and wording (ROUGE-L), minus looping.  Not chrF and
#: distinct-2: on 32 test turns, uniform random tokens scored chrF 0.144 and
#: distinct-2 1.0 against SmolLM2's 0.130 and 0.57, so a reward built on them
#: ranks garbage above the model (random 0.187 vs 0.138 with 0.4 chrF + 0.4
#: semantic + 0.1 distinct-2 + 0.1 repetition) and invites reward hacking.
#: These weights rank them 0.037 vs 0.078.
DEFAULT_WEIGHTS = MappingProxyType({"rougeL": 0.4, "semantic_similarity": 0.5, "repetition": 0.1})
DIALOGUE_FIELDS = {"id": "id", "turns": "turns"}

Conversation = tuple[str, tuple[str, ...]]  # (conversation id, turns)


def chitchat_path() -> Path:
    """``dataset.json`` of the installed ``chitchat-dataset`` package (found without importing it)."""
    spec = importlib.util.find_spec("chitchat_dataset")
    if spec is None or not spec.submodule_search_locations:
        raise DependencyNotInstalled(
            "the default dialogue data is in the 'chitchat-dataset' wheel: pip install chitchat-dataset"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "dataset.json"
    if not path.is_file():
        raise DependencyNotInstalled(f"{path} does not exist; reinstall: pip install chitchat-dataset")
    return path


def _clean(text: str) -> str:
    """One line of text (turns are newline-separated inside ``Sample.prompt``)."""
    return " ".join(text.split())


def merge_turns(turns: Iterable[tuple[str, str]]) -> tuple[str, ...]:
    """``(speaker, text)`` pairs -> turns: empty texts dropped, consecutive texts of one speaker joined."""
    merged: list[list[str]] = []
    for speaker, text in turns:
        text = _clean(text)
        if not text:
            continue
        if merged and merged[-1][0] == speaker:
            merged[-1][1] += " " + text
        else:
            merged.append([speaker, text])
    return tuple(text for _, text in merged)


@functools.lru_cache(maxsize=2)
def chitchat_conversations(path: str) -> tuple[Conversation, ...]:
    """Every conversation of the corpus file, parsed once per process."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: cannot read the chit-chat corpus ({err})") from None
    conversations = []
    for cid, conv in data.items():
        try:
            pairs = [(m[0]["sender"], " ".join(u["text"] for u in m)) for m in conv["messages"] if m]
        except (KeyError, TypeError, IndexError) as err:
            raise DataError(f"{path}: conversation {cid!r} is malformed (missing {err})") from None
        conversations.append((str(cid), merge_turns(pairs)))
    return tuple(conversations)


def file_conversations(path: str | os.PathLike[str], fields: Mapping[str, str]) -> list[Conversation]:
    """Conversations of one JSONL/CSV file; a bad row names the file, line and field."""
    out = []
    for line, row in iter_records(path):
        where = f"{path}:{line}"
        if fields["turns"] not in row:
            raise DataError(f"{where}: missing field {fields['turns']!r} (for turns); the row has {sorted(row)}")
        turns = row[fields["turns"]]
        if isinstance(turns, str):  # CSV: a JSON list in one cell
            try:
                turns = json.loads(turns)
            except json.JSONDecodeError:
                turns = None
        if not isinstance(turns, list) or not all(isinstance(t, str) for t in turns):
            raise DataError(f"{where}: field {fields['turns']!r} must be a list of strings, got {turns!r}")
        cid = str(row.get(fields["id"], f"{Path(path).name}:{line}"))
        # alternate speakers; an empty turn still counts as a speaker change
        out.append((cid, tuple(_clean(t) or "..." for t in turns)))
    return out


def conversation_samples(conversations: Iterable[Conversation], context_turns: int) -> list[Sample]:
    """One sample per turn after the first: the previous ``context_turns`` turns -> that turn."""
    samples = []
    for cid, turns in conversations:
        for i in range(1, len(turns)):
            samples.append(
                Sample(
                    id=f"{cid}:{i}",
                    prompt="\n".join(turns[max(0, i - context_turns) : i]),
                    references=(turns[i],),
                    meta={"conversation": cid, "turn": i},
                )
            )
    return samples


class DialogueTask(Task):
    """Write the next turn of a two-person chat (default: the BYU chit-chat corpus).

    Reward (default, weights changeable with ``reward=``)::

        0.4 * rougeL + 0.5 * semantic_similarity + 0.1 * repetition

    ROUGE-L and the MiniLM cosine similarity compare the reply with the real
    next turn (wording and meaning); ``repetition`` (0 to -1) penalises
    looping 3-grams.  Range [-0.6, 0.9]: -0.5 for an empty reply.  chrF and
    distinct-2 are in ``info["metrics"]`` too (with ``length_ratio``) but not
    in the default reward: random tokens score well on both (see
    ``DEFAULT_WEIGHTS``); ``reward={"chrf": 0.4, ...}`` puts them back.
    ``words`` (the reply's word count) is reported as well.

    Example:
        >>> import gymnasium as gym, textgym
        >>> env = gym.make("textgym/Dialogue-v0", model="tiny-random", split="test", context_turns=2)
        >>> obs, info = env.reset(seed=0)
        >>> info["prompt_text"].rstrip().endswith("<|im_start|>assistant")
        True
    """

    description = "Continue a real two-person chat (BYU chit-chat corpus); reward = semantic similarity + ROUGE-L + repetition"
    default_reward: ClassVar[RewardSpec] = DEFAULT_WEIGHTS
    info_metrics = ("chrf", "rougeL", "semantic_similarity", "distinct_2", "repetition", "length_ratio", "words")
    main_metric = "reward"
    truncation_side: ClassVar[Literal["left", "right"]] = "left"

    def __init__(
        self,
        context_turns: int = 4,
        system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
        data_files: DataFiles | None = None,
        fields: Mapping[str, str] | None = None,
        turns: int = 1,
    ) -> None:
        super().__init__()
        if isinstance(context_turns, bool) or not isinstance(context_turns, int) or context_turns < 1:
            raise ConfigError(f"context_turns must be an integer >= 1 (turns shown before the reply), got {context_turns!r}")
        if isinstance(turns, bool) or not isinstance(turns, int) or turns < 1:
            raise ConfigError(f"turns must be an integer >= 1 (agent turns per episode), got {turns!r}")
        if system_prompt is not None and not isinstance(system_prompt, str):
            raise ConfigError(f"system_prompt must be a string or None, got {type(system_prompt).__name__}")
        unknown = set(fields or {}) - set(DIALOGUE_FIELDS)
        if unknown:
            raise ConfigError(f"fields has unknown keys {sorted(unknown)}; allowed: {sorted(DIALOGUE_FIELDS)}")
        self.context_turns = context_turns
        self.max_turns = turns
        self._by_id: dict[str, tuple[str, ...]] = {}
        self.system_prompt = system_prompt
        self.data_files = data_files
        self.fields = {**DIALOGUE_FIELDS, **(fields or {})}

    # -- prompt ---------------------------------------------------------------
    def turns(self, sample: Sample) -> list[dict[str, str]]:
        """The context turns as chat messages, the last one the user's."""
        lines = [line for line in sample.prompt.split("\n") if line.strip()]  # the first may be cut (truncation)
        n = len(lines)
        return [{"role": "user" if (n - 1 - j) % 2 == 0 else "assistant", "content": t} for j, t in enumerate(lines)]

    def messages(self, sample: Sample) -> list[dict[str, str]]:
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return system + self.turns(sample)

    def format_prompt(self, sample: Sample, tokenizer: Any) -> str:
        if self.chat and getattr(tokenizer, "chat_template", None):
            return super().format_prompt(sample, tokenizer)
        # no chat template: a plain transcript that ends where the agent speaks
        names = {"user": "Friend", "assistant": "You"}
        lines = [f"{names[m['role']]}: {m['content']}" for m in self.turns(sample)]
        head = f"{self.system_prompt}\n\n" if self.system_prompt else ""
        return head + "\n".join(lines) + "\nYou:"

    def format_reply(self, sample: Sample) -> str:
        """The other person's next turn in the plain transcript (no chat template): ``"\\nFriend: ...\\nYou:"``."""
        return f"\nFriend: {sample.prompt}\nYou:"

    # -- data -------------------------------------------------------------------
    def _conversations(self, split: str) -> list[Conversation]:
        if self.data_files is None:
            everything: Sequence[Conversation] = chitchat_conversations(str(chitchat_path()))
        elif isinstance(self.data_files, Mapping):
            files = {check_split(k): v for k, v in self.data_files.items()}
            if split not in files:
                raise ConfigError(f"data_files has no {split!r} file; it has {sorted(files)}")
            return file_conversations(files[split], self.fields)
        elif isinstance(self.data_files, (str, os.PathLike)):
            everything = file_conversations(self.data_files, self.fields)
        else:
            raise ConfigError(
                f"data_files must be a path or a mapping split -> path, got {type(self.data_files).__name__}"
            )
        # the rule of split_samples(samples, split, key=conversation id), applied per conversation
        return [conv for conv in everything if hash_split(conv[0]) == split]

    def load(self, split: str) -> list[Sample]:
        split = check_split(split)
        conversations = self._conversations(split)
        samples = conversation_samples(conversations, self.context_turns)
        if not self.multi_turn:
            return samples
        self._by_id.update(conversations)
        need = 2 * (self.max_turns - 1)  # the real turns of both people until the last agent turn
        return [s for s in samples if s.meta["turn"] + need < len(self._by_id[s.meta["conversation"]])]

    def followup(self, sample: Sample, responses: Sequence[str]) -> Sample | None:
        """The other person's real reply to the agent's answer (the message), to be answered as the real turn after it."""
        cid, i = sample.meta["conversation"], sample.meta["turn"]
        turns = self._by_id[cid]
        if len(responses) >= self.max_turns or i + 2 >= len(turns):
            return None
        return Sample(
            id=f"{cid}:{i + 2}",
            prompt=turns[i + 1],
            references=(turns[i + 2],),
            meta={"conversation": cid, "turn": i + 2},
        )
