"""Peak memory and speed of the supervised warm start, whole batches against token-bounded micro-batches.

    python benchmarks/sft_memory.py                                   # CodeCompletion-v0, none vs 2048
    python benchmarks/sft_memory.py --env textgym/Summarization-v0 --limits none,1024,2048

Each setting of ``SFTConfig.micro_batch_tokens`` trains the default model in a process of its own (peak RSS
never goes down) on the same ``--samples`` training pairs (the same seed: the same batches), one epoch, no
validation, and the script prints each one's peak RSS (``getrusage``), seconds per optimizer step, final
training loss, model FLOPs utilisation (6 x parameters x real tokens, over a peak matmul rate of the dtype
used, measured in the child: ``_flops.py``) and the ratios against the first setting, the baseline, measured in the same run.  The losses
should agree to bf16 rounding: micro-batches change how a step is computed, not the step.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile


def child(env: str, model: str | None, samples: int, limit: int | None, threads: int) -> None:
    import resource

    import torch
    from _flops import mfu, peak_matmul_flops

    from agents.common.agent import use_bf16
    from agents.common.lm import load_causal_lm
    from agents.sft import SFTConfig, train_sft

    torch.set_num_threads(threads)
    config = SFTConfig(epochs=1, max_samples=samples, validation_samples=0, micro_batch_tokens=limit)
    with tempfile.TemporaryDirectory() as out:
        summary = train_sft(env, model=model, out=out, config=config, seed=0, progress=False, report_to=())
        params = sum(p.numel() for p in load_causal_lm(summary["checkpoint"]).parameters())
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # ru_maxrss is KiB on Linux
    dtype = "bf16" if use_bf16(config.bf16, torch.device("cpu")) else "fp32"
    flops = 6 * params * summary["tokens"]  # one forward + backward of every real token (padding is not work)
    print(json.dumps({"peak_gb": peak_gb, "seconds_per_step": summary["seconds"] / summary["steps"], "dtype": dtype,
                      "steps": summary["steps"], "train_loss": summary["train_loss"],
                      "mfu": mfu(flops, summary["seconds"], peak_matmul_flops(dtype, threads))}))  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", default="textgym/CodeCompletion-v0")
    p.add_argument("--model", default=None, help="(default: the env's, SmolLM2-135M-Instruct)")
    p.add_argument("--samples", type=int, default=32, help="training pairs (batches of 8)")
    p.add_argument("--limits", default="none,2048", help="micro_batch_tokens settings; the first is the baseline")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child is not None:
        child(args.env, args.model, args.samples, None if args.child == "none" else int(args.child), args.threads)
        return

    rows = []
    for limit in args.limits.split(","):
        cmd = [sys.executable, __file__, "--env", args.env, "--samples", str(args.samples), "--threads",
               str(args.threads), "--child", limit, *(["--model", args.model] if args.model else [])]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
        if done.returncode != 0:
            sys.exit(f"micro_batch_tokens={limit} failed:\n{done.stderr[-3000:]}")
        rows.append((limit, json.loads(done.stdout.strip().splitlines()[-1])))
    base = rows[0][1]
    print(f"{args.env}, {args.model or 'its default model'}, {args.samples} training pairs ({base['steps']} steps of 8), {args.threads} thread(s)")
    print("| micro_batch_tokens | peak RSS | vs baseline | s/step | vs baseline | train loss | MFU |")
    print("|---|---|---|---|---|---|---|")
    for limit, r in rows:
        print(f"| {limit} | {r['peak_gb']:.2f} GB | {r['peak_gb'] / base['peak_gb']:.2f} | {r['seconds_per_step']:.1f} | "
              f"{r['seconds_per_step'] / base['seconds_per_step']:.2f} | {r['train_loss']:.4f} | "
              f"{r['mfu']:.1%} of {r['dtype']} peak |")  # fmt: skip


if __name__ == "__main__":
    main()
