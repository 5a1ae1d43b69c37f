"""Hugging Face ``datasets`` as a data source.

``dataset`` is a hub id (``"cnn_dailymail"``, with ``dataset_config="3.0.0"``)
or the path of a dataset saved with ``save_to_disk``.  Column names map onto
textgym's fields exactly as for data files.  The hub needs network access (or
a filled HF cache); a saved-to-disk dataset works offline.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from textgym.data.base import Sample, check_split
from textgym.data.files import DEFAULT_FIELDS, check_bad_row_policy, row_to_sample
from textgym.errors import DataError, DependencyNotInstalled

# textgym split name -> names datasets commonly use for it
_HF_SPLIT_NAMES = {"train": ("train",), "validation": ("validation", "valid", "val", "dev"), "test": ("test",)}


def _import_datasets() -> Any:
    try:
        import datasets
    except ImportError as err:
        raise DependencyNotInstalled(
            "dataset= needs the Hugging Face 'datasets' package: pip install 'textgym[hf]'"
        ) from err
    return datasets


def _pick_split(splits: Sequence[str], split: str, dataset: str) -> str:
    for name in _HF_SPLIT_NAMES[split]:
        if name in splits:
            return name
    raise DataError(f"dataset {dataset!r} has no {split!r} split; it has {sorted(splits)}")


def load_hf_dataset(
    dataset: str | os.PathLike[str],
    split: str,
    *,
    dataset_config: str | None = None,
    fields: Mapping[str, str] | None = None,
    keep: Sequence[str] = (),
    on_bad_row: str = "raise",
) -> list[Sample]:
    """The samples of ``split`` from a hub dataset or a ``save_to_disk`` folder (``on_bad_row`` as for files)."""
    split = check_split(split)
    check_bad_row_policy(on_bad_row)
    datasets = _import_datasets()
    mapping = {**DEFAULT_FIELDS, **(fields or {})}
    name = os.fspath(dataset)
    if os.path.isdir(name):
        loaded = datasets.load_from_disk(name)
        if isinstance(loaded, datasets.DatasetDict):
            loaded = loaded[_pick_split(list(loaded), split, name)]
    else:  # pragma: no cover - needs the hub
        available = datasets.get_dataset_split_names(name, dataset_config)
        loaded = datasets.load_dataset(name, dataset_config, split=_pick_split(available, split, name))
    samples, errors = [], []
    for i, row in enumerate(loaded):
        try:
            samples.append(row_to_sample(row, f"{name}[{split}][{i}]", mapping, default_id=f"{split}-{i}", keep=keep))
        except DataError as err:
            if on_bad_row == "raise":
                raise
            errors.append(err)
    if errors:
        warnings.warn(f"skipped {len(errors)} bad row(s) of {name}[{split}]; first: {errors[0]}", stacklevel=2)
    return samples
