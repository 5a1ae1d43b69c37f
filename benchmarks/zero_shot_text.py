"""Zero-shot quality of a model on the summarization and dialogue test splits.

The baseline PPO must beat: the env's own prompts (chat template, truncation,
``max_new_tokens``) go through one batched ``model.generate`` per batch, the
answers are cut at EOS and decoded as the env decodes them, and the env's
reward scores them.  Prints the mean of every metric over ``--n`` test samples
(chosen with ``--seed``).

    python benchmarks/zero_shot_text.py                    # both envs, 50 samples each, greedy
    python benchmarks/zero_shot_text.py --env textgym/Summarization-v0 --n 20 --sample
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from _flops import autocast_or_not, describe_peaks, generate_tokens, generation_flops, mfu, peak_matmul_flops

import textgym  # noqa: F401  (registers the ids)
from textgym.models import load_model


def n_params(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


ENVS = ("textgym/Summarization-v0", "textgym/Dialogue-v0")


def generate(model: Any, setup: Any, indices: list[int], sample: bool, bf16: bool) -> tuple[list[str], int]:
    """Answers of ``model`` to the env prompts of ``indices``, decoded as the env decodes them, and the
    tokens run forward (:func:`_flops.generate_tokens`)."""
    prompts = [setup.encoded_prompt(i)[0] for i in indices]
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), setup.pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, p in enumerate(prompts):  # left padding, as in the env's observations
        ids[row, width - len(p) :] = torch.as_tensor(p)
        mask[row, width - len(p) :] = 1
    with torch.inference_mode(), autocast_or_not(bf16):
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=setup.max_new_tokens,
            do_sample=sample,
            temperature=0.7 if sample else None,
            top_p=None,
            top_k=None,
            eos_token_id=setup.eos_id,
            pad_token_id=setup.pad_id,
        )
    texts = []
    for row in out[:, width:].tolist():
        if setup.eos_id in row:
            row = row[: row.index(setup.eos_id)]
        texts.append(row)
    return setup.tokenizer.batch_decode(texts, skip_special_tokens=True), generate_tokens(mask, out[:, width:], setup.eos_id)


def evaluate(env_id: str, model: Any, model_name: str, n: int, batch_size: int, sample: bool, seed: int,
             bf16: bool, peak: float) -> None:  # fmt: skip
    env = gym.make(env_id, model=model_name, split="test")
    setup = env.unwrapped.setup
    rng = np.random.default_rng(seed)
    indices = sorted(rng.choice(len(setup.samples), size=min(n, len(setup.samples)), replace=False).tolist())
    start = time.perf_counter()
    texts: list[str] = []
    tokens = 0
    for b in range(0, len(indices), batch_size):
        answers, count = generate(model, setup, indices[b : b + batch_size], sample, bf16)
        texts, tokens = texts + answers, tokens + count
        print(f"  ... {len(texts)}/{len(indices)} answers, {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - start
    samples = [setup.samples[i] for i in indices]
    result = setup.reward(texts, samples)
    mode = "sampled (T=0.7)" if sample else "greedy"
    print(f"\n{env_id}  model={model_name}  test samples={len(indices)} of {len(setup.samples)}  {mode}")
    print(f"  generation: {seconds:.1f} s, mean output {np.mean([len(t.split()) for t in texts]):.1f} words, "
          f"MFU {mfu(generation_flops(n_params(model), tokens), seconds, peak):.1%} of {'bf16' if bf16 else 'fp32'} "
          f"peak ({tokens} prompt + answer tokens)")  # fmt: skip
    for name, values in result.metrics.items():
        print(f"  {name:20s} mean {np.mean(values):.4f}  (std {np.std(values):.4f})")
    for text, s in list(zip(texts, samples, strict=True))[:2]:
        print(f"  example {s.id}:\n    output:    {text[:200]!r}\n    reference: {s.references[0][:200]!r}")
    env.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", action="append", choices=ENVS, help="env id (repeatable; default: both)")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--n", type=int, default=50, help="test samples per env")
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--sample", action="store_true", help="sample at temperature 0.7 instead of greedy")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bf16", action="store_true", help="generate under bf16 autocast")
    args = parser.parse_args()
    peak = peak_matmul_flops("bf16" if args.bf16 else "fp32")
    print(describe_peaks({"bf16" if args.bf16 else "fp32": peak}, torch.get_num_threads()))
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    model = load_model(args.model)
    print(f"loaded {args.model} in {time.perf_counter() - start:.1f} s; torch threads: {torch.get_num_threads()}")
    for env_id in args.env or ENVS:
        evaluate(env_id, model, args.model, args.n, args.batch_size, args.sample, args.seed, args.bf16, peak)


if __name__ == "__main__":
    main()
