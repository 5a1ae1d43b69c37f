"""Hugging Face ``datasets`` as a data source.

``dataset`` is one of:

* a ``datasets.DatasetDict`` object: its ``train`` / ``validation`` (or
  ``valid``/``val``/``dev``) / ``test`` entries are the splits;
* a ``datasets.Dataset`` object: its rows are split like one data file (a stable
  hash of each row's id, 80/10/10 or ``split_sizes=``);
* the path of a folder written by ``save_to_disk`` (a DatasetDict or a Dataset,
  treated as above; works offline);
* a hub id (``"cnn_dailymail"``, with ``dataset_config="3.0.0"``), which needs
  network access or a filled HF cache.

Column names map onto textgym's fields exactly as for data files.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from textgym.data.base import Sample, SplitSizes, check_split, check_split_sizes, split_samples
from textgym.data.files import DEFAULT_FIELDS, check_bad_row_policy, row_to_sample
from textgym.errors import ConfigError, DataError, DependencyNotInstalled

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


def is_dataset_object(dataset: Any) -> bool:
    """True for a ``datasets.Dataset`` or ``DatasetDict`` (checked without importing ``datasets``)."""
    module = sys.modules.get("datasets")
    return module is not None and isinstance(dataset, (module.Dataset, module.DatasetDict))


def describe_dataset(dataset: Any) -> str:
    """A one-line name of a ``dataset=`` value for messages and ``textgym info``."""
    if isinstance(dataset, (str, os.PathLike)):
        return os.fspath(dataset)
    module = sys.modules.get("datasets")
    if module is not None and isinstance(dataset, module.DatasetDict):
        return "DatasetDict(" + ", ".join(f"{k}: {len(v)} rows" for k, v in dataset.items()) + ")"
    if module is not None and isinstance(dataset, module.Dataset):
        return f"Dataset({len(dataset)} rows)"
    return type(dataset).__name__


def check_dataset(dataset: Any) -> None:
    """Reject a ``dataset=`` of an unsupported type at construction, with the accepted ones."""
    if dataset is None or isinstance(dataset, (str, os.PathLike)) or is_dataset_object(dataset):
        return
    raise ConfigError(
        "dataset= must be a hub id, a save_to_disk folder, a datasets.Dataset or a datasets.DatasetDict; "
        f"got {type(dataset).__module__}.{type(dataset).__name__}"
    )


def _to_samples(
    rows: Iterable[Mapping[str, Any]], where: str, mapping: Mapping[str, str], id_prefix: str,
    keep: Sequence[str], on_bad_row: str,
) -> list[Sample]:
    samples, errors = [], []
    for i, row in enumerate(rows):
        try:
            samples.append(row_to_sample(row, f"{where}[{i}]", mapping, default_id=f"{id_prefix}{i}", keep=keep))
        except DataError as err:
            if on_bad_row == "raise":
                raise
            errors.append(err)
    if errors:
        warnings.warn(f"skipped {len(errors)} bad row(s) of {where}; first: {errors[0]}", stacklevel=3)
    return samples


def load_hf_dataset(
    dataset: Any,
    split: str,
    *,
    dataset_config: str | None = None,
    fields: Mapping[str, str] | None = None,
    keep: Sequence[str] = (),
    on_bad_row: str = "raise",
    split_sizes: SplitSizes | None = None,
) -> list[Sample]:
    """The samples of ``split`` from a Dataset/DatasetDict object, a ``save_to_disk`` folder or a hub id.

    ``on_bad_row`` is as for files; ``split_sizes`` applies to a single Dataset
    (a DatasetDict or a hub dataset brings its own splits).
    """
    split = check_split(split)
    check_bad_row_policy(on_bad_row)
    check_dataset(dataset)
    check_split_sizes(split_sizes)
    datasets = _import_datasets()
    mapping = {**DEFAULT_FIELDS, **(fields or {})}
    if isinstance(dataset, (str, os.PathLike)) and os.path.isdir(os.fspath(dataset)):
        name = os.fspath(dataset)
        loaded = datasets.load_from_disk(name)
    elif isinstance(dataset, (str, os.PathLike)):  # pragma: no cover - needs the hub
        name = os.fspath(dataset)
        if split_sizes is not None:
            raise ConfigError(f"split_sizes= splits one Dataset; the hub dataset {name!r} brings its own splits")
        available = datasets.get_dataset_split_names(name, dataset_config)
        loaded = datasets.load_dataset(name, dataset_config, split=_pick_split(available, split, name))
        return _to_samples(loaded, f"{name}[{split}]", mapping, f"{split}-", keep, on_bad_row)
    else:
        name, loaded = describe_dataset(dataset), dataset
    if isinstance(loaded, datasets.DatasetDict):
        if split_sizes is not None:
            raise ConfigError(f"split_sizes= splits one Dataset; {name} already has splits {sorted(loaded)}")
        part = _pick_split(list(loaded), split, name)
        return _to_samples(loaded[part], f"{name}[{split}]", mapping, f"{split}-", keep, on_bad_row)
    # one Dataset: every row, then the same stable split as a single data file
    rows = _to_samples(loaded, name, mapping, "row-", keep, on_bad_row)
    return split_samples(rows, split, sizes=split_sizes)
