"""Where a task's samples come from when the user brings their own: files or a dataset.

Every built-in task takes the same keyword arguments for this --
``data_files=``, ``dataset=`` (with ``dataset_config=``), ``fields=`` and
``on_bad_row=`` -- and hands them to one :class:`UserData`, which also takes
``split_sizes=`` (how one file or one ``datasets.Dataset`` is split).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from textgym.data.base import Sample, SplitSizes, check_split_sizes
from textgym.data.files import DataFiles, check_bad_row_policy, load_data_files
from textgym.data.hf import check_dataset, load_hf_dataset
from textgym.errors import ConfigError


@dataclass(frozen=True)
class UserData:
    """Data files or a Hugging Face dataset, with a column mapping.

    ``dataset`` is a hub id, a ``save_to_disk`` folder, a ``datasets.Dataset``
    or a ``datasets.DatasetDict``. ``fields`` maps textgym's names (``id``,
    ``prompt``, ``references``) to the columns of the data; ``on_bad_row`` is
    ``"raise"`` or ``"skip"``; ``split_sizes`` splits one data file or one
    Dataset: fractions ``(0.8, 0.1, 0.1)`` (the default) or row counts ``(8, 1, 1)``.
    """

    data_files: DataFiles | None = None
    dataset: Any = None
    dataset_config: str | None = None
    fields: Mapping[str, str] = field(default_factory=dict)
    on_bad_row: str = "raise"
    split_sizes: SplitSizes | None = None

    def __post_init__(self) -> None:
        if self.data_files is not None and self.dataset is not None:
            raise ConfigError("give at most one of data_files= and dataset=")
        check_bad_row_policy(self.on_bad_row)
        check_dataset(self.dataset)
        check_split_sizes(self.split_sizes)
        if self.split_sizes is not None and isinstance(self.data_files, Mapping):
            raise ConfigError("split_sizes= splits one data file; data_files={split: path} already names its splits")

    @property
    def given(self) -> bool:
        """True when the user named files or a dataset (else the task's default data is used)."""
        return self.data_files is not None or self.dataset is not None

    def load(self, split: str, keep: Sequence[str] = (), fields: Mapping[str, str] | None = None) -> list[Sample]:
        """The samples of ``split`` (``keep`` copies extra columns into ``Sample.meta``)."""
        mapping: Any = fields if fields is not None else self.fields
        if self.data_files is not None:
            return load_data_files(
                self.data_files, split, mapping, keep=keep, on_bad_row=self.on_bad_row, split_sizes=self.split_sizes
            )
        if self.dataset is not None:
            return load_hf_dataset(
                self.dataset, split, dataset_config=self.dataset_config, fields=mapping, keep=keep,
                on_bad_row=self.on_bad_row, split_sizes=self.split_sizes,
            )
        raise ConfigError("no data_files= or dataset= was given")
