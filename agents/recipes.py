"""The trained-agent leaderboard: train each recipe with the same budget on each task, score it on the test split.

A *recipe* is how an agent is made from the env's model:

* ``zero-shot``: the model as it is;
* ``sft``: a supervised warm start on the train split's references (:mod:`agents.sft`);
* ``ppo``, ``grpo``, ``rloo``, ``nlpo``: RL from the model (the algorithm's KL reference: the model);
* ``sft+ppo``, ``sft+grpo``, ...: RL from the warm start (the KL reference: the warm start).

Every recipe gets the same :class:`RecipeBudget`: ``sft_epochs`` passes over the train split for the warm start
(shared by ``sft`` and every ``sft+ALGO`` of a seed: trained once) and ``updates`` RL updates of ``num_envs``
episodes.  Each trained agent answers the whole test split greedily (or its first ``episodes`` samples); a
cell holds every ``info["metrics"]`` mean, the per-sample main metric (for paired comparisons), and, scored
under the ORIGINAL model (:func:`agents.evaluation.evaluate_policy_on_env`'s ``reference``): the answers'
perplexity (naturalness) and ``logratio`` (KL to the original model, estimated on the answers).  Several seeds
give several cells per (task, recipe); the table reports the mean over seeds, and the change against
zero-shot with its paired standard error over test samples (each sample's metric averaged over the seeds).

Cells and trained runs are stored in ``OUT/`` as they finish, so re-running with the same ``OUT`` resumes.

    textgym bench --recipes zero-shot,sft,ppo,sft+ppo --envs textgym/Translation-v0 --seeds 0,1,2 --out lb
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock

from textgym.errors import ConfigError

#: RL settings of every recipe's RL stage (``RecipeBudget.rl_config`` changes them), fields every algorithm has.
#: Measured on Translation-v0 from the warm start (seed 0, 12 updates of 32 episodes): lr 1e-5, one epoch per
#: update, kl 0.02 added +0.026 +- 0.010 chrF to the warm start; the earlier from-scratch demo settings (lr 2e-5,
#: 4 epochs, kl 0.01, 16 episodes) moved it -0.019 +- 0.028 (docs/warm_start.md).
RL_DEFAULTS: dict[str, Any] = {"learning_rate": 1e-5, "n_epochs": 1, "kl_coef": 0.02, "temperature": 0.7,
                               "group_size": 4, "n_rollouts": 1, "micro_batch_size": 4, "missing_eos_penalty": 0.1,
                               "reward_scaling": False}  # fmt: skip


def recipe_algorithms() -> list[str]:
    from agents import ALGORITHMS

    return list(ALGORITHMS)


def parse_recipes(recipes: str | Sequence[str]) -> list[str]:
    """Check recipe names: ``zero-shot``, ``sft``, ``ALGO`` or ``sft+ALGO`` (ALGO: ppo, grpo, rloo, nlpo, raft)."""
    names = [r.strip() for r in (recipes.split(",") if isinstance(recipes, str) else recipes) if r.strip()]
    allowed = ["zero-shot", "sft", *recipe_algorithms(), *(f"sft+{a}" for a in recipe_algorithms())]
    bad = [r for r in names if r not in allowed]
    if bad or not names:
        raise ConfigError(f"unknown recipe(s) {bad or names}; allowed: {', '.join(allowed)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"recipes named twice: {names}")
    return names


@dataclasses.dataclass
class RecipeBudget:
    """What every recipe gets (the same for all, so the table compares recipes, not budgets).

    Args:
        sft_epochs: warm-start passes over the train split.
        sft_config: more :class:`~agents.sft.SFTConfig` fields of the warm start (e.g. ``{"learning_rate": 5e-5}``).
        updates: RL updates, each of ``num_envs`` episodes (``num_envs // group_size`` prompts).
        num_envs: episodes per RL update.
        max_new_tokens: the env's answer length (None: the env's default).
        bf16: bf16 autocast of both stages (``"auto"``: :func:`agents.common.agent.use_bf16`).
        rl_config: algorithm config fields over :data:`RL_DEFAULTS`.
        env_kwargs: more ``gym.make`` keyword arguments of the env, in every stage (e.g. ``{"aspect": "approach"}``).
        rl_split: the split the RL stage draws its prompts from: ``train`` (the warm start's own pairs) or
            ``validation`` (prompts the warm start never trained on); never ``test``, which every recipe is scored on.
    """

    sft_epochs: int = 2
    updates: int = 12
    num_envs: int = 32
    max_new_tokens: int | None = None
    bf16: bool | str = "auto"
    sft_config: dict[str, Any] = dataclasses.field(default_factory=dict)
    rl_config: dict[str, Any] = dataclasses.field(default_factory=dict)
    env_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    rl_split: str = "train"

    def __post_init__(self) -> None:
        from textgym.data.base import check_split

        split = check_split(self.rl_split)  # "val", "dev": validation
        if split not in ("train", "validation"):
            raise ConfigError(f"rl_split must be train or validation, got {self.rl_split!r}: the test split is what "
                              "every recipe is scored on")  # fmt: skip
        self.rl_split = split

    def resolved(self, device: str) -> RecipeBudget:
        """This budget with ``bf16`` as the bool it means on ``device`` (``"auto"`` depends on the machine), so a
        stored cell records the dtype it was trained in."""
        from agents.common.agent import use_bf16
        from agents.common.launch import checked_device

        return dataclasses.replace(self, bf16=use_bf16(self.bf16, checked_device(device)))

    def sft_settings(self) -> Any:
        """The warm start's :class:`~agents.sft.SFTConfig`: its defaults, ``sft_config``, ``sft_epochs`` and ``bf16``."""
        from agents.sft import SFTConfig

        return SFTConfig(**{**self.sft_config, "epochs": self.sft_epochs, "bf16": self.bf16})

    def rl_settings(self, algo: str) -> Any:
        """The RL stage's config of ``algo``: :data:`RL_DEFAULTS`, ``bf16`` and ``rl_config`` (an unknown field is a
        :class:`ConfigError` naming the allowed ones)."""
        from agents import algorithm

        return algorithm(algo).config_class.build({**RL_DEFAULTS, "bf16": self.bf16, **self.rl_config})

    def describe(self) -> str:
        length = "the env's answer length" if self.max_new_tokens is None else f"{self.max_new_tokens} new tokens"
        rl = "".join(f", {k} {v}" for k, v in self.rl_config.items())  # what differs from RL_DEFAULTS, stated
        rl += "" if self.rl_split == "train" else f", prompts from the {self.rl_split} split"
        return (f"warm start: {self.sft_epochs} epochs over the train split; RL: {self.updates} updates x "
                f"{self.num_envs} episodes{rl}; {length}; bf16 {self.bf16}")  # fmt: skip


def _env_kwargs(budget: RecipeBudget, model: str | None) -> dict[str, Any]:
    out: dict[str, Any] = dict(budget.env_kwargs)
    if budget.max_new_tokens is not None:
        out["max_new_tokens"] = budget.max_new_tokens
    if model is not None:
        out["model"] = model
    return out


def warm_start(env_id: str, seed: int, budget: RecipeBudget, out: Path, model: str | None, device: str,
               progress: bool = False) -> Path:  # fmt: skip
    """The ``sft`` stage of ``seed`` (trained once, then reused): its final checkpoint.  A stored warm start made
    with other settings is deleted and trained again."""
    from agents.common.checkpoints import list_checkpoints
    from agents.sft import comparable_config, sft_meta, train_sft
    from textgym.models import default_model

    run_dir = out / "runs" / env_id.replace("/", "_") / f"sft-seed{seed}"
    config = budget.sft_settings()
    done = list_checkpoints(run_dir)
    meta = sft_meta(done[-1]) if done else None
    wanted = {"config": comparable_config(dataclasses.asdict(config)), "env_kwargs": _env_kwargs(budget, None),
              "base_model": str(model or default_model()), "epochs": config.epochs}  # fmt: skip  # epochs done: complete
    stored = {**meta, "config": comparable_config(meta.get("config"))} if meta is not None else None
    if stored is not None and all(stored.get(k) == v for k, v in wanted.items()):
        return done[-1]  # trained by an earlier run with these settings
    shutil.rmtree(run_dir, ignore_errors=True)  # another budget's warm start: its checkpoints and records go
    summary = train_sft(env_id, model=model, out=run_dir, config=config, seed=seed, device=device,
                        env_kwargs=_env_kwargs(budget, None), progress=progress)  # fmt: skip
    return Path(summary["checkpoint"])


def rl_stage(env_id: str, algo: str, start: str | None, seed: int, budget: RecipeBudget, run_dir: Path,
             device: str, progress: bool = False) -> dict[str, Any]:  # fmt: skip
    """Train ``algo`` from ``start`` (a model spec; its own KL reference) for ``budget.updates`` updates; returns the
    saved checkpoint and the training figures."""
    import gymnasium as gym

    from agents import algorithm
    from agents.common.checkpoints import list_checkpoints
    from agents.sft import sft_meta

    cls = algorithm(algo)
    config = budget.rl_settings(algo)
    # what the run depends on but its length (a warm start by its sft.json): a run stored with these continues
    # (more updates), any other is deleted and trained again
    rl_fields = {k: v for k, v in dataclasses.asdict(budget).items() if k != "updates" and k not in _WARM_START_FIELDS}
    origin = {"start": start, "start_meta": sft_meta(start) if start else None, "seed": seed, "budget": rl_fields}
    origin = json.loads(json.dumps(origin, default=str))
    origin_file = run_dir / "origin.json"
    stored = json.loads(origin_file.read_text()) if origin_file.is_file() else None
    if stored is not None:  # fields added since it was stored: at their defaults, as it was trained
        stored["budget"] = {k: v for k, v in stored_budget(stored.get("budget")).items() if k in rl_fields}
    if run_dir.exists() and stored != origin:
        shutil.rmtree(run_dir)  # trained from another start or with other settings
    run_dir.mkdir(parents=True, exist_ok=True)
    origin_file.write_text(json.dumps(origin, indent=1))
    done = list_checkpoints(run_dir)
    if done:
        agent = cls.load(str(run_dir), device=device)
    else:
        env = gym.make_vec(env_id, num_envs=budget.num_envs, split=budget.rl_split, **_env_kwargs(budget, start))
        agent = cls("auto", env, model=start, seed=seed, verbose=0, config=config, device=device)
    if agent.n_updates < budget.updates:
        agent.learn(updates=budget.updates - agent.n_updates, reset_num_timesteps=False,
                    save_dir=run_dir, save_every=5, keep_checkpoints=1, progress_bar=progress)  # fmt: skip
    checkpoint = agent.save_checkpoint(run_dir, 1)
    if agent.n_updates < budget.updates:  # learn() returned early: SIGINT/SIGTERM. Never score a short run as the budget's
        raise KeyboardInterrupt(f"{run_dir}: stopped by a signal after {agent.n_updates} of {budget.updates} updates "
                                "(saved); the same command resumes it")  # fmt: skip
    last = agent.history[-1] if agent.history else {}
    return {"checkpoint": str(checkpoint), "updates": agent.n_updates, "train_tokens": agent.num_timesteps,
            "train_kl_to_start": last.get("rollout/kl_ref"), "train_reward_last": last.get("rollout/ep_rew_mean")}  # fmt: skip


def evaluate_model(env_id: str, model: str, original: str | None, budget: RecipeBudget, episodes: int | None,
                   device: str) -> dict[str, Any]:  # fmt: skip
    """Greedy answers of ``model`` (a model dir or spec) on the test split, scored by the env and under the original
    model (perplexity, logratio)."""
    import gymnasium as gym

    from agents.common.launch import checked_device
    from agents.common.lm import load_causal_lm
    from agents.common.policies import policy_for
    from agents.evaluation import evaluate_policy_on_env

    where = checked_device(device)
    env = gym.make_vec(env_id, num_envs=16, split="test", **_env_kwargs(budget, model))
    policy = policy_for(model, env.text_spec.vocab_size, env.text_spec.action_mask).to(where)
    reference = load_causal_lm(original).to(where).eval() if original != model else policy.lm
    result = evaluate_policy_on_env(policy, env, episodes, reference=reference)
    main = env.text_spec.main_metric
    return {"main_metric": main, "n": result["n"], "metrics": result["metrics"], "naturalness": result["naturalness"],
            "tokens_mean": result["tokens_mean"],
            "records": [{k: r[k] for k in ("prompt", "output", "references", "reward", "metrics")} for r in result["records"]]}  # fmt: skip


def run_recipe_cell(env_id: str, recipe: str, seed: int, budget: RecipeBudget, out: Path, model: str | None,
                    episodes: int | None, device: str, progress: bool = False) -> dict[str, Any]:  # fmt: skip
    """Train ``recipe`` (seed ``seed``) and evaluate it: one leaderboard cell."""
    from textgym.models import default_model

    original = model or default_model()
    stages = recipe.split("+")
    cell: dict[str, Any] = {"stages": {}}
    start: str = original
    if stages[0] == "sft":
        started = time.perf_counter()
        start = str(warm_start(env_id, seed, budget, out, model, device, progress))
        cell["stages"]["sft"] = {"checkpoint": start, "seconds": time.perf_counter() - started}
        stages = stages[1:]
    if stages and stages[0] != "zero-shot":
        started = time.perf_counter()
        run_dir = out / "runs" / env_id.replace("/", "_") / f"{recipe}-seed{seed}"
        trained = rl_stage(env_id, stages[0], start, seed, budget, run_dir, device, progress)
        cell["stages"][stages[0]] = {**trained, "seconds": time.perf_counter() - started}
        start = trained["checkpoint"]
    cell.update(evaluate_model(env_id, start, original, budget, episodes, device))
    return cell


def not_applicable(env_id: str, recipe: str, model: str | None) -> str | None:
    """Why ``recipe`` cannot run on ``env_id`` (None when it can): a warm start needs single-turn answers."""
    import gymnasium as gym

    if recipe.split("+")[0] == "sft":
        turns = gym.make(env_id, model=model).unwrapped.text_spec.max_turns
        if turns > 1:
            return f"no warm start for a multi-turn task (max_turns={turns})"
    return None


#: The budget fields each kind of recipe depends on: a cell scored under another value of the others is reused
#: (a recipe with a warm start also depends on the warm start's whole config, ``settings["sft"]``).
_STAGE_FIELDS = {"zero-shot": ("max_new_tokens", "env_kwargs"), "sft": ("max_new_tokens", "env_kwargs")}
#: The budget fields of the warm start alone: an RL recipe's cell compares the warm start by its whole resolved
#: config (``settings["sft"]``) instead, and an RL recipe without one does not depend on them.
_WARM_START_FIELDS = ("sft_epochs", "sft_config")


def same_cell_settings(stored: dict[str, Any] | None, settings: dict[str, Any], recipe: str) -> bool:
    """Whether a stored cell of ``recipe`` was made with what ``settings`` would make it with: the model, the
    number of test episodes and the budget fields the recipe uses (``zero-shot`` ignores the training budget;
    ``sft`` ignores the RL one, so more ``--updates`` retrain only the RL recipes); a warm start is compared by
    its :func:`~agents.sft.comparable_config`.

    >>> a = {"model": None, "episodes": None, "budget": dataclasses.asdict(RecipeBudget(updates=12)), "sft": {}}
    >>> b = {**a, "budget": dataclasses.asdict(RecipeBudget(updates=24))}
    >>> same_cell_settings(a, b, "sft"), same_cell_settings(a, b, "sft+ppo")
    (True, False)
    """
    from agents.sft import comparable_config

    if not stored or any(stored.get(k) != settings[k] for k in ("model", "episodes")):
        return False
    if recipe.split("+")[0] == "sft" and comparable_config(stored.get("sft")) != comparable_config(settings["sft"]):
        return False
    budget = stored_budget(stored.get("budget"))
    fields = _STAGE_FIELDS.get(recipe) or [k for k in settings["budget"] if k not in _WARM_START_FIELDS]  # an RL stage
    return all(budget.get(k) == settings["budget"][k] for k in fields)


def stored_budget(budget: dict[str, Any] | None) -> dict[str, Any]:
    """A stored :class:`RecipeBudget` dict with the fields added since it was stored at their defaults (which is
    what it was trained with), so that adding a field does not make every stored cell and run stale."""
    return {**dataclasses.asdict(RecipeBudget()), **(budget or {})}


def _stored_cell(path: Path, settings: dict[str, Any], recipe: str) -> dict[str, Any] | None:
    """The cell stored at ``path`` if it was made with ``settings`` and did not fail."""
    if not path.is_file():
        return None
    cell = json.loads(path.read_text())
    return cell if same_cell_settings(cell.get("settings"), settings, recipe) and not cell.get("error") else None


def _new_cell(path: Path, env_id: str, recipe: str, seed: int, settings: dict[str, Any], budget: RecipeBudget,
              out: Path, model: str | None, episodes: int | None, device: str, progress: bool) -> dict[str, Any]:  # fmt: skip
    """Train and score one cell and store it at ``path`` (a skipped one is not stored; a failed one is, with its
    error, and made again next time)."""
    from agents.benchmark import store_cell

    cell: dict[str, Any] = {"env": env_id, "recipe": recipe, "seed": seed, "settings": settings}
    skip = not_applicable(env_id, recipe, model)
    if skip is not None:
        return {**cell, "skipped": skip, "error": None}
    return store_cell(cell, path, lambda: run_recipe_cell(env_id, recipe, seed, budget, out, model, episodes, device,
                                                          progress))  # fmt: skip


def run_recipes(envs: str | Sequence[str], recipes: str | Sequence[str], *, seeds: Sequence[int] = (0,),
                budget: RecipeBudget | None = None, episodes: int | None = None, model: str | None = None,
                out: str | Path = "leaderboard", device: str = "auto", progress: bool = True,
                train: bool = True) -> dict[str, Any]:  # fmt: skip
    """Train and score every (env, recipe, seed); write ``results.json``, ``results.md`` and ``leaderboard.png``.

    ``zero-shot`` is deterministic (greedy): it is scored once, whatever the seeds.  A recipe that cannot run on
    a task (:func:`not_applicable`) is recorded as skipped; a cell that raises is recorded with its error and the
    others go on.  ``train=False`` writes the table from the cells already stored in ``out`` (made with these
    settings) and runs nothing: the rest are listed as not run.
    """
    from tqdm.auto import tqdm

    from agents.benchmark import _versions, parse_envs

    env_ids = parse_envs(envs)
    names = parse_recipes(recipes)
    if "zero-shot" not in names:
        names = ["zero-shot", *names]  # the baseline every change is measured against
    budget = (budget or RecipeBudget()).resolved(device)
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds must be distinct integers, got {seeds}")
    out = Path(out).resolve()  # RL runs store their start model by path: absolute, so they resume from any cwd
    (out / "cells").mkdir(parents=True, exist_ok=True)
    settings = {"budget": dataclasses.asdict(budget), "episodes": episodes, "model": model,
                "sft": dataclasses.asdict(budget.sft_settings())}  # the warm start's whole config, defaults included
    for name in names:  # a bad rl_config field fails now, not after the warm starts have trained
        if name not in ("zero-shot", "sft"):
            budget.rl_settings(name.removeprefix("sft+"))
    # zero-shot is greedy and untrained, the same for every seed: one cell (seed 0) whatever the seeds
    jobs = [(e, r, s) for e in env_ids for r in names for s in ([0] if r == "zero-shot" else seeds)]
    cells = []
    bar = tqdm(total=len(jobs), desc="leaderboard (env x recipe x seed)", disable=not progress)
    for env_id, recipe, seed in jobs:
        name = f"{env_id.replace('/', '_')}__{recipe}__seed{seed}"
        path = out / "cells" / f"{name}.json"
        cell = _stored_cell(path, settings, recipe)
        if cell is None and train:
            bar.set_postfix_str(f"{env_id} / {recipe} / seed {seed}")
            # one process makes a cell; another bench on this --out (other seeds, say) waits for it, then reads it
            (out / ".locks").mkdir(exist_ok=True)
            with FileLock(out / ".locks" / f"{name}.lock"):
                cell = _stored_cell(path, settings, recipe) or _new_cell(path, env_id, recipe, seed, settings, budget,
                                                                         out, model, episodes, device, progress)  # fmt: skip
        if cell is not None:
            cells.append(cell)
        bar.update(1)
    bar.close()
    results = {"settings": {"envs": env_ids, "recipes": names, "seeds": seeds, **settings, "budget_text": budget.describe()},
               "versions": _versions(), "cells": cells, "table": leaderboard(cells, env_ids, names)}  # fmt: skip
    (out / "results.json").write_text(json.dumps(results, indent=1, ensure_ascii=False))
    (out / "results.md").write_text(leaderboard_markdown(results))
    plot_leaderboard(results, out / "leaderboard.png")
    return results


# -- the table ---------------------------------------------------------------------------------------------
GUARD_COLUMNS = ("target_language", "source_copy", "copy_score", "words", "distinct_2")


def leaderboard(cells: Sequence[dict[str, Any]], env_ids: Sequence[str], recipes: Sequence[str]) -> list[dict[str, Any]]:
    """One row per (env, recipe): the main metric's mean over seeds (and its spread), the change against zero-shot
    (and, for ``sft+ALGO``, against ``sft``: what the RL stage added) with its paired standard error over test
    samples, the naturalness and guard figures (means over seeds)."""
    rows = []
    for env_id in env_ids:
        base = next((c for c in cells if c["env"] == env_id and c["recipe"] == "zero-shot" and not c.get("error")), None)
        for recipe in recipes:
            mine = [c for c in cells if c["env"] == env_id and c["recipe"] == recipe and not c.get("error")
                    and not c.get("skipped")]
            errors = [c["error"] for c in cells if c["env"] == env_id and c["recipe"] == recipe and c.get("error")]
            row: dict[str, Any] = {"env": env_id, "recipe": recipe, "seeds": [c["seed"] for c in mine], "errors": errors}
            skipped = [c["skipped"] for c in cells if c["env"] == env_id and c["recipe"] == recipe and c.get("skipped")]
            if skipped:
                row["skipped"] = skipped[0]
            elif not mine and not errors:
                row["not_run"] = True
            if mine:
                main = mine[0]["main_metric"]
                per_seed = [float(np.mean(sample_scores(c))) for c in mine]
                row.update(main_metric=main, mean=float(np.mean(per_seed)), per_seed=per_seed,
                           logratio=float(np.mean([c["naturalness"]["logratio"] for c in mine])),
                           perplexity=float(np.mean([c["naturalness"]["perplexity"] for c in mine])),
                           tokens=float(np.mean([c["tokens_mean"] for c in mine])))  # fmt: skip
                row["guards"] = {k: float(np.mean([c["metrics"][k] for c in mine])) for k in GUARD_COLUMNS
                                 if all(k in c["metrics"] for c in mine)}  # fmt: skip
                if base is not None and recipe != "zero-shot":
                    row.update(paired_change(mine, [base], "change"))
                warm = [c for c in cells if c["env"] == env_id and c["recipe"] == "sft" and "records" in c
                        and c["seed"] in {m["seed"] for m in mine}]  # the warm starts these runs started from
                if recipe.startswith("sft+") and warm:
                    row.update(paired_change(mine, warm, "change_vs_sft"))
            rows.append(row)
    return rows


def sample_scores(cell: dict[str, Any]) -> list[float]:
    """A cell's main metric per test sample, in the test split's order (the reward where the metric is none)."""
    main = cell["main_metric"]
    return [float(r["metrics"].get(main, r.get("reward", math.nan))) for r in cell["records"]]


def paired_change(cells: Sequence[dict[str, Any]], baseline: Sequence[dict[str, Any]], key: str) -> dict[str, float]:
    """``{key: mean change, key_se: its standard error}`` of ``cells`` against ``baseline``, paired by test sample:
    each sample's metric averaged over each side's seeds, then the mean and standard error of the differences
    (empty when the two sides did not answer the same samples)."""
    mine = [sample_scores(c) for c in cells]
    theirs = [sample_scores(c) for c in baseline]
    if len({len(x) for x in mine + theirs}) != 1:
        return {}
    diff = np.mean(mine, axis=0) - np.mean(theirs, axis=0)
    se = float(diff.std(ddof=1) / math.sqrt(len(diff))) if len(diff) > 1 else math.nan
    return {key: float(diff.mean()), f"{key}_se": se}


def leaderboard_markdown(results: dict[str, Any]) -> str:
    s = results["settings"]
    which = "all samples" if s["episodes"] is None else f"first {s['episodes']} samples"
    lines = [f"Budget: {s['budget_text']}. Seeds {s['seeds']}; greedy answers on the test split ({which}); change: against "
             "zero-shot (and vs sft: what the RL stage added), ± its paired standard error over test samples; KL: "
             "log pi - log original on the answers; "
             "perplexity of the answers under the original model.", "",
             "| task | recipe | main metric (mean over seeds) | per seed | change vs zero-shot | change vs sft | "
             "KL to original | perplexity | tokens | guards |", "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for row in results["table"]:
        if "skipped" in row:
            lines.append(f"| {row['env'].split('/')[-1]} | {row['recipe']} | skipped: {row['skipped']} | | | | | | | |")
            continue
        if row.get("not_run"):
            lines.append(f"| {row['env'].split('/')[-1]} | {row['recipe']} | not run yet | | | | | | | |")
            continue
        if "mean" not in row:
            lines.append(f"| {row['env']} | {row['recipe']} | error: {'; '.join(row['errors'])[:100]} | | | | | | | |")
            continue
        change, vs_sft = (f"{row[k]:+.3f} ± {row[k + '_se']:.3f}" if k in row else "—" for k in ("change", "change_vs_sft"))
        guards = ", ".join(f"{k} {v:.2f}" for k, v in row["guards"].items()) or "—"
        seeds = ", ".join(f"{v:.3f}" + ("" if row["recipe"] == "zero-shot" else f" (seed {s})")
                          for s, v in zip(row["seeds"], row["per_seed"]))  # fmt: skip
        lines.append(f"| {row['env'].split('/')[-1]} | {row['recipe']} | {row['main_metric']} {row['mean']:.3f} | {seeds} | "
                     f"{change} | {vs_sft} | {row['logratio']:.2f} | {row['perplexity']:.2f} | {row['tokens']:.1f} | {guards} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def plot_leaderboard(results: dict[str, Any], path: Path) -> None:
    from agents.benchmark import plot_grouped_bars

    envs, recipes = results["settings"]["envs"], results["settings"]["recipes"]
    by = {(r["env"], r["recipe"]): r for r in results["table"]}
    bars = {}
    for recipe in recipes:
        rows = [by.get((e, recipe), {}) for e in envs]
        bars[recipe] = ([r.get("mean", math.nan) for r in rows],
                        [float(np.std(r["per_seed"])) if r.get("per_seed") else 0.0 for r in rows])  # fmt: skip
    plot_grouped_bars(envs, bars, "test main metric (seeds: mean ± std)", path)


# -- textgym bench --recipes -----------------------------------------------------------------------------

def recipes_main(args: Any) -> int:
    """``textgym bench --recipes``: the trained-agent leaderboard."""
    import sys

    from agents.benchmark import parse_envs
    from agents.common.launch import checked_device

    if args.agents != "random,zero-shot" or args.split != "test":
        raise ConfigError("--recipes trains its own agents and scores them on the test split; drop --agents and --split")
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
    parse_envs(args.envs)
    parse_recipes(args.recipes)
    device = str(checked_device(args.device))
    budget = RecipeBudget(sft_epochs=args.sft_epochs, updates=args.updates, num_envs=args.num_envs,
                          max_new_tokens=args.max_new_tokens, bf16=args.bf16, rl_config=args.rl_config,
                          rl_split=args.rl_split)  # fmt: skip
    results = run_recipes(args.envs, args.recipes, seeds=seeds, budget=budget, episodes=args.episodes, model=args.model,
                          out=args.out, device=device, train=not args.table_only)  # fmt: skip
    print((Path(args.out) / "results.md").read_text())
    failed = [c for c in results["cells"] if c.get("error")]
    for cell in failed:
        print(f"error in {cell['env']} / {cell['recipe']} / seed {cell['seed']}: {cell['error']}", file=sys.stderr)
    print(f"wrote {args.out}/results.json, results.md, leaderboard.png")
    return 1 if failed else 0
