"""Multi-turn rollout throughput: tokens/s of a 3-turn conversation rollout vs a single-turn rollout of the same tokens.

    python benchmarks/multiturn_rollout.py                       # SmolLM2-135M-Instruct, BYU chit-chat dialogues
    python benchmarks/multiturn_rollout.py --model tiny-random   # where per-step overheads dominate
    python benchmarks/multiturn_rollout.py --device cuda --bf16  # on a GPU

Both sides run ``agents.common.rollout.collect_episodes`` as every algorithm does, with the same
model, batch, sampling (temperature 1) and reward, on Dialogue-v0's task (the BYU chit-chat
conversations) scored by chrF alone (its MiniLM similarity and other info metrics are left out, so
that scoring three short turns costs what scoring one long answer does: the benchmark measures the
rollout, not the reward):

(a) single-turn: ``turns=1`` and ``max_new_tokens = --turns * --turn-tokens``;
(b) multi-turn: ``turns=--turns`` and ``max_new_tokens = --turn-tokens``: after each
    answer the env appends the other person's real reply (``info["reply_ids"]``), which the
    rollout feeds into the same KV cache while the other slots go on sampling.

Throughput is the tokens the policy sampled (EOS included; the env's reply tokens are not counted,
though (b) runs them through the model) per second of rollout, env steps, rewards and infos
included.  The repeats alternate (a) and (b); the ratio is the median of the per-repeat ratios b/a
(issue floor: 0.8).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _flops import autocast_or_not

from agents.common.policies import LMPolicy
from agents.common.rollout import collect_episodes
from textgym import TextVectorEnv
from textgym.models import load_model
from textgym.tasks.dialogue import DialogueTask


class ChrfDialogue(DialogueTask):
    """Dialogue-v0's task with chrF as its only metric (the reward's cost per text alike on both sides)."""

    default_reward = "chrf"
    info_metrics = ("chrf",)


def rollout_rate(policy: LMPolicy, env: TextVectorEnv, seed: int, generator: torch.Generator, autocast, sync
                 ) -> tuple[int, int, float]:  # fmt: skip
    """(sampled tokens, context tokens the env added, seconds) of one rollout from a fresh reset."""
    began = time.perf_counter()
    obs, _ = env.reset(seed=seed)
    batch = collect_episodes(policy, env, obs, generator=generator, autocast=autocast)
    sync()
    seconds = time.perf_counter() - began
    sampled = int(batch.gen_mask.sum())
    added = int(batch.attention_mask[:, batch.prompt_len :].sum()) - sampled
    return sampled, added, seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--turns", type=int, default=3)
    p.add_argument("--turn-tokens", type=int, default=16, help="max_new_tokens of one answer in (b)")
    p.add_argument("--repeats", type=int, default=5, help="alternating (a)/(b) pairs after one warm-up pair")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared machine)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    common = {"num_envs": args.batch, "model": args.model, "max_prompt_tokens": 256}
    envs = {
        "single": TextVectorEnv(ChrfDialogue, turns=1, max_new_tokens=args.turns * args.turn_tokens, **common),
        "multi": TextVectorEnv(ChrfDialogue, turns=args.turns, max_new_tokens=args.turn_tokens, **common),
    }
    lm = load_model(args.model).eval().to(args.device)
    policies = {
        name: LMPolicy(env.single_observation_space, env.single_action_space, lambda _: 0.0, model=lm, temperature=1.0,
                       action_mask=env.text_spec.action_mask).to(args.device)  # fmt: skip
        for name, env in envs.items()
    }
    for policy in policies.values():
        policy.set_training_mode(False)
    autocast = (lambda: autocast_or_not(True, args.device)) if args.bf16 else None
    sync = torch.cuda.synchronize if args.device != "cpu" else (lambda: None)
    generator = torch.Generator().manual_seed(args.seed)
    rates: dict[str, list[float]] = {"single": [], "multi": []}
    tokens: dict[str, list[int]] = {"single": [], "multi": []}
    added: list[int] = []
    for repeat in range(args.repeats + 1):  # repeat 0 warms up both paths
        for name in ("single", "multi") if repeat % 2 else ("multi", "single"):
            n, extra, seconds = rollout_rate(policies[name], envs[name], args.seed + repeat, generator, autocast, sync)
            if repeat:
                rates[name].append(n / seconds)
                tokens[name].append(n)
                if name == "multi":
                    added.append(extra)
    ratio = statistics.median(m / s for m, s in zip(rates["multi"], rates["single"]))
    where = f"{args.threads} thread(s)" if args.device == "cpu" else args.device
    print(f"{args.model} on Dialogue-v0's task (chrF only): batch {args.batch}, {args.repeats} alternating repeats, "
          f"{'bf16' if args.bf16 else 'fp32'}, {where}, torch {torch.__version__}")  # fmt: skip
    print(f"(a) single-turn, max_new_tokens {args.turns * args.turn_tokens:<4} {statistics.median(rates['single']):>8.1f} "
          f"tokens/s (median; sampled tokens per repeat {tokens['single']})")  # fmt: skip
    print(f"(b) {args.turns} turns of <= {args.turn_tokens} tokens     {statistics.median(rates['multi']):>8.1f} "
          f"tokens/s (median; sampled tokens per repeat {tokens['multi']}; env reply tokens fed {added})")  # fmt: skip
    print(f"ratio b/a {ratio:.3f} (median of per-repeat ratios; floor 0.8)")


if __name__ == "__main__":
    main()
