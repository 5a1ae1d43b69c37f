"""Where a task's samples come from when the user brings their own: files or a dataset.

Every built-in task takes the same four keyword arguments for this --
``data_files=``, ``dataset=`` (with ``dataset_config=``), ``fields=`` and
``on_bad_row=`` -- and hands them to one :class:`UserData`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from textgym.data.base import Sample
from textgym.data.files import DataFiles, check_bad_row_policy, load_data_files
from textgym.data.hf import load_hf_dataset
from textgym.errors import ConfigError


@dataclass(frozen=True)
class UserData:
    """Data files or a Hugging Face dataset, with a column mapping.

    ``fields`` maps textgym's names (``id``, ``prompt``, ``references``) to
    the columns of the data; ``on_bad_row`` is ``"raise"`` or ``"skip"``.
    """

    data_files: DataFiles | None = None
    dataset: str | os.PathLike[str] | None = None
    dataset_config: str | None = None
    fields: Mapping[str, str] = field(default_factory=dict)
    on_bad_row: str = "raise"

    def __post_init__(self) -> None:
        if self.data_files is not None and self.dataset is not None:
            raise ConfigError("give at most one of data_files= and dataset=")
        check_bad_row_policy(self.on_bad_row)

    @property
    def given(self) -> bool:
        """True when the user named files or a dataset (else the task's default data is used)."""
        return self.data_files is not None or self.dataset is not None

    def load(self, split: str, keep: Sequence[str] = (), fields: Mapping[str, str] | None = None) -> list[Sample]:
        """The samples of ``split`` (``keep`` copies extra columns into ``Sample.meta``)."""
        mapping: Any = fields if fields is not None else self.fields
        if self.data_files is not None:
            return load_data_files(self.data_files, split, mapping, keep=keep, on_bad_row=self.on_bad_row)
        if self.dataset is not None:
            return load_hf_dataset(
                self.dataset, split, dataset_config=self.dataset_config, fields=mapping, keep=keep,
                on_bad_row=self.on_bad_row,
            )
        raise ConfigError("no data_files= or dataset= was given")
