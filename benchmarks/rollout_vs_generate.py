"""Rollout overhead: tokens/s of a TextPPO rollout through the env vs a bare ``model.generate``.

    python benchmarks/rollout_vs_generate.py                        # SmolLM2-135M-Instruct, batch 8, 32 new tokens
    python benchmarks/rollout_vs_generate.py --model tiny-random    # where the per-step overheads dominate
    python benchmarks/rollout_vs_generate.py --seq2seq              # a tiny random T5 (Seq2SeqLMPolicy)
    python benchmarks/rollout_vs_generate.py --bf16                 # both sides in bf16 autocast
    python benchmarks/rollout_vs_generate.py --bf16 --device cuda   # on a GPU

Both sides use the same model object, the same prompts (one ``reset`` of
``gym.make_vec(--env, num_envs=--batch)`` per repeat, left-padded by the env,
padding columns shared by every row dropped on both sides) and the same
sampling distribution (temperature 1, top_k 0, top_p 1, multinomial sampling,
no other logits processor, stop at EOS):

(a) ``model.generate`` with its KV cache, from the prompt tensors;
(b) ``agents.common.rollout.collect_episodes(policy, env, obs)`` as TextPPO runs it: the
    env ``reset`` that builds the observations, one ``env.step`` per token,
    the rewards (chrF on Translation-v0) and the final infos, ``LMPolicy`` with
    its KV cache.
(c) the same rollout with transformers' growing ``DynamicCache`` (concatenated per token) instead of the
    cache with room reserved for the answer (``agents.common.lm.reserve_cache``, written in place): what
    the reserved cache saves; ratio b/c.  Both give the same tokens, bit for bit.

``--seq2seq`` builds a 2-layer T5 with random weights and the default tokenizer (d_model 32,
as ``tests/test_seq2seq.py``) and measures the same two paths on it: ``model.generate``
encodes the prompts and decodes from the decoder start token; the rollout runs
``Seq2SeqLMPolicy`` (``policy="auto"``).  ``--model`` may also name any encoder-decoder checkpoint.

Sampling stops at EOS on both sides, so each side reports the tokens it
actually generated (EOS included, nothing after it) per second.  The repeats
alternate (a), (b) and (c); a ratio is the median of the per-repeat ratios.

``--bf16`` runs both sides under ``torch.autocast(dtype=torch.bfloat16)`` (fp32
weights, as TextPPO's ``bf16=True``; the rollout samples from float32 logits).
Each side's model FLOPs utilisation is ``2 N`` FLOPs per generated token (``N``
= parameters; prompt tokens and attention left out) over its seconds, divided
by a peak matmul rate of the dtype measured in this run (``benchmarks/_flops.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from _flops import autocast_or_not, describe_peaks, generation_flops, mfu, peaks
from transformers import GenerationConfig

import textgym  # noqa: F401  (registers the env ids)
from agents.common.lm import first_real_column, is_encoder_decoder
from agents.common.policies import LMPolicy, resolve_policy
from agents.common.rollout import collect_episodes
from textgym.models import load_model, load_tokenizer


def generated_tokens(new_tokens: torch.Tensor, eos: int) -> int:
    """Tokens of each row up to and including its first EOS (``generate`` pads the rest with EOS)."""
    is_eos = new_tokens == eos
    first = torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, new_tokens.shape[1])
    return int(first.sum())


def time_generate(lm: torch.nn.Module, obs: dict[str, np.ndarray], config: GenerationConfig, prompt_len: int,
                  autocast: Any, sync: Any) -> tuple[int, float]:  # fmt: skip
    ids = torch.as_tensor(obs["input_ids"][:, :prompt_len], device=lm.device)
    mask = torch.as_tensor(obs["attention_mask"][:, :prompt_len], device=lm.device)
    start = first_real_column(mask)  # the rollout drops the same shared padding columns
    ids, mask = ids[:, start:], mask[:, start:]
    began = time.perf_counter()
    with torch.no_grad(), autocast():
        out = lm.generate(input_ids=ids, attention_mask=mask, generation_config=config)
    sync()
    elapsed = time.perf_counter() - began
    new = out[:, 1:] if is_encoder_decoder(lm) else out[:, ids.shape[1] :]  # seq2seq: after the decoder start token
    return generated_tokens(new, config.eos_token_id), elapsed


def time_rollout(policy: LMPolicy, env: gym.vector.VectorEnv, seed: int, generator: torch.Generator,
                 autocast: Any, sync: Any) -> tuple[int, float]:  # fmt: skip
    began = time.perf_counter()
    obs, _ = env.reset(seed=seed)
    batch = collect_episodes(policy, env, obs, generator=generator, autocast=autocast)
    sync()
    elapsed = time.perf_counter() - began
    return int(batch.gen_mask.sum()), elapsed


def tiny_t5(out: Path) -> str:
    """A 2-layer T5 with random weights and the default tokenizer's vocabulary, saved to ``out``."""
    from transformers import GenerationConfig, T5Config, T5ForConditionalGeneration

    tok = load_tokenizer("tiny-random")
    ids = {"decoder_start_token_id": tok.pad_token_id, "pad_token_id": tok.pad_token_id, "eos_token_id": tok.eos_token_id}
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(T5Config(vocab_size=len(tok), d_model=32, d_ff=64, num_layers=2, num_heads=2,
                                                d_kv=16, **ids))  # fmt: skip
    model.generation_config = GenerationConfig(**ids)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return str(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--env", default="textgym/Translation-v0")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5, help="alternating (a)/(b) pairs after one warm-up pair")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared machine)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seq2seq", action="store_true", help="a tiny random T5 instead of --model")
    p.add_argument("--bf16", action="store_true", help="both sides in bf16 autocast")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    args = p.parse_args()

    dtype = "bf16" if args.bf16 else "fp32"
    peak = peaks([dtype], args.threads, args.device)[dtype]
    autocast = (lambda: autocast_or_not(True, args.device)) if args.bf16 else contextlib.nullcontext
    torch.set_num_threads(args.threads)
    if args.seq2seq:
        args.model = tiny_t5(Path(tempfile.mkdtemp(prefix="tiny-t5-")))
    torch.manual_seed(args.seed)
    env = gym.make_vec(args.env, num_envs=args.batch, model=args.model, max_new_tokens=args.max_new_tokens)
    setup = env.unwrapped.text_spec
    lm = load_model(args.model).eval().to(args.device)
    policy = resolve_policy("auto", lm)(
        env.single_observation_space, env.single_action_space, lambda _: 0.0, model=lm,
        temperature=1.0, top_k=0, top_p=1.0, action_mask=setup.action_mask,
    ).to(args.device)  # fmt: skip
    policy.set_training_mode(False)

    class GrowingCache(type(policy)):  # (c): transformers' cache as it comes, concatenated per token
        def reserve_decode_room(self, past: Any, columns: int) -> Any:
            return past

    growing = GrowingCache(env.single_observation_space, env.single_action_space, lambda _: 0.0, model=lm,
                           temperature=1.0, top_k=0, top_p=1.0, action_mask=setup.action_mask).to(args.device)  # fmt: skip
    growing.set_training_mode(False)
    if setup.action_mask is not None and not setup.action_mask.all():
        raise SystemExit(f"{args.env} has an action mask; model.generate would need the same logits processor")
    config = GenerationConfig(
        do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=setup.max_new_tokens,
        eos_token_id=setup.eos_id, pad_token_id=setup.eos_id,
    )  # fmt: skip
    generator = torch.Generator().manual_seed(args.seed)
    sync = torch.cuda.synchronize if args.device != "cpu" else (lambda: None)

    sides = ("generate", "rollout", "growing")
    rates: dict[str, list[float]] = {name: [] for name in sides}
    counts: dict[str, list[int]] = {name: [] for name in sides}
    seconds = dict.fromkeys(sides, 0.0)
    for repeat in range(args.repeats + 1):  # repeat 0 warms up every path
        seed = args.seed + repeat
        obs, _ = env.reset(seed=seed)  # the prompts the rollout's own reset will produce
        took = {"generate": time_generate(lm, obs, config, setup.max_prompt_tokens, autocast, sync)}
        noise = int(torch.randint(2**62, (1,), generator=generator))  # the same sampling noise for (b) and (c)
        pair = [("rollout", policy), ("growing", growing)]
        for name, runner in pair if repeat % 2 else pair[::-1]:  # which goes first alternates
            took[name] = time_rollout(runner, env, seed, torch.Generator().manual_seed(noise),
                                      autocast if args.bf16 else None, sync)  # fmt: skip
        if repeat:
            for name, (n, s) in took.items():
                seconds[name] += s
                rates[name].append(n / s)
                counts[name].append(n)
    ratio = statistics.median(r / g for r, g in zip(rates["rollout"], rates["generate"]))
    saved = statistics.median(r / g for r, g in zip(rates["rollout"], rates["growing"]))
    print(f"{'tiny random T5 (--seq2seq)' if args.seq2seq else args.model} on {args.env}: batch {args.batch}, max_new_tokens {setup.max_new_tokens}, "
          f"{args.repeats} alternating repeats, torch {torch.__version__}, "
          f"{f'{args.threads} thread(s)' if args.device == 'cpu' else args.device}, {dtype}")  # fmt: skip
    print(describe_peaks({dtype: peak}, args.threads, args.device))
    params = sum(p.numel() for p in lm.parameters())
    for name, label in (("generate", "(a) model.generate"), ("rollout", "(b) env rollout"),
                        ("growing", "(c) b, growing cache")):  # fmt: skip
        use = mfu(generation_flops(params, sum(counts[name])), seconds[name], peak)
        print(f"{label:<22} {statistics.median(rates[name]):>9.1f} tokens/s (median; "
              f"tokens per repeat {counts[name]}), MFU {use:.1%} of {dtype} peak")  # fmt: skip
    print(f"ratio b/a {ratio:.3f} (median of per-repeat ratios; floor {'1.0' if args.bf16 else '0.9'} with the default model)")
    print(f"ratio b/c {saved:.3f} (the reserved KV cache against transformers' growing one; same tokens)")


if __name__ == "__main__":
    main()
