"""Which language an answer is written in, by lingua-language-detector (offline).

Translation's reward guard: a model that cannot translate scores a fair chrF
by copying the English source (the source shares names, numbers and
placeholders with the reference), and RL finds that shortcut.  These metrics
tell a French answer from an English copy:

* ``target_language``: 1.0 when lingua, restricted to the sample's source and
  target languages, detects the answer as the target language, else 0.0
  (also for an empty answer, which lingua cannot decide).
* ``language_guard``: ``target_language``, except that it is 1.0 whenever the
  sample's first reference is itself not detected as the target language
  ("OK", "E-mail", "%(name)s": strings the detector cannot judge), so a
  correct answer is never punished.  Translation multiplies its reward by it
  (:attr:`textgym.tasks.base.Task.reward_guards`).

The samples carry their languages as ISO 639-1 codes in ``Sample.meta``:
``meta["language"]`` (the target) and ``meta["source_language"]``, as
:class:`~textgym.tasks.translation.TranslationTask` sets them.

Example:
    >>> from textgym.data.base import Sample
    >>> s = Sample("s", "Save the file", ("Enregistrer le fichier",), {"language": "fr", "source_language": "en"})
    >>> out = language_scores(["Enregistrer le fichier", "Save the file"], [s, s],
    ...                       frozenset({"target_language", "language_guard"}))
    >>> out["target_language"].tolist(), out["language_guard"].tolist()
    ([1.0, 0.0], [1.0, 0.0])
    >>> lingua_code("English"), lingua_code("pt_BR"), lingua_code("zh_Hans")
    ('en', 'pt', 'zh')
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

from textgym.data.base import Sample
from textgym.errors import ConfigError


@functools.lru_cache(maxsize=1)
def supported_languages() -> dict[str, str]:
    """ISO 639-1 code -> English name of every language lingua detects (75)."""
    from lingua import Language

    return {lang.iso_code_639_1.name.lower(): lang.name.title() for lang in Language.all()}


@functools.lru_cache(maxsize=256)
def lingua_code(language: str) -> str:
    """The ISO 639-1 code lingua knows ``language`` by: a name (``"English"``, any case) or a
    locale code (``"fr"``, ``"pt_BR"``, ``"zh-Hans"``: the part before ``_``/``-``).

    An unknown language raises :class:`ConfigError` listing what lingua detects.
    """
    supported = supported_languages()
    if isinstance(language, str):
        by_name = {name.lower(): code for code, name in supported.items()}
        code = by_name.get(language.strip().lower()) or language.replace("-", "_").split("_")[0].lower()
        if code in supported:
            return code
    listing = ", ".join(f"{code} ({name})" for code, name in sorted(supported.items()))
    raise ConfigError(f"lingua-language-detector cannot detect language {language!r}; it detects: {listing}")


@functools.cache
def detector(codes: frozenset[str]) -> Any:
    """A lingua detector restricted to the languages ``codes`` (ISO 639-1), built once per set."""
    from lingua import IsoCode639_1, Language, LanguageDetectorBuilder

    languages = [Language.from_iso_code_639_1(IsoCode639_1.from_str(code)) for code in sorted(codes)]
    return LanguageDetectorBuilder.from_languages(*languages).build()


@functools.lru_cache(maxsize=65536)
def detected(text: str, target: str, source: str) -> bool:
    """True when lingua, choosing between ``target`` and ``source`` (ISO 639-1), detects ``text`` as ``target``."""
    found = detector(frozenset((target, source))).detect_language_of(text)
    return found is not None and found.iso_code_639_1.name.lower() == target


def sample_languages(sample: Sample, metric: str) -> tuple[str, str]:
    """``(target, source)`` ISO 639-1 codes from ``sample.meta``; a sample without them raises."""
    target, source = sample.meta.get("language"), sample.meta.get("source_language")
    if not (isinstance(target, str) and isinstance(source, str)):
        raise ConfigError(
            f"metric {metric!r} needs the sample's languages as ISO 639-1 codes in Sample.meta['language'] "
            f"(target) and Sample.meta['source_language'] (TranslationTask sets them); sample {sample.id!r} "
            f"has meta {dict(sample.meta)!r}"
        )
    return lingua_code(target), lingua_code(source)


def language_scores(texts: Sequence[str], samples: Sequence[Sample], names: frozenset[str]) -> dict[str, np.ndarray]:
    """``target_language`` and ``language_guard`` of each text (see the module docstring)."""
    metric = min(names)
    is_target, guard = [], []
    for text, sample in zip(texts, samples):
        target, source = sample_languages(sample, metric)
        hit = detected(text, target, source)
        reference = sample.references[0] if sample.references else ""
        is_target.append(float(hit))
        guard.append(float(hit or not detected(reference, target, source)))
    out = {"target_language": np.array(is_target, dtype=np.float64), "language_guard": np.array(guard, dtype=np.float64)}
    return {name: out[name] for name in names}
