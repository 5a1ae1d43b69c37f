"""Benchmark agents across tasks: a fixed protocol, results.json, results.md and plots.

Protocol: for every (env, agent) pair, the same ``episodes`` samples of the
``split`` (the first ones of a seeded permutation of the split, identical for
every agent; each sample at most once, so a small split gives fewer) are
played through ``gym.make_vec`` in batches; every metric of
``info["metrics"]`` is averaged (mean, std, n).  Before each pair an agent
with a ``set_random_seed(seed)`` method (the random and LM baselines) is
reseeded with the run's seed, so a pair's result does not depend on which
pairs ran before it in the process (or on a resume).  A pair that raises is
recorded with its error and the others go on.  Finished pairs are stored in
``OUT/cells/`` as they complete, so re-running with the same ``--out``
resumes where an interrupted run stopped.

Agents are named ``random``, ``zero-shot``, ``ALGO:PATH`` (``ppo:``, ``grpo:``,
``rloo:``, ``nlpo:``; the checkpoint must be that algorithm's) or
``checkpoint:PATH`` (any algorithm, or a plain Hugging Face model dir).  PATH
is a run directory (its newest valid ``checkpoint-*``), one checkpoint, or a
model dir: :func:`agents.common.checkpoints.resolve_checkpoint` decides.
:func:`check_agent_specs` checks every name before anything runs.

    textgym bench --envs all --agents random,zero-shot --episodes 4 --model tiny-random --out /tmp/b

Example:
    >>> from agents.benchmark import run_benchmark
    >>> results = run_benchmark(["textgym/Copy-v0"], ["random"], episodes=2, model="tiny-random",
    ...                         out="/tmp/textgym-bench-doctest", progress=False)
    >>> results["cells"][0]["agent"]
    'random'
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import platform
import time
import traceback
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from textgym.errors import ConfigError

AgentSpec = str | Any
MAX_BATCH = 8


def builtin_env_ids() -> list[str]:
    import textgym

    return sorted(i for i, e in textgym.ENVS.items() if e.source == "textgym")


def parse_envs(envs: str | Sequence[str]) -> list[str]:
    import textgym

    ids = builtin_env_ids() if envs == "all" else [e.strip() for e in (envs.split(",") if isinstance(envs, str) else envs) if e.strip()]
    unknown = [i for i in ids if i not in textgym.ENVS]
    if unknown:
        raise ConfigError(f"unknown env id(s) {unknown}; registered: {sorted(textgym.ENVS)}")
    return ids


def _checkpoint_kinds() -> list[str]:
    from agents import ALGORITHMS

    return [*ALGORITHMS, "checkpoint"]


def _split_spec(spec: str) -> tuple[str, str]:
    """``("ppo", "runs/copy")`` of ``"ppo:runs/copy"``; unknown names raise, listing the allowed ones."""
    kind, _, path = spec.partition(":")
    if spec in ("random", "zero-shot") or (kind in _checkpoint_kinds() and path):
        return (spec, "") if not path else (kind, path)
    kinds = ", ".join(f"{k}:DIR" for k in _checkpoint_kinds())
    why = f"{kind}: needs a path" if kind in _checkpoint_kinds() else f"unknown agent {spec!r}"
    raise ConfigError(f"{why}; use random, zero-shot, {kinds} (DIR: a run directory, a checkpoint or a model dir) "
                      "or an agent object")  # fmt: skip


def check_agent_specs(agents: Sequence[AgentSpec]) -> list[str]:
    """Check every agent name before a benchmark runs: the name, and that its checkpoint resolves (and is of
    the named algorithm); returns one line per checkpoint agent saying which checkpoint it will load."""
    from agents.common.checkpoints import META, checkpoint_algorithm, describe_checkpoint, resolve_checkpoint

    lines = []
    for spec in agents:
        if not isinstance(spec, str):
            make_agent(spec, None, 0)  # an object: checks respond()
            continue
        kind, path = _split_spec(spec)
        if path:
            found = resolve_checkpoint(path, allow_model=True)
            algo = checkpoint_algorithm(found) if (found / META).is_file() else None
            if kind != "checkpoint" and algo is not None and algo != kind:
                raise ConfigError(f"agent {spec!r}: {found} holds a {algo!r} agent, not {kind!r}; name it "
                                  f"{algo}:{path} or checkpoint:{path}")  # fmt: skip
            lines.append(f"{spec}: {describe_checkpoint(found)}")
    return lines


def make_agent(spec: AgentSpec, model: str | None, seed: int, device: str | None = None) -> Any:
    """``random`` | ``zero-shot`` | ``ALGO:DIR`` | ``checkpoint:DIR`` | an agent object with ``respond``."""
    from agents.baselines import PPOCheckpointAgent, RandomAgent, ZeroShotAgent

    if not isinstance(spec, str):
        if not callable(getattr(spec, "respond", None)):
            raise ConfigError(f"agent {spec!r} has no respond(obs, infos, spec) method")
        return spec
    kind, path = _split_spec(spec)
    if kind == "random":
        return RandomAgent(seed=seed)
    if kind == "zero-shot":
        return ZeroShotAgent(model, device=device)
    return PPOCheckpointAgent(path, algo=None if kind == "checkpoint" else kind, name=spec, device=device)


def agent_name(spec: AgentSpec) -> str:
    return spec if isinstance(spec, str) else getattr(spec, "name", type(spec).__name__)


def _cell_path(out: Path, env_id: str, name: str) -> Path:
    safe = f"{env_id}__{name}".replace("/", "_").replace(":", "_")
    return out / "cells" / f"{safe}.json"


def run_cell(env_id: str, agent: Any, *, episodes: int, split: str, seed: int, model: str | None, on_episode: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Play ``episodes`` fixed samples of ``env_id`` with ``agent``; metrics with mean/std/n."""
    import gymnasium as gym

    from textgym.rollout import play_episodes

    batch = min(MAX_BATCH, episodes)
    envs = gym.make_vec(env_id, num_envs=batch, model=model, split=split)
    n_samples = envs.unwrapped.text_spec.num_samples
    episodes = min(episodes, n_samples)  # every sample at most once
    indices = [int(i) for i in np.random.default_rng(seed).permutation(n_samples)[:episodes]]
    values: dict[str, list[float]] = {}
    for start in range(0, episodes, batch):
        chunk = indices[start : start + batch]
        chunk += chunk[-1:] * (batch - len(chunk))  # pad the last batch; extra results are dropped
        infos = play_episodes(envs, agent.respond, seed=seed + start, options={"index": chunk})
        for info in infos[: min(batch, episodes - start)]:
            for name, value in info["metrics"].items():
                values.setdefault(name, []).append(float(value))
            if on_episode is not None:
                on_episode(1)
    metrics = {
        name: {"mean": float(np.mean(v)), "std": float(np.std(v)), "n": len(v)} for name, v in values.items()
    }
    return {"metrics": metrics, "main_metric": envs.unwrapped.text_spec.main_metric, "samples": indices}


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for package in ("textgym", "torch", "transformers", "gymnasium", "stable-baselines3", "sacrebleu", "rouge-score"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = "not installed"
    return out


def store_cell(cell: dict[str, Any], path: Path, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``cell`` with what ``compute()`` returns (or, when it raises, the error and its traceback: one failing cell
    must not stop the others) and the seconds it took, written to ``path`` atomically; a failed cell is made
    again on the next run.  Shared by the agent benchmark and the recipe leaderboard."""
    started = time.perf_counter()
    try:
        cell.update(compute())
        cell["error"] = None
    except Exception as err:  # noqa: BLE001 - one failing cell must not stop the others
        cell["error"] = f"{type(err).__name__}: {err}"
        cell["traceback"] = traceback.format_exc(limit=8)
    cell["seconds"] = round(time.perf_counter() - started, 3)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(cell, indent=1, ensure_ascii=False))
    tmp.replace(path)
    return cell


def run_benchmark(
    envs: str | Sequence[str],
    agents: Sequence[AgentSpec],
    *,
    episodes: int = 16,
    split: str = "test",
    seed: int = 0,
    model: str | None = None,
    out: str | Path = "bench_results",
    progress: bool = True,
    device: str | None = None,
) -> dict[str, Any]:
    """Run every agent on every env and write results.json, results.md and PNGs into ``out``.

    ``device``: where the LM agents run (``auto``, ``cpu``, ``cuda``; default: where they load).  With
    ``progress``, each checkpoint agent prints ``loaded <checkpoint> (<algo>, <updates> updates, <tokens> tokens)``."""
    from tqdm.auto import tqdm

    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise ConfigError(f"episodes must be a positive integer, got {episodes!r}")
    env_ids = parse_envs(envs)
    if not agents:
        raise ConfigError("name at least one agent (random, zero-shot, ppo:DIR, checkpoint:DIR, ...)")
    out = Path(out)
    (out / "cells").mkdir(parents=True, exist_ok=True)
    loaded: dict[str, Any] = {}
    cells = []

    def scored(env_id: str, spec: str, name: str) -> dict[str, Any]:
        """One (env, agent) cell's scores, the agent loaded once for every env."""
        if name not in loaded:
            loaded[name] = make_agent(spec, model, seed, device)
            if progress and getattr(loaded[name], "description", None):
                bar.write(f"loaded {loaded[name].description}")
        reseed = getattr(loaded[name], "set_random_seed", None)
        if callable(reseed):
            reseed(seed)
        with tqdm(total=episodes, desc="episodes", leave=False, disable=not progress, position=1) as inner:
            return run_cell(env_id, loaded[name], episodes=episodes, split=split, seed=seed, model=model, on_episode=inner.update)

    pairs = [(e, a) for a in agents for e in env_ids]
    bar = tqdm(total=len(pairs), desc="bench (env x agent)", disable=not progress, position=0)
    for env_id, spec in pairs:
        name = agent_name(spec)
        path = _cell_path(out, env_id, name)
        settings = {"episodes": episodes, "split": split, "seed": seed, "model": model}
        if path.is_file():
            cell = json.loads(path.read_text())
            if cell.get("settings") == settings and not cell.get("error"):
                cells.append(cell)
                bar.update(1)
                continue
        bar.set_postfix_str(f"{env_id} / {name}")
        cells.append(store_cell({"env": env_id, "agent": name, "settings": settings}, path,
                                functools.partial(scored, env_id, spec, name)))  # fmt: skip
        bar.update(1)
    bar.close()
    results = {
        "protocol": "seeded permutation of the split, same samples for every agent; greedy LMs",
        "settings": {"envs": env_ids, "agents": [agent_name(a) for a in agents], "episodes": episodes, "split": split, "seed": seed, "model": model},
        "versions": _versions(),
        "cells": cells,
    }
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(markdown_tables(results))
    plot_main_metric(results, out / "main_metric.png")
    curves = {name: agent.training_curve() for name, agent in loaded.items() if hasattr(agent, "training_curve")}
    if any(curves.values()):
        plot_curves({k: v for k, v in curves.items() if v}, out / "training_curves.png")
    return results


def _fmt(metric: dict[str, float] | None) -> str:
    if not metric:
        return "—"
    return f"{metric['mean']:.3f} ± {metric['std']:.3f}"


def markdown_tables(results: dict[str, Any]) -> str:
    """Table 1: env × agent main metric (mean ± std); table 2: every metric."""
    envs = results["settings"]["envs"]
    agents = results["settings"]["agents"]
    by = {(c["env"], c["agent"]): c for c in results["cells"]}
    s = results["settings"]
    lines = [
        f"Split `{s['split']}`, {s['episodes']} episodes per cell, seed {s['seed']}, model `{s['model']}`.",
        "",
        "| env | main metric | " + " | ".join(agents) + " |",
        "|---|---|" + "---|" * len(agents),
    ]
    for env_id in envs:
        main = next((by[(env_id, a)].get("main_metric") for a in agents if (env_id, a) in by and by[(env_id, a)].get("main_metric")), "reward")
        row = []
        for a in agents:
            cell = by.get((env_id, a), {})
            row.append("error" if cell.get("error") else _fmt(cell.get("metrics", {}).get(main)))
        lines.append(f"| {env_id} | {main} | " + " | ".join(row) + " |")
    lines += ["", "| env | agent | metric | mean | std | n |", "|---|---|---|---|---|---|"]
    for c in results["cells"]:
        if c.get("error"):
            lines.append(f"| {c['env']} | {c['agent']} | error | {c['error'][:120]} | | |")
            continue
        for name, m in c["metrics"].items():
            lines.append(f"| {c['env']} | {c['agent']} | {name} | {m['mean']:.4f} | {m['std']:.4f} | {m['n']} |")
    return "\n".join(lines) + "\n"


def plot_grouped_bars(envs: Sequence[str], bars: dict[str, tuple[list[float], list[float]]], ylabel: str,
                      path: Path) -> None:  # fmt: skip
    """One group of bars per env, one bar per entry of ``bars`` (label: (values per env, error bars per env))."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(envs)), 4))
    width = 0.8 / max(1, len(bars))
    for k, (label, (values, errors)) in enumerate(bars.items()):
        ax.bar(np.arange(len(envs)) + k * width, values, width, yerr=errors, label=label, capsize=2)
    ax.set_xticks(np.arange(len(envs)) + width * (len(bars) - 1) / 2)
    ax.set_xticklabels([e.split("/")[-1] for e in envs], rotation=30 if len(envs) > 3 else 0,
                       ha="right" if len(envs) > 3 else "center")  # fmt: skip
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_main_metric(results: dict[str, Any], path: Path) -> None:
    envs, agents = results["settings"]["envs"], results["settings"]["agents"]
    by = {(c["env"], c["agent"]): c for c in results["cells"]}
    bars = {}
    for agent in agents:
        cells = [by.get((env_id, agent), {}) for env_id in envs]
        stats = [c.get("metrics", {}).get(c.get("main_metric", "reward")) if not c.get("error") else None for c in cells]
        bars[agent] = ([m["mean"] if m else math.nan for m in stats], [m["std"] if m else 0.0 for m in stats])
    plot_grouped_bars(envs, bars, "main metric (mean ± std)", path)


def plot_curves(curves: dict[str, tuple[list[float], list[float], str]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, (xs, ys, column) in curves.items():
        ax.plot(xs, ys, label=f"{name} ({column})")
    ax.set_xlabel("timesteps (generated tokens)")
    ax.set_ylabel("training reward")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- textgym bench -----------------------------------------------------------------------------------------
def add_bench_arguments(bench: argparse.ArgumentParser, positive_int: Any) -> None:
    """``textgym bench``'s arguments (``positive_int``: the CLI's argparse type for counts)."""
    from agents import ALGORITHMS
    from agents.sft import bf16_flag, json_object

    algos = ", ".join(ALGORITHMS)
    bench.add_argument("--envs", default="all", help="all, or comma-separated ids (default: all)")
    bench.add_argument("--agents", default="random,zero-shot",
                       help=f"comma-separated: random, zero-shot, ALGO:DIR (ALGO: {algos}; the checkpoint "
                       "must be that algorithm's) or checkpoint:DIR (any algorithm or a Hugging Face model dir); DIR: "
                       "a run directory (its newest valid checkpoint-*) or one checkpoint (default: random,zero-shot)")  # fmt: skip
    bench.add_argument("--episodes", type=positive_int, default=None,
                       help="test samples per cell (default: 16; with --recipes: the whole test split)")  # fmt: skip
    bench.add_argument("--split", default="test", help="(default: test)")
    bench.add_argument("--seed", type=int, default=0, help="(default: 0)")
    bench.add_argument("--model", default=None, help="model of zero-shot and of the envs' tokenizer (default: SmolLM2)")
    bench.add_argument("--out", default="bench_results", help="output folder, re-run to resume (default: bench_results)")
    bench.add_argument("--device", default="auto", help="where the LM agents run: auto, cpu, cuda or cuda:N (default: auto)")
    recipes = bench.add_argument_group("trained-agent leaderboard (--recipes; agents.recipes)")
    recipes.add_argument("--recipes", default=None,
                         help="train each recipe with the same budget, then score it on the test split (instead of "
                         f"--agents): zero-shot, sft, {algos}, sft+ppo, sft+raft, ... (comma-separated)")  # fmt: skip
    recipes.add_argument("--seeds", default="0", help="comma-separated training seeds (default: 0)")
    recipes.add_argument("--updates", type=positive_int, default=12, help="RL updates per recipe (default: 12)")
    recipes.add_argument("--num-envs", type=positive_int, default=32, help="episodes per RL update (default: 32)")
    recipes.add_argument("--sft-epochs", type=positive_int, default=2, help="warm-start epochs (default: 2)")
    recipes.add_argument("--max-new-tokens", type=positive_int, default=None, help="answer length (default: the env's)")
    recipes.add_argument("--table-only", action="store_true",
                         help="write the table from the cells already in --out, train nothing (the others: not run)")
    recipes.add_argument("--bf16", type=bf16_flag, default="auto", help="bf16 autocast: auto, true or false (default: auto)")
    recipes.add_argument("--rl-config", type=json_object, default={},
                         help="every RL stage's config fields over agents.recipes.RL_DEFAULTS, as JSON, e.g. "
                         "'{\"temperature\": 0.3}' (default: none)")  # fmt: skip
    recipes.add_argument("--rl-split", default="train",
                         help="where the RL stages draw prompts: train (the warm start's own pairs) or validation "
                         "(prompts it never trained on) (default: train)")  # fmt: skip


def bench_main(args: argparse.Namespace) -> int:
    """``textgym bench``: every agent name is checked first (a bad one: one error line, exit code 2); exit
    code 1 when a cell failed (its error is in the tables and on stderr)."""
    import sys

    from agents.common.launch import checked_device

    device = str(checked_device(args.device))
    agents = [a.strip() for a in args.agents.split(",") if a.strip()]
    parse_envs(args.envs)
    check_agent_specs(agents)
    results = run_benchmark(args.envs, agents, episodes=args.episodes or 16, split=args.split, seed=args.seed,
                            model=args.model, out=args.out, device=device)  # fmt: skip
    print((Path(args.out) / "results.md").read_text())
    failed = [cell for cell in results["cells"] if cell.get("error")]
    for cell in failed:
        print(f"error in {cell['env']} / {cell['agent']}: {cell['error']}", file=sys.stderr)
    plots = ["main_metric.png"] + (["training_curves.png"] if (Path(args.out) / "training_curves.png").is_file() else [])
    print(f"wrote {args.out}/results.json, results.md, {', '.join(plots)}")
    return 1 if failed else 0

