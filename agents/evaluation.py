"""Evaluate a policy on the first samples of an env's split (deterministic, batched)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from agents.common.policies import LMPolicy
from agents.common.rollout import collect_episodes


def evaluate_policy_on_env(
    policy: LMPolicy,
    env: Any,
    episodes: int | None = None,
    deterministic: bool = True,
    seed: int = 0,
) -> dict[str, Any]:
    """Run the first ``episodes`` samples of ``env``'s split (all when None) once each.

    ``env`` is a :class:`~textgym.vector.TextVectorEnv`; its slots take the samples
    in order (reset option ``index``).  Returns the number of samples, the mean
    reward, the mean of every ``info["metrics"]`` entry and per-sample records.
    """
    n_samples = env.text_spec.num_samples
    total = n_samples if episodes is None else min(int(episodes), n_samples)
    if total < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes!r}")
    generator = torch.Generator().manual_seed(seed)
    records: list[dict[str, Any]] = []
    started = time.perf_counter()
    for first in range(0, total, env.num_envs):
        indices = [min(first + k, total - 1) for k in range(env.num_envs)]
        obs, _ = env.reset(seed=seed if first == 0 else None, options={"index": indices})
        batch = collect_episodes(policy, env, obs, generator=generator, deterministic=deterministic)
        assert batch is not None  # no callback: never aborted
        for k, index in enumerate(indices[: total - first]):
            info = batch.infos[k]
            records.append(
                {
                    "index": index,
                    "sample_id": info.get("sample_id"),
                    "prompt": info.get("prompt"),
                    "output": info.get("generated_text"),
                    "references": info.get("references"),
                    "reward": float(batch.scores[k]),
                    "tokens": int(batch.lengths[k]),
                    "metrics": dict(info.get("metrics") or {}),
                }
            )
    metrics: dict[str, float] = {}
    for name in records[0]["metrics"] if records else []:
        metrics[name] = float(np.mean([r["metrics"][name] for r in records]))
    return {
        "n": len(records),
        "reward_mean": float(np.mean([r["reward"] for r in records])),
        "tokens_mean": float(np.mean([r["tokens"] for r in records])),
        "metrics": metrics,
        "seconds": time.perf_counter() - started,
        "records": records,
    }
