"""bf16 autocast vs fp32: TextPPO updates on one device, taking turns: tokens/s, phases, MFU, peak memory.

    python benchmarks/bf16_vs_fp32.py                                  # SmolLM2-135M-Instruct on the CPU
    python benchmarks/bf16_vs_fp32.py --device cuda --batch 64         # on a GPU
    python benchmarks/bf16_vs_fp32.py --device cuda --random-weights   # the model's architecture, random weights

What the ``bf16="auto"`` rule (``agents.common.agent.auto_bf16``) is decided from; it prints what the
rule resolves to here.  Two TextPPO agents, ``bf16=False`` and ``bf16=True``, on Translation-v0 prompts
(``--batch`` completions, 4 per prompt, ``--max-new-tokens``, 2 epochs, one rollout per update), take
turns one update at a time after one warm-up update each (GPU kernels are chosen at first use).  Per update: tokens/s, the
rollout / prepare (old and reference log-probs) / epochs seconds, MFU against a peak matmul rate
measured in the same run (``_flops.py``: 8192³ on a GPU), and on a GPU the peak memory allocated.
``--random-weights``: the model's config with freshly initialised weights (throughput does not depend
on the weights; answers then run to ``--max-new-tokens``), e.g. where the weights cannot be brought.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import gymnasium as gym
import torch
from _flops import PhaseClock, describe_peaks, mfu, peaks, update_flops

import textgym  # noqa: F401  (registers the env ids)
from agents import TextPPO
from agents.common.agent import auto_bf16, cpu_has_native_bf16
from textgym.models import resolve_model_path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--random-weights", action="store_true", help="the model's architecture, random weights")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--steps", type=int, default=4, help="measured updates per side (after one warm-up each)")
    p.add_argument("--threads", type=int, default=1, help="torch threads on a CPU")
    args = p.parse_args()
    warnings.filterwarnings("ignore", message=".*episodes per update.*")
    torch.set_num_threads(args.threads)
    peak = peaks(["fp32", "bf16"], args.threads, args.device)
    print(describe_peaks(peak, args.threads, args.device), flush=True)
    gpu = args.device != "cpu"
    sync = torch.cuda.synchronize if gpu else (lambda: None)
    sides = {}
    for bf16 in (False, True):
        model: object = args.model
        if args.random_weights:
            from transformers import AutoConfig, AutoModelForCausalLM

            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(resolve_model_path(args.model)))
        env = gym.make_vec("textgym/Translation-v0", num_envs=args.batch, model=args.model,
                           max_new_tokens=args.max_new_tokens)  # fmt: skip
        agent = TextPPO("LMPolicy", env, model=model, seed=0, verbose=0, n_epochs=2, n_rollouts=1, group_size=4,
                        learning_rate=1e-5, bf16=bf16, reward_scaling=False, device=args.device)  # fmt: skip
        sides["bf16" if bf16 else "fp32"] = (agent, PhaseClock(agent), [], [])
    params = sum(p.numel() for p in sides["fp32"][0].policy.lm.parameters())
    for step in range(args.steps + 1):  # update 0 warms up
        for name, (agent, clock, rates, phases) in sides.items():
            if gpu:
                torch.cuda.reset_peak_memory_stats()
            before, started = agent.num_timesteps, time.perf_counter()
            agent.learn(1, reset_num_timesteps=False)
            sync()
            seconds, took = time.perf_counter() - started, clock.take()
            memory = f", peak memory {torch.cuda.max_memory_allocated() / 1e9:.2f} GB" if gpu else ""
            print(f"update {step} {name}: {seconds:.2f} s, {agent.num_timesteps - before} tokens{memory}, "
                  + ", ".join(f"{k} {v:.2f} s" for k, v in took.items()), flush=True)  # fmt: skip
            if step:
                rates.append((agent.num_timesteps - before, seconds))
                phases.append(took)
    per_update = {}
    for name, (_, _, rates, phases) in sides.items():
        tokens, seconds = sum(n for n, _ in rates), sum(s for _, s in rates)
        per_update[name] = [n / s for n, s in rates]
        use = mfu(update_flops(params, tokens, 2, True), seconds, peak[name])
        avg = {k: sum(ph[k] for ph in phases) / len(phases) for k in phases[0]}
        print(f"TextPPO {name}: {statistics.median(per_update[name]):.1f} tokens/s (median update), MFU {use:.2%} of "
              f"{name} peak; per update " + ", ".join(f"{k} {v:.2f} s" for k, v in avg.items()))  # fmt: skip
    ratio = statistics.median(b / f for b, f in zip(per_update["bf16"], per_update["fp32"]))
    native = f"; this CPU has bf16 instructions: {cpu_has_native_bf16()}" if not gpu else ""
    print(f"bf16='auto' resolves to {auto_bf16(args.device)} on {args.device}{native} (agents.common.agent.auto_bf16)")
    print(f"ratio bf16/fp32 {ratio:.2f} ({args.model}{' (random weights)' if args.random_weights else ''}, "
          f"{args.device}, batch {args.batch}, {args.max_new_tokens} new tokens, 2 epochs, {params / 1e6:.0f}M parameters)")


if __name__ == "__main__":
    main()
