"""Evaluate a policy on the first samples of an env's split (batched; greedy, or k sampled answers per prompt),
and ``textgym eval`` itself (its arguments and its body; torch is imported only when it runs).

With ``samples=k`` every prompt gets k sampled answers.  Code envs (their metrics
hold ``all_pass``) report ``pass@j`` with the unbiased estimator of Chen et al.
(2021), ``1 - C(n-c, j) / C(n, j)`` for n answers of which c pass every test;
text envs report the mean and the best-of-k of the main metric.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021) from ``n`` answers of which ``c`` are correct.

    >>> pass_at_k(4, 0, 1), pass_at_k(4, 1, 1), pass_at_k(4, 1, 4), round(pass_at_k(4, 1, 2), 4)
    (0.0, 0.25, 1.0, 0.5)
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def sampled_metrics(records: Sequence[dict[str, Any]], main_metric: str, samples: int) -> dict[str, float]:
    """The k-answer summary: ``pass@j`` (code envs: records whose metrics hold ``all_pass``) for j = 1, k and
    the usual 10 / 100 below k; else ``<main>/best_of_k``, the mean over prompts of the best answer's score
    (the mean over all answers is the metric's own entry in ``metrics``)."""
    by_prompt: dict[int, list[dict[str, float]]] = {}
    for r in records:
        by_prompt.setdefault(r["index"], []).append(r["metrics"] if main_metric != "reward" else {**r["metrics"], "reward": r["reward"]})
    groups = list(by_prompt.values())
    if all("all_pass" in m for g in groups for m in g):
        out = {}
        for j in sorted({1, samples, *(x for x in (10, 100) if x < samples)}):
            out[f"pass@{j}"] = float(np.mean([pass_at_k(len(g), sum(m["all_pass"] >= 1.0 for m in g), j) for g in groups]))
        return out
    best = [max(float(m.get(main_metric, np.nan)) for m in g) for g in groups]
    return {f"{main_metric}/best_of_{samples}": float(np.mean(best))}  # its mean is the metric's own row


def evaluate_policy_on_env(
    policy: Any,
    env: Any,
    episodes: int | None = None,
    deterministic: bool = True,
    seed: int = 0,
    samples: int = 1,
    progress: bool = False,
    reference: Any = None,
) -> dict[str, Any]:
    """Run the first ``episodes`` samples of ``env``'s split (all when None), ``samples`` answers each.

    ``env`` is a :class:`~textgym.vector.TextVectorEnv`; its slots take the samples in
    order (reset option ``index``).  Returns the number of prompts ``n``, of answers, the mean
    reward, the mean of every ``info["metrics"]`` entry over all answers, per-answer records (with each
    turn's text and score in a multi-turn env) and, with ``samples > 1``, ``at_k`` (:func:`sampled_metrics`).
    ``progress``: a tqdm bar on stderr.

    ``reference`` (an LM, e.g. the original model of a trained policy): each record also gets the answer's
    log-likelihood under it and under ``policy`` (teacher-forced on the tokens the policy wrote), and the result
    ``naturalness``: ``perplexity`` (the reference's per-token perplexity of all answers: GRUE's naturalness
    measure, lower is more like the reference's own text) and ``logratio`` (the mean over answers of
    ``log pi(answer) - log ref(answer)``: the KL estimate k1 on these answers; greedy answers are the policy's
    most likely ones, so it is larger than the KL of sampled answers).
    """
    import torch
    from tqdm.auto import tqdm

    from agents.common.rollout import collect_episodes

    n_samples = env.text_spec.num_samples
    total = n_samples if episodes is None else min(int(episodes), n_samples)
    if total < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes!r}")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be a positive integer (answers per prompt), got {samples!r}")
    slots = [(index, k) for index in range(total) for k in range(samples)]
    generator = torch.Generator().manual_seed(seed)
    records: list[dict[str, Any]] = []
    started = time.perf_counter()
    bar = tqdm(total=len(slots), desc="eval", unit="answer", file=sys.stderr, disable=not progress, leave=False)
    for first in range(0, len(slots), env.num_envs):
        chunk = slots[first : first + env.num_envs]
        indices = [index for index, _ in chunk] + [chunk[-1][0]] * (env.num_envs - len(chunk))
        obs, _ = env.reset(seed=seed if first == 0 else None, options={"index": indices})
        batch = collect_episodes(policy, env, obs, generator=generator, deterministic=deterministic)
        assert batch is not None  # no callback: never aborted
        scored = answer_likelihoods(policy, reference, batch) if reference is not None else None
        for slot, (index, k) in enumerate(chunk):
            info = batch.infos[slot]
            records.append({"index": index, "sample": k, "sample_id": info.get("sample_id"), "prompt": info.get("prompt"),
                            "output": info.get("generated_text"), "references": info.get("references"),
                            "reward": float(batch.scores[slot]), "tokens": int(batch.lengths[slot]),
                            "metrics": dict(info.get("metrics") or {}),
                            **{key: info[key] for key in ("turns", "turn_texts", "turn_scores") if key in info}})  # fmt: skip
            if scored is not None:
                records[-1].update({key: float(values[slot]) for key, values in scored.items()})
        bar.update(len(chunk))
    bar.close()
    metrics = {name: float(np.mean([r["metrics"][name] for r in records])) for name in records[0]["metrics"]}
    result = {
        "n": total,
        "answers": len(records),
        "samples": samples,
        "reward_mean": float(np.mean([r["reward"] for r in records])),
        "tokens_mean": float(np.mean([r["tokens"] for r in records])),
        "metrics": metrics,
        "seconds": time.perf_counter() - started,
        "records": records,
    }
    if samples > 1:
        result["at_k"] = sampled_metrics(records, env.text_spec.main_metric, samples)
    if reference is not None:
        tokens = sum(r["scored_tokens"] for r in records)
        result["naturalness"] = {"perplexity": float(np.exp(-sum(r["logp_reference"] for r in records) / max(tokens, 1))),
                                 "logratio": float(np.mean([r["logp_policy"] - r["logp_reference"] for r in records]))}  # fmt: skip
    return result


def answer_likelihoods(policy: Any, reference: Any, batch: Any) -> dict[str, Any]:
    """Per answer of ``batch``: the summed log-probs of its generated tokens under ``policy`` and under the LM
    ``reference`` (the policy's sampling transform on both), and their count.

    The policy's are the ones its (float32) rollout recorded while decoding, else one teacher-forced forward;
    the reference's take one teacher-forced forward, none when ``reference`` is the policy's own LM."""
    import torch

    mask = batch.gen_mask
    with torch.no_grad():
        logp = batch.old_logp
        if logp is None:  # a bf16 rollout records none
            logp, _, _ = policy.sequence_forward(batch.input_ids, batch.attention_mask, batch.prompt_len, with_values=False)
        if reference is policy.lm:
            ref = logp
        else:
            with policy.swapped_lm(reference):
                ref, _, _ = policy.sequence_forward(batch.input_ids, batch.attention_mask, batch.prompt_len,
                                                    with_values=False)  # fmt: skip
    return {"logp_policy": torch.where(mask, logp, 0.0).sum(1).cpu().numpy(),
            "logp_reference": torch.where(mask, ref, 0.0).sum(1).cpu().numpy(),
            "scored_tokens": mask.sum(1).cpu().numpy()}  # fmt: skip


def write_records(records: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """One JSON object per answer (index, sample, prompt, output, references, reward, tokens, metrics)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
    return path


# -- textgym eval ----------------------------------------------------------------------------------------
def add_eval_arguments(ev: argparse.ArgumentParser, positive_int: Any) -> None:
    """``textgym eval``'s arguments (``positive_int``: the CLI's argparse type for counts)."""
    ev.add_argument("id", help="env id, e.g. textgym/Translation-v0")
    source = ev.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a run directory (its newest valid checkpoint-*, before a save at its root), "
                        "one checkpoint, or a Hugging Face model dir")  # fmt: skip
    source.add_argument("--model", help="a model spec (alias, path or hub id), for a zero-shot score")
    ev.add_argument("--split", default="test", choices=["train", "validation", "test"], help="(default: test)")
    ev.add_argument("--episodes", type=positive_int, default=64, help="first N samples of the split (default: 64)")
    ev.add_argument("--num-envs", type=positive_int, default=16, help="batch size (default: 16)")
    ev.add_argument("--samples", metavar="K", type=positive_int, default=None,
                    help="K sampled answers per prompt: pass@k on code envs, mean and best-of-K of the main metric "
                    "on text envs (default: one greedy answer)")  # fmt: skip
    ev.add_argument("--temperature", type=float, default=1.0, help="sampling temperature with --samples (default: 1.0)")
    ev.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    ev.add_argument("--output", metavar="FILE.jsonl", default=None,
                    help="write every answer (prompt, output, references, reward, metrics) there, one JSON per line "
                    "(default: not written)")  # fmt: skip
    ev.add_argument("--reference", metavar="M", default=None,
                    help="also score the answers under this model (e.g. the original one): their perplexity under it "
                    "(naturalness) and the log-ratio log pi - log ref (default: not scored)")  # fmt: skip
    ev.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    ev.add_argument("--json", action="store_true", help="print the summary as JSON, the \"loaded\" line on stderr (default: a table)")


def eval_main(args: argparse.Namespace) -> int:
    """``textgym eval``: resolve the checkpoint, say what was loaded, score it, print each metric once."""
    import gymnasium as gym

    import textgym  # noqa: F401
    from agents.common.checkpoints import describe_checkpoint, resolve_checkpoint
    from agents.common.launch import checked_device
    from agents.common.policies import policy_for

    if args.temperature <= 0:
        from textgym.errors import ConfigError

        raise ConfigError(f"--temperature must be > 0, got {args.temperature}")
    device = checked_device(args.device)
    if args.checkpoint is not None:
        path = resolve_checkpoint(args.checkpoint, allow_model=True)
        print(f"loaded {describe_checkpoint(path)}", file=sys.stderr if args.json else sys.stdout, flush=True)
        spec = str(path)
    else:
        spec = args.model
    env = gym.make_vec(args.id, num_envs=args.num_envs, split=args.split, model=spec)
    policy = policy_for(spec, env.text_spec.vocab_size, env.text_spec.action_mask,
                        temperature=args.temperature).to(device)  # the policy class that fits the model
    samples = args.samples or 1
    reference = None
    if args.reference is not None:
        from agents.common.lm import load_causal_lm

        reference = load_causal_lm(args.reference).to(device).eval()
    result = evaluate_policy_on_env(policy, env, args.episodes, deterministic=args.samples is None, seed=args.seed,
                                    samples=samples, progress=True, reference=reference)  # fmt: skip
    if args.output is not None:
        write_records(result["records"], args.output)
    summary = {k: v for k, v in result.items() if k != "records"}
    summary.update(env=args.id, split=args.split, model=spec, device=str(device), output=args.output)
    if args.json:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
        return 0
    main = env.text_spec.main_metric
    how = "greedy" if args.samples is None else f"{samples} sampled answers each (temperature {args.temperature:g})"
    print(f"{args.id} [{args.split}] {spec}: {result['n']} samples, {how}")
    rows = {main: result["metrics"].get(main, result["reward_mean"])}  # the main metric first, then the others
    rows.update({name: value for name, value in result["metrics"].items() if name != main})
    if "reward" not in rows:
        rows["reward"] = result["reward_mean"]
    rows.update(result.get("at_k", {}))
    rows["tokens"] = result["tokens_mean"]
    rows.update({f"{name} (vs {args.reference})": value for name, value in result.get("naturalness", {}).items()})
    width = max(len(name) for name in rows)
    for name, value in rows.items():
        print(f"  {name:<{width}}  {value:.4f}{'  (main metric)' if name == main else ''}")
    if args.output is not None:
        print(f"wrote {result['answers']} answers to {args.output}")
    return 0
