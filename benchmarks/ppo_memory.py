"""Peak resident memory (RSS) of one TextPPO update with the default model on the CPU.

    python benchmarks/ppo_memory.py                 # full fine-tune, batch 8
    python benchmarks/ppo_memory.py --lora          # LoRA adapters (reference = base, no copy)
    python benchmarks/ppo_memory.py --bf16 false    # fp32 (default: TextPPO's bf16="auto")

Runs one rollout of ``--batch`` episodes and one PPO update (all epochs), then
prints the process's peak RSS (``getrusage``), against the floors of issue 5:
<= 3.5 GB full fine-tune, <= 2 GB with LoRA.  Run each variant in its own
process (peak RSS never goes down).  It also prints the update's phases and
its model FLOPs utilisation against a peak matmul rate of the dtype used,
measured in the same run (``benchmarks/_flops.py``).
"""

from __future__ import annotations

import argparse
import resource
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--env", default="textgym/Translation-v0")
    p.add_argument("--batch", type=int, default=8, help="episodes per update")
    p.add_argument("--micro-batch", type=int, default=1, help="sequences per forward/backward (gradients accumulated)")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--lora", action="store_true")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--bf16", choices=("auto", "true", "false"), default="auto", help="TextPPO's bf16 setting")
    args = p.parse_args()

    import gymnasium as gym
    import torch
    from _flops import PhaseClock, describe_peaks, mfu, peaks, update_flops

    import textgym  # noqa: F401
    from agents import TextPPO

    torch.set_num_threads(args.threads)
    env = gym.make_vec(args.env, num_envs=args.batch, model=args.model, max_new_tokens=args.max_new_tokens)
    agent = TextPPO("LMPolicy", env, model=args.model, seed=0, verbose=0, lora=True if args.lora else None,
                    batch_size=args.batch, micro_batch_size=args.micro_batch, n_epochs=1, n_rollouts=1,
                    gradient_checkpointing=args.gradient_checkpointing,
                    bf16={"auto": "auto", "true": True, "false": False}[args.bf16])  # fmt: skip
    dtype = "bf16" if agent.autocast() is not None else "fp32"
    peak = peaks([dtype], args.threads)
    clock = PhaseClock(agent)
    started = time.perf_counter()
    agent.learn(total_timesteps=1)  # one rollout + one update
    seconds = time.perf_counter() - started
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # ru_maxrss is KiB on Linux
    trainable = sum(p.numel() for p in agent.policy.parameters() if p.requires_grad)
    floor = 2.0 if args.lora else 3.5
    mode = "LoRA" if args.lora else "full fine-tune"
    print(f"{args.model} {mode}, batch {args.batch} (micro {args.micro_batch}), {dtype} CPU, "
          f"max_new_tokens {args.max_new_tokens}, {trainable / 1e6:.1f} M trainable parameters")  # fmt: skip
    print(f"peak RSS {peak_gb:.2f} GB (floor {floor} GB: {'OK' if peak_gb <= floor else 'OVER'}); "
          f"one update {seconds:.0f} s, {agent.num_timesteps} tokens")  # fmt: skip
    params = sum(p.numel() for p in agent.policy.lm.parameters())
    print(describe_peaks(peak, args.threads))
    print("phases: " + ", ".join(f"{k} {v:.1f} s" for k, v in clock.take().items())
          + f"; MFU {mfu(update_flops(params, agent.num_timesteps, 1, True), seconds, peak[dtype]):.1%} of {dtype} peak")


if __name__ == "__main__":
    main()
