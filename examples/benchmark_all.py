"""Benchmark agents on every registered task from Python (what `textgym bench` does).

    python examples/benchmark_all.py
"""

from agents.baselines import SequenceAgent
from agents.benchmark import run_benchmark


def shout(prompts):
    """A 'model' that answers every prompt with the prompt itself, upper-cased."""
    return [p.upper() for p in prompts]


results = run_benchmark(
    "all",
    ["random", "zero-shot", SequenceAgent(shout, name="shout")],  # also "ppo:runs/copy"
    episodes=4,
    model="tiny-random",  # the default SmolLM2 for real numbers
    out="bench_results",
)
print(open("bench_results/results.md").read())
