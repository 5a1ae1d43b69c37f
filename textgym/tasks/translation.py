"""Translation of software strings (gettext catalogs), scored with sacrebleu.

Default data: the human translations of Django's user-interface strings in
the installed ``django`` wheel (``conf/locale`` and every ``contrib`` app),
about 1,200 French pairs and ~100 languages.  Any folder of ``.po`` files
(``po_dir=``, e.g. your own app's ``locale``), JSONL/CSV files
(``data_files=``) or a Hugging Face dataset (``dataset=``) work too.

Guarded reward: SmolLM2-135M cannot translate, and copying the English source
already scores chrF 0.336 on the test split, so RL drifts toward copying.  By
default (``target_language_guard=True``) the reward is multiplied by
``language_guard`` (:mod:`textgym.rewards.language`): 0 for an answer that
lingua-language-detector, choosing between the source and target languages,
does not detect as the target language -- unless the reference itself is not
detected as it either ("OK", "E-mail"), so a correct answer keeps its score.
``info["metrics"]`` also reports ``target_language``, ``copy_score`` (chrF
against the source), ``source_copy`` (the answer is the source), ``words`` and
``distinct_2``, guard or not.
"""

from __future__ import annotations

import collections
import dataclasses
import importlib.util
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from textgym.data.base import Sample, check_split, split_samples
from textgym.data.gettext import read_po
from textgym.data.source import UserData
from textgym.errors import ConfigError, DataError, DependencyNotInstalled
from textgym.rewards.language import lingua_code
from textgym.tasks.base import Task

LANGUAGE_NAMES = {
    "ar": "Arabic", "ca": "Catalan", "cs": "Czech", "da": "Danish", "de": "German", "el": "Greek",
    "es": "Spanish", "fi": "Finnish", "fr": "French", "he": "Hebrew", "hi": "Hindi", "hu": "Hungarian",
    "id": "Indonesian", "it": "Italian", "ja": "Japanese", "ko": "Korean", "nl": "Dutch", "nb": "Norwegian",
    "pl": "Polish", "pt": "Portuguese", "pt_BR": "Brazilian Portuguese", "ro": "Romanian", "ru": "Russian",
    "sv": "Swedish", "tr": "Turkish", "uk": "Ukrainian", "vi": "Vietnamese", "zh_Hans": "Simplified Chinese",
}  # fmt: skip

# %(name)s, %s / %d / %i / %f, {name} / {0} / {}
PLACEHOLDER = re.compile(r"%\([^)]+\)[sdifr]|%[sdifr]|\{[A-Za-z0-9_.]*\}")


def placeholders(text: str) -> collections.Counter[str]:
    return collections.Counter(PLACEHOLDER.findall(text))


def placeholder_scores(texts: Sequence[str], samples: Sequence[Sample], names: frozenset[str]) -> dict[str, np.ndarray]:
    """Fraction of the source's placeholders present in the output (1.0 if it has none)."""
    scores = []
    for text, sample in zip(texts, samples):
        wanted = placeholders(sample.prompt)
        total = sum(wanted.values())
        kept = sum((wanted & placeholders(text)).values())
        scores.append(kept / total if total else 1.0)
    return {"placeholders": np.array(scores, dtype=np.float64)}


def _normal(text: str) -> str:
    return " ".join(text.lower().split())


def source_scores(texts: Sequence[str], samples: Sequence[Sample], names: frozenset[str]) -> dict[str, np.ndarray]:
    """How much of each output is its source string (``Sample.prompt``).

    ``copy_score``: sacrebleu sentence chrF of the output against the source, / 100.
    ``source_copy``: 1.0 when the output is the source, ignoring case and spacing.

    Example:
        >>> s = Sample("s", "Save  the file")
        >>> out = source_scores(["save the file", "Enregistrer"], [s, s], frozenset({"copy_score", "source_copy"}))
        >>> out["source_copy"].tolist(), round(float(out["copy_score"][1]), 2)
        ([1.0, 0.0], 0.06)
    """
    out: dict[str, np.ndarray] = {}
    if "copy_score" in names:
        from textgym.rewards import fast_metrics  # imports sacrebleu: only when the metric is used

        chrf = fast_metrics.chrf_scores(texts, [[s.prompt] for s in samples])
        out["copy_score"] = np.array(chrf, dtype=np.float64) / 100.0
    if "source_copy" in names:
        same = [_normal(t) == _normal(s.prompt) for t, s in zip(texts, samples)]
        out["source_copy"] = np.array(same, dtype=np.float64)
    return out


def django_locale_dirs() -> list[Path]:
    """Every ``locale`` folder of the installed Django (found without importing it)."""
    spec = importlib.util.find_spec("django")
    if spec is None or not spec.submodule_search_locations:
        raise DependencyNotInstalled("the default translation data is in Django's wheel: pip install django")
    root = Path(list(spec.submodule_search_locations)[0])
    return sorted(p for p in [root / "conf" / "locale", *(root / "contrib").glob("*/locale")] if p.is_dir())


def po_files(roots: Sequence[Path], language: str) -> list[Path]:
    """``.po`` files of ``language`` under ``roots`` (``<lang>/LC_MESSAGES/*.po`` or ``*<lang>*.po``)."""
    files: list[Path] = []
    for root in roots:
        files += sorted(root.glob(f"{language}/LC_MESSAGES/*.po"))
        files += sorted(p for p in root.rglob(f"{language}.po"))
    return files


def available_languages(roots: Sequence[Path]) -> list[str]:
    return sorted({p.parent.parent.name for root in roots for p in root.glob("*/LC_MESSAGES/*.po")})


class TranslationTask(Task):
    """Translate an English software string into ``language`` (a locale code: ``"fr"``, ``"pt_BR"``).

    Reward: chrF (or ``reward=``) times ``language_guard`` while
    ``target_language_guard=True`` (the default): an answer that is not in the
    target language scores 0 (see the module docstring).  Both languages must
    be ones lingua-language-detector knows (``source_language`` is a name such
    as ``"English"``); an unknown one raises :class:`ConfigError` here, with
    the list.  ``target_language_guard=False`` scores without the guard and
    works for any language (``target_language`` is then reported only when
    lingua knows both).

    Example:
        >>> import gymnasium as gym, textgym
        >>> from textgym.wrappers import SequenceLevel
        >>> env = SequenceLevel(gym.make("textgym/Translation-v0", model="tiny-random", split="test"))
        >>> obs, info = env.reset(seed=0)
        >>> _, reward, *_, info = env.step(info["prompt"])  # copy the English source
        >>> reward, info["metrics"]["source_copy"], info["metrics"]["target_language"]
        (0.0, 1.0, 0.0)
    """

    description = "Translate English software strings (gettext catalogs) into another language; chrF, language-guarded"
    default_reward = "chrf"
    info_metrics = ("chrf", "bleu", "ter", "placeholders", "target_language", "copy_score", "source_copy", "words",
                    "distinct_2")  # fmt: skip
    main_metric = "chrf"

    def __init__(
        self,
        language: str = "fr",
        po_dir: str | os.PathLike[str] | None = None,
        data_files: Any = None,
        dataset: str | None = None,
        dataset_config: str | None = None,
        fields: Mapping[str, str] | None = None,
        source_language: str = "English",
        on_bad_row: str = "raise",
        target_language_guard: bool = True,
    ) -> None:
        super().__init__()
        self.user_data = UserData(
            data_files, dataset, dataset_config, {"prompt": "source", "references": "target", **(fields or {})}, on_bad_row
        )
        if po_dir is not None and self.user_data.given:
            raise ConfigError("give at most one of po_dir=, data_files= and dataset=")
        if not isinstance(language, str) or not language:
            raise ConfigError(f"language must be a locale code such as 'fr' or 'de', got {language!r}")
        if not isinstance(source_language, str) or not source_language:
            raise ConfigError(f"source_language must be a language name such as 'English', got {source_language!r}")
        self.language = language
        self.language_name = LANGUAGE_NAMES.get(language, language)
        self.source_language = source_language
        self.po_dir = po_dir
        if not isinstance(target_language_guard, bool):
            raise ConfigError(f"target_language_guard must be True or False, got {target_language_guard!r}")
        self.target_language_guard = target_language_guard
        #: (target, source) ISO 639-1 codes as lingua knows them, put on every sample's meta;
        #: None when lingua cannot tell the two apart (only allowed without the guard)
        self.lingua_languages = self._lingua_languages()
        if self.lingua_languages is None:
            self.info_metrics = tuple(m for m in type(self).info_metrics if m != "target_language")
        if target_language_guard:
            self.reward_guards = ("language_guard",)
        self._catalog: list[Sample] | None = None

    def _lingua_languages(self) -> tuple[str, str] | None:
        try:
            target, source = lingua_code(self.language), lingua_code(self.source_language)
            if target == source:
                raise ConfigError(f"language={self.language!r} and source_language={self.source_language!r} are "
                                  f"the same language ({target!r}) to lingua-language-detector")
        except ConfigError as err:
            if self.target_language_guard:
                raise ConfigError(f"TranslationTask: the target-language guard (target_language_guard=True) needs "
                                  f"lingua to tell the target language from the source; pass "
                                  f"target_language_guard=False to score without it. {err}") from None
            return None
        return target, source

    def messages(self, sample: Sample) -> list[dict[str, str]]:
        return [
            {
                "role": "user",
                "content": (
                    f"Translate this software interface string from {self.source_language} to "
                    f"{self.language_name}. Keep placeholders such as %(name)s and {{name}} unchanged. "
                    f"Reply with the translation only.\n\n{sample.prompt}"
                ),
            }
        ]

    def _catalog_samples(self) -> list[Sample]:
        if self._catalog is None:
            roots = [Path(self.po_dir)] if self.po_dir is not None else django_locale_dirs()
            if self.po_dir is not None and not roots[0].is_dir():
                raise ConfigError(f"po_dir {str(self.po_dir)!r} is not a directory")
            files = po_files(roots, self.language)
            if not files:
                raise ConfigError(
                    f"no .po files for language {self.language!r} under {[str(r) for r in roots]}; "
                    f"available: {available_languages(roots)}"
                )
            seen: dict[str, Sample] = {}
            for path in files:
                for entry in read_po(path):
                    if entry.msgid not in seen:  # the same string in several catalogs: keep one
                        seen[entry.msgid] = Sample(
                            id=f"{entry.msgctxt + '|' if entry.msgctxt else ''}{entry.msgid}",
                            prompt=entry.msgid,
                            references=(entry.msgstr,),
                            meta={"file": entry.file, "line": entry.line},
                        )
            if not seen:
                raise DataError(f"the .po files of {self.language!r} hold no translated entries: {files}")
            self._catalog = list(seen.values())
        return self._catalog

    def load(self, split: str) -> list[Sample]:
        split = check_split(split)
        if self.user_data.given:
            samples = self.user_data.load(split)
        else:  # split by source string: a string never appears in two splits
            samples = split_samples(self._catalog_samples(), split, key=lambda s: s.prompt)
        if self.lingua_languages is None:
            return samples
        target, source = self.lingua_languages
        return [dataclasses.replace(s, meta={**s.meta, "language": target, "source_language": source}) for s in samples]
