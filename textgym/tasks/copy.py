"""Copy: a synthetic sanity task a tiny randomly initialised model learns in seconds.

The prompt is a short random sequence of words from a small fixed list; the
answer should repeat it.  Every word is one token of the tokenizer (with its
leading space), and the env's action mask allows only those tokens and EOS,
so even a random model samples sensible answers and PPO has signal from step
one.  Reward: words reproduced at the right position divided by
``max(output words, target words)`` (partial credit, 1.0 for an exact copy).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from textgym.data.base import Sample, split_samples
from textgym.errors import ConfigError
from textgym.tasks.base import Task

DEFAULT_WORDS = ("red", "blue", "green", "cat", "dog", "sun", "tree", "fish")
POOL_DRAWS = 3000


def copy_scores(texts: Sequence[str], samples: Sequence[Sample], names: frozenset[str]) -> dict[str, np.ndarray]:
    scores = []
    for text, sample in zip(texts, samples):
        out, ref = text.split(), sample.references[0].split()
        matches = sum(o == r for o, r in zip(out, ref))
        scores.append(matches / max(len(out), len(ref), 1))
    return {"copy_accuracy": np.array(scores, dtype=np.float64)}


class CopyTask(Task):
    """Repeat a short sequence of words."""

    description = "Synthetic: repeat a short word sequence (action-masked; learnable by a tiny model)"
    default_reward = "copy_accuracy"
    info_metrics = ("copy_accuracy",)
    main_metric = "copy_accuracy"
    chat = False

    def __init__(self, words: Sequence[str] = DEFAULT_WORDS, min_words: int = 2, max_words: int = 4) -> None:
        super().__init__()
        words = tuple(words)
        if len(words) < 2 or len(set(words)) != len(words) or not all(isinstance(w, str) and w.strip() == w and w for w in words):
            raise ConfigError(f"words must be at least 2 distinct non-empty words without spaces, got {words!r}")
        if not (isinstance(min_words, int) and isinstance(max_words, int) and 1 <= min_words <= max_words):
            raise ConfigError(f"need 1 <= min_words <= max_words, got min_words={min_words!r}, max_words={max_words!r}")
        self.words = words
        self.min_words = min_words
        self.max_words = max_words

    def messages(self, sample: Sample) -> list[dict[str, str]]:
        return [{"role": "user", "content": f"Copy: {sample.prompt}\nAnswer:"}]

    def load(self, split: str) -> list[Sample]:
        # A fixed pool of distinct sequences, split by a hash of the text:
        # no sequence is in two splits.
        rng = np.random.default_rng(0)
        pool: dict[str, None] = {}
        for _ in range(POOL_DRAWS):
            n = int(rng.integers(self.min_words, self.max_words + 1))
            pool[" ".join(self.words[j] for j in rng.integers(len(self.words), size=n))] = None
        samples = [Sample(id=f"copy-{i}", prompt=text, references=(text,)) for i, text in enumerate(pool)]
        return split_samples(samples, split, key=lambda s: s.prompt)

    def action_mask(self, tokenizer: Any) -> np.ndarray:
        mask = np.zeros(len(tokenizer), dtype=bool)
        for word in self.words:
            ids = tokenizer.encode(" " + word, add_special_tokens=False)
            if len(ids) != 1:
                raise ConfigError(f"Copy word {word!r} is {len(ids)} tokens for this tokenizer; each word must be one token")
            mask[ids[0]] = True
        mask[tokenizer.eos_token_id] = True
        return mask
