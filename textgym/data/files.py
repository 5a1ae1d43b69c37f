"""JSONL and CSV data files, with errors that name the file, line and field.

``data_files`` is either one path (its rows are split deterministically by a
hash of each row's id, 80/10/10 or ``split_sizes=``) or a mapping ``{"train": path, "test": path, ...}``.

Field names are mapped with ``fields={"prompt": "source", "references": "target"}``:
the keys are textgym's names, the values the column names in the file.  A
``references`` column may hold one string or a list of strings.
"""

from __future__ import annotations

import csv
import json
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from textgym.data.base import Sample, SplitSizes, check_split, check_split_sizes, split_samples
from textgym.errors import ConfigError, DataError

DataFiles = str | os.PathLike[str] | Mapping[str, str | os.PathLike[str]]

DEFAULT_FIELDS = {"id": "id", "prompt": "prompt", "references": "references"}
BAD_ROW_POLICIES = ("raise", "skip")
#: Longer text fields are rejected as absurd (a broken export, a binary blob).
MAX_FIELD_CHARS = 1_000_000


def iter_records(
    path: str | os.PathLike[str], errors: list[DataError] | None = None
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, row)`` from a ``.jsonl``/``.json`` or ``.csv`` file.

    A malformed line raises :class:`DataError`, or is appended to ``errors``
    and skipped when a list is given.
    """

    def bad(message: str) -> None:
        if errors is None:
            raise DataError(message)
        errors.append(DataError(message))

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
                    bad(f"{path}:{number}: invalid UTF-8 ({err.reason} at byte {err.start})")
                    continue
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    bad(f"{path}:{number}: invalid JSON ({err.msg}, column {err.colno})")
                    continue
                if not isinstance(row, dict):
                    bad(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
                    continue
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
    if len(prompt) > MAX_FIELD_CHARS:
        raise DataError(f"{where}: field {fields['prompt']!r} is {len(prompt):,} characters (limit {MAX_FIELD_CHARS:,})")
    refs: Any = ()
    if fields.get("references"):
        refs = _field(row, fields["references"], where, "references")
        if isinstance(refs, str):
            refs = (refs,)
        if not isinstance(refs, (list, tuple)) or not all(isinstance(r, str) for r in refs):
            raise DataError(
                f"{where}: field {fields['references']!r} must be a string or a list of strings, got {refs!r}"
            )
        if any(len(r) > MAX_FIELD_CHARS for r in refs):
            raise DataError(f"{where}: field {fields['references']!r} has a text over {MAX_FIELD_CHARS:,} characters")
    sample_id = row.get(fields.get("id", "id"), default_id)
    meta = {k: _field(row, k, where, k) for k in keep}
    return Sample(id=str(sample_id), prompt=prompt, references=tuple(refs), meta=meta)


def check_bad_row_policy(on_bad_row: str) -> str:
    if on_bad_row not in BAD_ROW_POLICIES:
        raise ConfigError(f"on_bad_row must be one of {list(BAD_ROW_POLICIES)}, got {on_bad_row!r}")
    return on_bad_row


def load_file(
    path: str | os.PathLike[str],
    fields: Mapping[str, str] | None = None,
    keep: Sequence[str] = (),
    on_bad_row: str = "raise",
) -> list[Sample]:
    """All rows of one file as Samples (``keep`` copies extra columns into ``meta``).

    ``on_bad_row="raise"`` (default) stops at the first bad row with its file,
    line and field; ``"skip"`` drops bad rows and warns once with their count
    and the first problem.
    """
    check_bad_row_policy(on_bad_row)
    mapping = {**DEFAULT_FIELDS, **(fields or {})}
    unknown = set(mapping) - set(DEFAULT_FIELDS)
    if unknown:
        raise ConfigError(f"fields has unknown keys {sorted(unknown)}; allowed: {sorted(DEFAULT_FIELDS)}")
    name = Path(path).name
    errors: list[DataError] | None = [] if on_bad_row == "skip" else None
    samples = []
    for line, row in iter_records(path, errors):
        try:
            samples.append(row_to_sample(row, f"{path}:{line}", mapping, default_id=f"{name}:{line}", keep=keep))
        except DataError as err:
            if errors is None:
                raise
            errors.append(err)
    if errors:
        warnings.warn(f"skipped {len(errors)} bad row(s) of {path}; first: {errors[0]}", stacklevel=2)
    return samples


def load_data_files(
    data_files: DataFiles,
    split: str,
    fields: Mapping[str, str] | None = None,
    keep: Sequence[str] = (),
    on_bad_row: str = "raise",
    split_sizes: SplitSizes | None = None,
) -> list[Sample]:
    """The samples of ``split`` from ``data_files`` (one path, or one path per split).

    One path is split by a stable hash of each row's id: 80/10/10 unless
    ``split_sizes`` says otherwise (fractions or row counts, see
    :data:`textgym.data.base.SplitSizes`); with at least 3 rows no split is empty.
    """
    split = check_split(split)
    if isinstance(data_files, Mapping):
        if split_sizes is not None:
            raise ConfigError("split_sizes= splits one data file; data_files={split: path} already names its splits")
        normalised = {check_split(k): v for k, v in data_files.items()}
        if split not in normalised:
            raise ConfigError(f"data_files has no {split!r} file; it has {sorted(normalised)}")
        return load_file(normalised[split], fields, keep, on_bad_row)
    if isinstance(data_files, (str, os.PathLike)):
        check_split_sizes(split_sizes)  # a bad value fails before the file is read
        return split_samples(load_file(data_files, fields, keep, on_bad_row), split, sizes=split_sizes)
    raise ConfigError(
        f"data_files must be a path or a mapping split -> path, got {type(data_files).__name__}"
    )
