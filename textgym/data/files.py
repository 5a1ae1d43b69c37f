"""JSONL and CSV data files, with errors that name the file, line and field.

``data_files`` is either one path (its rows are split deterministically by a
hash of each row's id) or a mapping ``{"train": path, "test": path, ...}``.

Field names are mapped with ``fields={"prompt": "source", "references": "target"}``:
the keys are textgym's names, the values the column names in the file.  A
``references`` column may hold one string or a list of strings.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from textgym.data.base import Sample, check_split, split_samples
from textgym.errors import ConfigError, DataError

DataFiles = str | os.PathLike[str] | Mapping[str, str | os.PathLike[str]]

DEFAULT_FIELDS = {"id": "id", "prompt": "prompt", "references": "references"}


def iter_records(path: str | os.PathLike[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, row)`` from a ``.jsonl``/``.json`` or ``.csv`` file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        with open(path, "rb") as handle:
            for number, raw in enumerate(handle, start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    raise DataError(f"{path}:{number}: invalid UTF-8 ({err.reason} at byte {err.start})") from None
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(f"{path}:{number}: invalid JSON ({err.msg}, column {err.colno})") from None
                if not isinstance(row, dict):
                    raise DataError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
                yield number, row
    elif suffix in (".csv", ".tsv"):
        try:
            with open(path, newline="", encoding="utf-8") as handle:
                reader = csv.DictReader(handle, delimiter="\t" if suffix == ".tsv" else ",")
                for row in reader:
                    yield reader.line_num, dict(row)
        except UnicodeDecodeError as err:
            raise DataError(f"{path}: invalid UTF-8 ({err.reason} at byte {err.start})") from None
    else:
        raise DataError(f"data file {str(path)!r}: unknown format {suffix!r}; use .jsonl, .json, .csv or .tsv")


def _field(row: Mapping[str, Any], column: str, where: str, name: str) -> Any:
    if column not in row:
        raise DataError(f"{where}: missing field {column!r} (for {name}); the row has {sorted(row)}")
    return row[column]


def row_to_sample(
    row: Mapping[str, Any], where: str, fields: Mapping[str, str], default_id: str, keep: Sequence[str] = ()
) -> Sample:
    """Build a Sample from one row; every problem names ``where`` and the field."""
    prompt = _field(row, fields["prompt"], where, "prompt")
    if not isinstance(prompt, str):
        raise DataError(f"{where}: field {fields['prompt']!r} must be a string, got {type(prompt).__name__}")
    if not prompt.strip():
        raise DataError(f"{where}: field {fields['prompt']!r} is empty")
    refs: Any = ()
    if fields.get("references"):
        refs = _field(row, fields["references"], where, "references")
        if isinstance(refs, str):
            refs = (refs,)
        if not isinstance(refs, (list, tuple)) or not all(isinstance(r, str) for r in refs):
            raise DataError(
                f"{where}: field {fields['references']!r} must be a string or a list of strings, got {refs!r}"
            )
    sample_id = row.get(fields.get("id", "id"), default_id)
    meta = {k: _field(row, k, where, k) for k in keep}
    return Sample(id=str(sample_id), prompt=prompt, references=tuple(refs), meta=meta)


def load_file(
    path: str | os.PathLike[str], fields: Mapping[str, str] | None = None, keep: Sequence[str] = ()
) -> list[Sample]:
    """All rows of one file as Samples (``keep`` copies extra columns into ``meta``)."""
    mapping = {**DEFAULT_FIELDS, **(fields or {})}
    unknown = set(mapping) - set(DEFAULT_FIELDS)
    if unknown:
        raise ConfigError(f"fields has unknown keys {sorted(unknown)}; allowed: {sorted(DEFAULT_FIELDS)}")
    name = Path(path).name
    return [
        row_to_sample(row, f"{path}:{line}", mapping, default_id=f"{name}:{line}", keep=keep)
        for line, row in iter_records(path)
    ]


def load_data_files(
    data_files: DataFiles, split: str, fields: Mapping[str, str] | None = None, keep: Sequence[str] = ()
) -> list[Sample]:
    """The samples of ``split`` from ``data_files`` (one path, or one path per split)."""
    split = check_split(split)
    if isinstance(data_files, Mapping):
        normalised = {check_split(k): v for k, v in data_files.items()}
        if split not in normalised:
            raise ConfigError(f"data_files has no {split!r} file; it has {sorted(normalised)}")
        return load_file(normalised[split], fields, keep)
    if isinstance(data_files, (str, os.PathLike)):
        return split_samples(load_file(data_files, fields, keep), split)
    raise ConfigError(
        f"data_files must be a path or a mapping split -> path, got {type(data_files).__name__}"
    )
