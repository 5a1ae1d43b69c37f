"""The loss's log-prob and entropy over the vocabulary: the fused function vs the plain formula.

    python benchmarks/logprob_entropy.py                        # [8, 32, 49152] float32 logits on the CPU
    python benchmarks/logprob_entropy.py --dtype bf16           # logits as autocast's lm_head gives them
    python benchmarks/logprob_entropy.py --device cuda --rows 64

Forward and backward of ``agents.common.sampling.log_probs_and_entropy`` (one chunked autograd function,
docs/trainer.md "The loss over the vocabulary") against the formula it replaced (a log-softmax of the
float32 logits, its exp, the product and their autograd backward), on the same logits, taking turns;
median seconds of ``--repeats`` after one warm-up each, the largest difference of the values and the
gradients, and the ratio plain/fused.  Both gradients flow (log-prob and entropy, as PPO's loss uses them).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from agents.common.sampling import log_probs_and_entropy

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def plain(logits: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The formula before the fused function: every intermediate a full (rows, tokens, V) float32 tensor."""
    logp_all = torch.log_softmax(logits.float(), dim=-1)
    p = logp_all.exp()
    entropy = -(p * logp_all.masked_fill(p == 0, 0.0)).sum(-1)
    return logp_all.gather(-1, actions.unsqueeze(-1)).squeeze(-1), entropy


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=8, help="sequences (completions) in the batch")
    p.add_argument("--tokens", type=int, default=32, help="answer tokens per sequence")
    p.add_argument("--vocab", type=int, default=49152, help="SmolLM2's vocabulary")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="dtype of the logits")
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=1, help="torch threads on a CPU")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    g = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(args.rows, args.tokens, args.vocab, generator=g)).to(device, DTYPES[args.dtype])
    actions = torch.randint(args.vocab, (args.rows, args.tokens), generator=g).to(device)
    weights = torch.randn(2, args.rows, args.tokens, generator=g).to(device)
    sides = {"plain": plain, "fused": log_probs_and_entropy}
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    outputs = {}
    for repeat in range(args.repeats + 1):
        for name, fn in sides.items():
            x = logits.clone().requires_grad_()
            sync()
            start = time.perf_counter()
            logp, entropy = fn(x, actions)
            (weights[0] * logp + weights[1] * entropy).sum().backward()
            sync()
            if repeat:
                seconds[name].append(time.perf_counter() - start)
            outputs[name] = (logp.detach(), entropy.detach(), x.grad.float())
    med = {name: statistics.median(s) for name, s in seconds.items()}
    diff = [float((a - b).abs().max()) for a, b in zip(outputs["plain"], outputs["fused"])]
    print(f"logits {args.rows}x{args.tokens}x{args.vocab} {args.dtype} on {args.device}, {args.threads} thread(s), "
          f"forward + backward, median of {args.repeats}")  # fmt: skip
    for name in sides:
        print(f"  {name:6s} {med[name]:.3f} s")
    print(f"  largest difference: log-prob {diff[0]:.2e}, entropy {diff[1]:.2e}, gradient {diff[2]:.2e}")
    print(f"ratio plain/fused {med['plain'] / med['fused']:.2f}")


if __name__ == "__main__":
    main()
