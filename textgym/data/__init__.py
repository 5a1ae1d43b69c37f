"""Data sources: the Sample type, data files (JSONL/CSV), Hugging Face datasets."""

from textgym.data.base import (
    DEFAULT_SPLIT_SIZES,
    SPLITS,
    Sample,
    SplitSizes,
    as_samples,
    assign_splits,
    check_split,
    check_split_sizes,
    hash_split,
    split_samples,
)
from textgym.data.files import load_data_files, load_file
from textgym.data.hf import load_hf_dataset

__all__ = [
    "DEFAULT_SPLIT_SIZES",
    "SPLITS",
    "Sample",
    "SplitSizes",
    "as_samples",
    "assign_splits",
    "check_split",
    "check_split_sizes",
    "hash_split",
    "load_data_files",
    "load_file",
    "load_hf_dataset",
    "split_samples",
]
