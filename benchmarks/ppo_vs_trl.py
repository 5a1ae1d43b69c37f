"""Training throughput: textgym's TextPPO (or TextGRPO) vs TRL's GRPOTrainer on the same task, model and budget.

    python benchmarks/ppo_vs_trl.py                          # SmolLM2-135M-Instruct, 4 updates each
    python benchmarks/ppo_vs_trl.py --algo grpo              # textgym's GRPO against TRL's, same settings
    python benchmarks/ppo_vs_trl.py --model tiny-random --steps 8
    python benchmarks/ppo_vs_trl.py --bf16                   # both in bf16 autocast, + TextPPO in fp32
    python benchmarks/ppo_vs_trl.py --bf16 --device cuda     # the same on a GPU (MFU against the GPU's peak)

Model FLOPs utilisation (MFU) of each side: the model FLOPs of an update
(``2 N`` per generated token for the rollout, ``2 N`` for the reference
forward, ``6 N`` per epoch for forward + backward; ``N`` = the model's
parameters; prompt tokens and attention are left out, the same for both
sides) over the update's seconds, divided by a peak matmul rate of the
side's dtype measured in this run with the same thread count (a 1024x576 by
576x1536 matmul; ``benchmarks/_flops.py``).  TextPPO's updates are also
split into phases: rollout, old/reference log-prob forwards (``prepare``)
and the epochs.

``--bf16``: both sides in bf16 autocast with fp32 master weights (TextPPO
``bf16=True``; TRL ``bf16=True``, which autocasts the training forwards and,
through accelerate's wrapped ``forward``, generation), and a third side,
TextPPO in fp32, taking turns with the other two: the run prints TextPPO
bf16 / TRL bf16 and TextPPO bf16 / TextPPO fp32.

Needs the bench extra (``pip install -e .[bench]`` for TRL).  Both sides get
the same model, the prompts of Translation-v0's train split (the env's own
chat-templated prompt text), the env's reward function (chrF), ``--batch``
completions per update of which ``--generations`` share a prompt,
``--max-new-tokens``, sampling (temperature 1, top_k 0, top_p 1), learning
rate (constant), ``--epochs`` optimisation epochs over each batch (one
optimizer step per epoch on the whole batch), PPO clip 0.2, gradient clipping
1.0, the KL coefficient against a frozen reference (``--kl-coef``), fp32 (or
both bf16 with ``--bf16``) and no gradient checkpointing (TRL's default
gradient checkpointing is turned off to match TextPPO):

(a) ``TextPPO`` (``--algo ppo``) on ``--batch`` env slots with
    ``group_size=--generations`` (each drawn prompt in that many slots; scores
    centred on the group's other completions, as GRPO's advantages are),
    ``n_epochs=--epochs``, one rollout per update; or ``TextGRPO`` (``--algo
    grpo``) with TRL's defaults (dapo loss, group std scaling, epsilon 0.2,
    k3 KL in the loss with ``beta=--kl-coef``);
(b) ``GRPOTrainer`` with ``per_device_train_batch_size=--batch``,
    ``num_generations=--generations``, ``num_iterations=--epochs`` and
    ``max_steps=--steps * --epochs`` (one generation every ``--epochs`` steps).

One update = one batch of completions generated, scored and trained on for
``--epochs`` epochs.  Each side runs in its own subprocess (separate peak
RSS); the two take turns, one update at a time (the other waits), so that a
shared, noisy machine slows both alike.  Throughput is generated tokens (EOS
included), each trained on ``--epochs`` times, per second of update wall time
(model loading excluded); the ratio is the median of the per-round ratios.
The reward printed for each side is the mean reward of the last batch it
generated within the same wall-clock budget of update time (``--budget-s``;
default: the shorter of the two runs).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np
from _flops import PhaseClock, describe_peaks, mfu, peaks, update_flops

SIDES = ("textppo", "trl", "textppo_fp32")  # the last one with --bf16 only


def side_bf16(args: argparse.Namespace, side: str) -> bool:
    return args.bf16 and side != "textppo_fp32"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--algo", choices=("ppo", "grpo"), default="ppo", help="textgym's side (TRL's is GRPOTrainer)")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--env", default="textgym/Translation-v0")
    p.add_argument("--steps", type=int, default=4, help="updates (generation batches) per side")
    p.add_argument("--batch", type=int, default=8, help="completions per update")
    p.add_argument("--generations", type=int, default=4, help="completions per prompt (GRPO's group size)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--epochs", type=int, default=2, help="optimisation epochs per batch (TRL: num_iterations)")
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--kl-coef", type=float, default=0.05, help="TextPPO kl_coef = TRL beta")
    p.add_argument("--budget-s", type=float, default=None, help="wall clock for the reward comparison")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared machine)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bf16", action="store_true", help="both sides in bf16 autocast; adds TextPPO in fp32")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda: where both sides train")
    p.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)  # internal: run one side
    args = p.parse_args(argv)
    if args.batch % args.generations:
        p.error(f"--batch ({args.batch}) must be a multiple of --generations ({args.generations})")
    return args


def make_env(args: argparse.Namespace) -> Any:
    """The env of both sides (TextPPO steps it; TRL takes its prompts and reward function)."""
    import gymnasium as gym

    import textgym  # noqa: F401  (registers the env ids)

    return gym.make_vec(args.env, num_envs=args.batch, model=args.model, max_new_tokens=args.max_new_tokens)


def wait_for_turn() -> None:
    """Block until the parent process says "go" (the sides take turns, one update each)."""
    if sys.stdin.readline().strip() != "go":
        sys.exit("ppo_vs_trl: the parent process went away")


def report(kind: str, payload: dict[str, Any]) -> None:
    print(f"{kind} {json.dumps(payload)}", flush=True)


def run_textppo(args: argparse.Namespace) -> None:
    from agents import TextGRPO, TextPPO

    env = make_env(args)
    common = {"seed": args.seed, "verbose": 0, "learning_rate": args.lr, "n_epochs": args.epochs, "n_rollouts": 1,
              "group_size": args.generations, "kl_coef": args.kl_coef, "max_grad_norm": 1.0,
              "bf16": side_bf16(args, args.side),
              "temperature": 1.0, "top_k": 0, "top_p": 1.0, "reward_scaling": False, "device": args.device}  # fmt: skip
    if args.algo == "grpo":
        agent = TextGRPO("LMPolicy", env, model=args.model, epsilon_low=0.2, loss_type="dapo", scale_rewards="group",
                         **common)  # fmt: skip
    else:
        agent = TextPPO("LMPolicy", env, model=args.model, clip_range=0.2, **common)
    assert (agent.autocast() is not None) == side_bf16(args, args.side)
    report("READY", {"params": sum(p.numel() for p in agent.policy.lm.parameters())})
    clock = PhaseClock(agent)
    for _ in range(args.steps):
        wait_for_turn()
        before, started = agent.num_timesteps, time.perf_counter()
        agent.learn(total_timesteps=1, reset_num_timesteps=False)  # one rollout of --batch episodes + one update
        seconds = time.perf_counter() - started
        reward = agent.history[-1]["rollout/ep_rew_mean"]
        report("UPDATE", {"seconds": seconds, "tokens": agent.num_timesteps - before, "reward": reward,
                          "phases": clock.take()})  # fmt: skip


def run_trl(args: argparse.Namespace) -> None:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from textgym.models import load_model

    setup = make_env(args).setup
    dataset = Dataset.from_list([{"prompt": setup.encoded_prompt(i)[1], "index": i} for i in range(len(setup.samples))])
    batch = {"tokens": 0, "reward": float("nan"), "started": 0.0}

    def chrf(completions: list[str], index: list[int], completion_ids: list[list[int]], **_: Any) -> list[float]:
        scores = setup.reward(completions, [setup.samples[i] for i in index]).scores
        batch["tokens"] = sum(len(ids) for ids in completion_ids)
        batch["reward"] = float(np.mean(scores))
        return [float(s) for s in scores]

    class TakeTurns(TrainerCallback):
        """One update = ``--epochs`` optimizer steps on one generation batch; wait for the turn before each."""

        def on_train_begin(self, *_: Any, model: Any = None, **__: Any) -> None:
            report("READY", {"params": sum(p.numel() for p in model.parameters())})
            wait_for_turn()
            batch["started"] = time.perf_counter()

        def on_step_end(self, _args: Any, state: Any, *__: Any, **___: Any) -> None:
            if state.global_step % args.epochs:
                return
            seconds = time.perf_counter() - batch["started"]
            report("UPDATE", {"seconds": seconds, "tokens": batch["tokens"], "reward": batch["reward"]})
            if state.global_step < state.max_steps:
                wait_for_turn()
                batch["started"] = time.perf_counter()

    with tempfile.TemporaryDirectory() as out:
        config = GRPOConfig(
            output_dir=out, report_to="none", save_strategy="no", logging_steps=10**6, use_cpu=args.device == "cpu",
            seed=args.seed,
            per_device_train_batch_size=args.batch, gradient_accumulation_steps=1, num_generations=args.generations,
            max_completion_length=args.max_new_tokens, num_iterations=args.epochs, max_steps=args.steps * args.epochs,
            learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
            beta=args.kl_coef, epsilon=0.2, temperature=1.0, top_k=0, top_p=1.0, bf16=args.bf16,
            gradient_checkpointing=False, disable_dropout=True, dataloader_num_workers=0, disable_tqdm=True,
        )  # fmt: skip
        trainer = GRPOTrainer(
            model=load_model(args.model), reward_funcs=chrf, args=config, train_dataset=dataset,
            processing_class=setup.tokenizer, callbacks=[TakeTurns()],
        )  # fmt: skip
        trainer.train()


def run_side(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.side == "trl":
        run_trl(args)
    else:
        run_textppo(args)
    gpu = torch.cuda.max_memory_allocated() / 1e9 if args.device != "cpu" else 0.0
    report("RESULT", {"peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9,  # KiB on Linux
                      "peak_gpu_gb": gpu})  # fmt: skip


class Side:
    """One side's subprocess, driven one update at a time over its stdin/stdout."""

    def __init__(self, name: str, log: Any) -> None:
        self.name = name
        cmd = [sys.executable, __file__, *sys.argv[1:], "--side", name]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True)
        self.updates: list[dict[str, float]] = []
        self.params = 0

    def read(self, kind: str) -> dict[str, Any]:
        for line in self.proc.stdout:
            if line.startswith(kind + " "):
                return json.loads(line[len(kind) + 1 :])
        sys.exit(f"{self.name} exited ({self.proc.wait()}) before printing {kind}; see its log")

    def update(self) -> None:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        self.updates.append(self.read("UPDATE"))

    def finish(self) -> dict[str, Any]:
        self.proc.stdin.close()
        result = self.read("RESULT")
        self.proc.wait()
        return result


def reward_at(updates: list[dict[str, float]], budget: float) -> tuple[float, int]:
    """Mean reward of the last batch generated within ``budget`` seconds of update time, and how many batches."""
    elapsed, reward, n = 0.0, float("nan"), 0
    for u in updates:
        elapsed += u["seconds"]
        if elapsed > budget + 1e-9:
            break
        reward, n = u["reward"], n + 1
    return reward, n


def main() -> None:
    args = parse_args()
    if args.side:
        run_side(args)
        return
    names = SIDES if args.bf16 else SIDES[:2]
    with tempfile.NamedTemporaryFile("w+", prefix="ppo_vs_trl_", suffix=".log", delete=False) as log:
        peak = peaks(["fp32", "bf16"] if args.bf16 else ["fp32"], args.threads, args.device)
        sides = {name: Side(name, log) for name in names}
        for side in sides.values():
            side.params = int(side.read("READY")["params"])
        for step in range(args.steps):  # rotate which side goes first
            for name in names[step % len(names) :] + names[: step % len(names)]:
                sides[name].update()
                u = sides[name].updates[-1]
                print(f"update {step + 1}/{args.steps} {name}: {u['seconds']:.1f} s, {u['tokens']} tokens, "
                      f"reward {u['reward']:.4f}", file=sys.stderr, flush=True)  # fmt: skip
        results = {name: side.finish() for name, side in sides.items()}
    rss = {name: r["peak_rss_gb"] for name, r in results.items()}
    gpu = {name: r.get("peak_gpu_gb", 0.0) for name, r in results.items()}
    rounds = {name: [u["tokens"] / u["seconds"] for u in side.updates] for name, side in sides.items()}
    totals = {name: sum(u["seconds"] for u in side.updates) for name, side in sides.items()}
    budget = args.budget_s or min(totals.values())
    ours = "TextGRPO" if args.algo == "grpo" else "TextPPO"
    dtype = "bf16 autocast" if args.bf16 else "fp32"
    where = f"CPU, {args.threads} thread(s)" if args.device == "cpu" else args.device
    labels = {"textppo": f"(a) {ours}", "trl": "(b) TRL GRPOTrainer", "textppo_fp32": f"(c) {ours} fp32"}
    print(describe_peaks(peak, args.threads, args.device))
    print(f"{args.model} on {args.env}: {args.steps} updates of {args.batch} completions ({args.generations} per prompt), "
          f"max_new_tokens {args.max_new_tokens}, {args.epochs} epochs, lr {args.lr:g}, KL coef {args.kl_coef:g}, "
          f"(a) and (b) {dtype}, {where}; subprocess logs: {log.name}")  # fmt: skip
    for name in names:
        updates = sides[name].updates
        tokens = sum(u["tokens"] for u in updates)
        reward, n = reward_at(updates, budget)
        flops = update_flops(sides[name].params, tokens, args.epochs, args.kl_coef > 0)
        kind = "bf16" if side_bf16(args, name) else "fp32"
        print(f"{labels[name]:<20} {statistics.median(rounds[name]):>7.2f} tokens/s (median update; {tokens} tokens in "
              f"{totals[name]:.1f} s), MFU {mfu(flops, totals[name], peak[kind]):.1%} of {kind} peak, peak RSS "
              f"{rss[name]:.2f} GB{f', peak GPU memory {gpu[name]:.2f} GB' if args.device != 'cpu' else ''}, reward after {budget:.0f} s: {reward:.4f} ({n} batches)")  # fmt: skip
        if "phases" in updates[0]:
            phases = {k: sum(u["phases"][k] for u in updates) / len(updates) for k in updates[0]["phases"]}
            print(f"{'':<20} per update: " + ", ".join(f"{k} {v:.2f} s" for k, v in phases.items())
                  + " (prepare = old and reference log-prob forwards)")  # fmt: skip
    ratio = statistics.median(a / b for a, b in zip(rounds["textppo"], rounds["trl"]))
    floor = "2.5 with --bf16" if args.bf16 else ("2 for --algo grpo" if args.algo == "grpo" else "1.5")
    print(f"ratio a/b {ratio:.2f} (median of per-round ratios; floor {floor} with the default model)")
    if args.bf16:
        ratio = statistics.median(a / c for a, c in zip(rounds["textppo"], rounds["textppo_fp32"]))
        print(f"ratio a/c {ratio:.2f} ({ours} bf16 / fp32, median of per-round ratios; floor 1.5 with the default model)")


if __name__ == "__main__":
    main()
