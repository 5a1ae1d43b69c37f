"""Summarization: a document in, a short summary out, scored with ROUGE.

Default data: ACLSum (Takeshita et al., 2024; MIT), read from the JSONL files
inside the installed ``aclsum`` wheel (the package itself is never imported:
its ``__init__`` needs ``sienna``).  Each of its 250 ACL papers has three
human-written one-sentence summaries -- the *challenge*, the *approach* and the
*outcome* -- and the dataset's own train / validation / test split (100 / 50 /
100 papers).  ``aspect=`` picks which summary is the target (``"all"`` asks for
all three in order); ``sections=`` which parts of the paper form the document
(the abstract by default; the introduction and conclusion make it long).

Other data: ``data_files=`` (JSONL/CSV; columns ``document`` and ``summary`` by
default, renamed with ``fields=``) or ``dataset=`` (a Hugging Face hub id such
as ``"xsum"`` or ``"cnn_dailymail"`` with ``dataset_config="3.0.0"`` and
``fields={"prompt": "article", "references": "highlights"}``, or the path of a
dataset saved with ``save_to_disk``).

Long documents are cut on the right (their beginning is kept) to fit
``max_prompt_tokens``; the instruction is never cut.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

from textgym.data.base import Sample, check_split
from textgym.data.files import DataFiles, iter_records
from textgym.data.source import UserData
from textgym.errors import ConfigError, DataError, DependencyNotInstalled
from textgym.tasks.base import Task

ASPECTS = ("challenge", "approach", "outcome")
SECTIONS = ("abstract", "introduction", "conclusion")
#: ACLSum's file for each textgym split.
ACLSUM_FILES = {"train": "train.jsonl", "validation": "val.jsonl", "test": "test.jsonl"}

_ASPECT_WORDS = {
    "challenge": "the problem the paper addresses",
    "approach": "the method the authors propose",
    "outcome": "what the authors found or achieved",
}
GENERIC_INSTRUCTION = "Summarize the following document in a few sentences. Reply with the summary only."


def aspect_instruction(aspect: str) -> str:
    """The instruction shown for an ACLSum aspect (or ``"all"``)."""
    if aspect == "all":
        parts = [f"its {a} ({_ASPECT_WORDS[a]})" for a in ASPECTS]
        return f"Summarize this paper in three sentences: {parts[0]}, {parts[1]} and {parts[2]}. Reply with the summary only."
    return f"Summarize the {aspect} of this paper ({_ASPECT_WORDS[aspect]}) in one sentence. Reply with the summary only."


_SPACE_BEFORE = re.compile(r" ([,.;:!?%)\]}]|'s\b|n't\b)")
_SPACE_AFTER = re.compile(r"([(\[{]) ")


def detokenize(text: str) -> str:
    """Undo ACLSum's space-separated tokenization (``"results , ( MRR ) ."`` -> ``"results, (MRR)."``)."""
    return _SPACE_AFTER.sub(r"\1", _SPACE_BEFORE.sub(r"\1", text))


def aclsum_dir() -> Path:
    """The ``dataset`` folder of the installed ``aclsum`` package (found without importing it)."""
    spec = importlib.util.find_spec("aclsum")
    if spec is None or not spec.submodule_search_locations:
        raise DependencyNotInstalled("the default summarization data is in the 'aclsum' wheel: pip install aclsum")
    folder = Path(list(spec.submodule_search_locations)[0]) / "dataset"
    if not folder.is_dir():
        raise DependencyNotInstalled(f"{folder} does not exist; reinstall the data with: pip install aclsum")
    return folder


@functools.lru_cache(maxsize=4)
def _aclsum_rows(path: str) -> tuple[tuple[str, Mapping[str, Any]], ...]:
    """``(file:line, row)`` of one ACLSum file, read once per process."""
    return tuple((f"{path}:{line}", row) for line, row in iter_records(path))


def _aclsum_field(row: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in row:
        raise DataError(f"{where}: missing field {key!r}; the row has {sorted(row)}")
    return row[key]


def aclsum_samples(split: str, aspect: str = "outcome", sections: Sequence[str] = ("abstract",)) -> list[Sample]:
    """ACLSum's ``split`` as Samples: title + ``sections`` -> the ``aspect`` summary."""
    split = check_split(split)
    samples = []
    for where, row in _aclsum_rows(str(aclsum_dir() / ACLSUM_FILES[split])):
        summary = _aclsum_field(row, "summary", where)
        sentences = _aclsum_field(row, "sentences", where)
        aspects = ASPECTS if aspect == "all" else (aspect,)
        for key in aspects:
            _aclsum_field(summary, key, f"{where} (summary)")
        for key in sections:
            _aclsum_field(sentences, key, f"{where} (sentences)")
        body = "\n\n".join(detokenize(" ".join(sentences[key])) for key in sections)
        title = str(row.get("title") or "").strip()
        samples.append(
            Sample(
                id=str(_aclsum_field(row, "id", where)),
                prompt=f"{title}\n\n{body}" if title else body,
                references=(" ".join(summary[key].strip() for key in aspects),),
                meta={"title": title, "aspect": aspect},
            )
        )
    return samples


class SummarizationTask(Task):
    """Summarize a document (default: one aspect of an ACL paper) in a sentence or a few.

    Rewards: ROUGE-L F1 (rouge-score, stemmed) by default; ``info["metrics"]``
    also holds ROUGE-1/2 F1, ``length_ratio`` (output words / reference
    words), ``words`` (output words) and ``distinct_2`` (distinct word bigrams
    / bigrams: low for an answer that loops).  ``reward={"rougeL": 1.0, "length_penalty": 0.2}`` weights metrics.

    Example:
        >>> import gymnasium as gym, textgym
        >>> env = gym.make("textgym/Summarization-v0", model="tiny-random", aspect="approach", split="test")
        >>> obs, info = env.reset(seed=0)
        >>> "approach" in info["prompt_text"]
        True
    """

    description = "Summarize one aspect of an ACL paper (ACLSum) or your own documents; reward = ROUGE-L F1"
    default_reward = "rougeL"
    info_metrics = ("rouge1", "rouge2", "rougeL", "length_ratio", "words", "distinct_2")
    main_metric = "rougeL"
    truncation_side: ClassVar[Literal["left", "right"]] = "right"

    def __init__(
        self,
        aspect: str = "outcome",
        sections: Sequence[str] | str = ("abstract",),
        data_files: DataFiles | None = None,
        dataset: str | os.PathLike[str] | None = None,
        dataset_config: str | None = None,
        fields: Mapping[str, str] | None = None,
        instruction: str | None = None,
        on_bad_row: str = "raise",
    ) -> None:
        super().__init__()
        self.user_data = UserData(
            data_files, dataset, dataset_config, {"prompt": "document", "references": "summary", **(fields or {})}, on_bad_row
        )
        if aspect not in (*ASPECTS, "all"):
            raise ConfigError(f"aspect must be one of {[*ASPECTS, 'all']}, got {aspect!r}")
        sections = (sections,) if isinstance(sections, str) else tuple(sections)
        if not sections or any(s not in SECTIONS for s in sections) or len(set(sections)) != len(sections):
            raise ConfigError(f"sections must be distinct names from {list(SECTIONS)}, got {sections!r}")
        if instruction is not None and (not isinstance(instruction, str) or not instruction.strip()):
            raise ConfigError(f"instruction must be a non-empty string, got {instruction!r}")
        self.aspect = aspect
        self.sections = sections
        default = GENERIC_INSTRUCTION if self.user_data.given else aspect_instruction(aspect)
        self.instruction = instruction or default

    def messages(self, sample: Sample) -> list[dict[str, str]]:
        return [{"role": "user", "content": f"{self.instruction}\n\n{sample.prompt}"}]

    def load(self, split: str) -> list[Sample]:
        split = check_split(split)
        if self.user_data.given:
            return self.user_data.load(split)
        return aclsum_samples(split, self.aspect, self.sections)


__all__ = ["ASPECTS", "SECTIONS", "SummarizationTask", "aclsum_samples", "aspect_instruction", "detokenize"]
