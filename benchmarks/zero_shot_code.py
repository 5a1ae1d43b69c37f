"""Zero-shot pass rate of a model on the code envs' test splits (the baseline PPO must beat).

Each env's own prompt tokens (chat template, ``max_prompt_tokens``) go through
batched greedy ``model.generate`` for ``max_new_tokens``; answers are cut at
EOS, decoded as the env decodes them and scored by the env's reward (the
sandbox).  Prints pass_rate (fraction of asserts), all_pass (pass@1) and the
sandbox statuses per env.

    python benchmarks/zero_shot_code.py                      # the three code envs, whole test splits
    python benchmarks/zero_shot_code.py --env textgym/CodeRepair-v0 --batch-size 4 --threads 1
"""

from __future__ import annotations

import argparse
import collections
import json
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


ENVS = ("textgym/CodeGeneration-v0", "textgym/CodeCompletion-v0", "textgym/CodeRepair-v0")


def greedy_answers(model: Any, setup: Any, indices: list[int], bf16: bool) -> tuple[list[str], int]:
    """Greedy answers to the env prompts of ``indices`` (left-padded like the env's observations), and the
    tokens run forward (:func:`_flops.generate_tokens`)."""
    prompts = [setup.encoded_prompt(i)[0] for i in indices]
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), setup.pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.as_tensor(prompt)
        mask[row, width - len(prompt) :] = 1
    with torch.inference_mode(), autocast_or_not(bf16):
        out = model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=setup.max_new_tokens, do_sample=False,
            temperature=None, top_p=None, top_k=None, eos_token_id=setup.eos_id, pad_token_id=setup.pad_id,
        )
    rows = []
    for row in out[:, width:].tolist():
        rows.append(row[: row.index(setup.eos_id)] if setup.eos_id in row else row)
    return setup.tokenizer.batch_decode(rows, skip_special_tokens=True), generate_tokens(mask, out[:, width:], setup.eos_id)


def evaluate(env_id: str, model: Any, model_name: str, batch_size: int, save: Any = None, bf16: bool = False,
             peak: float = 1.0) -> dict[str, float]:  # fmt: skip
    setup = gym.make(env_id, model=model_name, split="test").unwrapped.setup
    indices = list(range(len(setup.samples)))
    start = time.perf_counter()
    texts: list[str] = []
    tokens = 0
    for b in range(0, len(indices), batch_size):
        answers, count = greedy_answers(model, setup, indices[b : b + batch_size], bf16)
        texts, tokens = texts + answers, tokens + count
        print(f"  ... {len(texts)}/{len(indices)} answers, {time.perf_counter() - start:.0f} s", file=sys.stderr,
              flush=True)
    generation = time.perf_counter() - start
    start = time.perf_counter()
    result = setup.reward(texts, setup.samples)
    scoring = time.perf_counter() - start
    statuses = collections.Counter(d["execution"]["status"] for d in result.details)
    if save is not None:
        for text, sample, detail in zip(texts, setup.samples, result.details, strict=True):
            save.write(json.dumps({"env": env_id, "id": sample.id, "answer": text, **detail}) + "\n")
    print(f"\n{env_id}  model={model_name}  test problems={len(indices)}  greedy, "
          f"max_new_tokens={setup.max_new_tokens}")
    print(f"  generation {generation:.1f} s, sandbox scoring {scoring:.2f} s, generation MFU "
          f"{mfu(generation_flops(n_params(model), tokens), generation, peak):.1%} of "
          f"{'bf16' if bf16 else 'fp32'} peak ({tokens} prompt + answer tokens)")  # fmt: skip
    print(f"  pass_rate (asserts) {np.mean(result.metrics['pass_rate']):.4f}   "
          f"all_pass (pass@1) {np.mean(result.metrics['all_pass']):.4f}")
    print(f"  statuses: {dict(statuses)}")
    for text, sample, detail in list(zip(texts, setup.samples, result.details, strict=True))[:2]:
        print(f"  example {sample.id}: {detail['execution']['status']} "
              f"{detail['execution']['passed']}/{detail['execution']['total']}\n    answer: {text[:300]!r}")
    return {"pass_rate": float(np.mean(result.metrics["pass_rate"])),
            "all_pass": float(np.mean(result.metrics["all_pass"]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", action="append", choices=ENVS, help="env id (repeatable; default: all three)")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--batch-size", type=int, default=16, help="16 = a whole test split in one batch")
    parser.add_argument("--save", type=argparse.FileType("w"), help="write every answer and its verdict (JSONL)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (1 is much faster on a CPU shared with other jobs)")
    parser.add_argument("--bf16", action="store_true", help="generate under bf16 autocast")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    peak = peak_matmul_flops("bf16" if args.bf16 else "fp32")
    print(describe_peaks({"bf16" if args.bf16 else "fp32": peak}, torch.get_num_threads()))
    start = time.perf_counter()
    model = load_model(args.model)
    print(f"loaded {args.model} in {time.perf_counter() - start:.1f} s; torch threads: {torch.get_num_threads()}")
    summary = {env_id: evaluate(env_id, model, args.model, args.batch_size, args.save, args.bf16, peak) for env_id in args.env or ENVS}
    print("\nsummary (test splits, greedy):")
    for env_id, scores in summary.items():
        print(f"  {env_id:28s} pass_rate {scores['pass_rate']:.4f}  all_pass {scores['all_pass']:.4f}")
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
