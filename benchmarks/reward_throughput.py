"""Batch scoring throughput of the text rewards, in samples per second.

Scores batches of 64 realistic (output, reference) pairs -- ACLSum test
summaries against the first sentence of each abstract, chit-chat test turns
against another turn -- with each reward through :class:`textgym.Reward`, the
path the envs use, and prints samples/s.  For semantic similarity it also
prints the speed-up of one batched encoder call over 64 one-by-one calls
(floor: 5x); the script exits with status 1 below the floor.

    python benchmarks/reward_throughput.py [--batch-size 64] [--seconds 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np

from textgym.data.base import Sample
from textgym.rewards import Reward
from textgym.tasks.dialogue import DialogueTask
from textgym.tasks.summarization import SummarizationTask

SEMANTIC_FLOOR = 5.0


def summarization_batch(n: int) -> tuple[list[str], list[Sample]]:
    samples = SummarizationTask().samples("test")
    samples = [samples[i % len(samples)] for i in range(n)]
    # lead-1: the abstract's first sentence (after the title) as the output
    outputs = [s.prompt.split("\n\n", 1)[-1].split(". ")[0] + "." for s in samples]
    return outputs, samples


def dialogue_batch(n: int) -> tuple[list[str], list[Sample]]:
    pool = DialogueTask().samples("test")
    samples, others = pool[:n], pool[-n:]
    outputs = [o.references[0] for o in others]  # plausible chat turns, none equal to a reference
    return outputs, samples


def rate(fn: Callable[[], object], n: int, seconds: float) -> float:
    """Samples per second of ``fn`` (which scores ``n`` samples), after one warm-up call."""
    fn()
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and calls >= 3:
            return calls * n / elapsed


def reward_rate(spec, extra: Sequence[str], texts: list[str], samples: list[Sample], seconds: float) -> float:
    reward = Reward(spec, extra_metrics=extra)
    return rate(lambda: reward(texts, samples), len(texts), seconds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=2.0, help="minimum timing per reward")
    args = parser.parse_args()
    n = args.batch_size
    summ, dial = summarization_batch(n), dialogue_batch(n)
    rows = [
        ("rougeL (summarization)", "rougeL", (), summ),
        ("rouge1+2+L (one pass)", "rougeL", ("rouge1", "rouge2"), summ),
        ("chrf (dialogue)", "chrf", (), dial),
        ("semantic_similarity (dialogue)", "semantic_similarity", (), dial),
        ("distinct_2 + repetition", {"distinct_2": 0.5, "repetition": 0.5}, (), dial),
        ("Summarization-v0 default (+info metrics)", SummarizationTask.default_reward, SummarizationTask.info_metrics, summ),
        ("Dialogue-v0 default (+info metrics)", DialogueTask.default_reward, DialogueTask.info_metrics, dial),
    ]
    print(f"batch size {n}; samples/s (higher is better)")
    for label, spec, extra, (texts, samples) in rows:
        print(f"  {label:42s} {reward_rate(spec, extra, texts, samples, args.seconds):10.1f}")

    texts, samples = dial
    semantic = Reward("semantic_similarity")
    batched = rate(lambda: semantic(texts, samples), n, args.seconds)
    single = rate(lambda: [semantic([t], [s]) for t, s in zip(texts, samples, strict=True)], n, args.seconds)
    same = np.allclose(semantic(texts, samples).scores, [semantic([t], [s]).scores[0] for t, s in zip(texts, samples, strict=True)], atol=1e-5)
    ratio = batched / single
    verdict = "ok" if ratio >= SEMANTIC_FLOOR else "BELOW FLOOR"
    print(f"semantic_similarity: batched {batched:.1f} vs one-by-one {single:.1f} samples/s -> "
          f"{ratio:.1f}x (floor {SEMANTIC_FLOOR:.0f}x: {verdict}); same scores: {same}")
    return 0 if ratio >= SEMANTIC_FLOOR and same else 1


if __name__ == "__main__":
    sys.exit(main())
