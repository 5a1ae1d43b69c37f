"""``textgym tune``: hyper-parameter search with Optuna, the way rl-zoo3 does it for Stable-Baselines3.

Each trial samples the hyperparameters of one algorithm from its search space (:data:`SEARCH_SPACES`,
one function per name in :data:`agents.ALGORITHMS`), trains a fresh agent for ``--timesteps`` tokens
exactly as ``textgym train`` builds one (``agents.run_config.run_settings``), and scores it greedily on the
validation split.  As in rl-zoo3:

* the sampler is TPE (multivariate), random for the first ``--startup-trials`` trials;
* every ``--eval-every`` updates the validation reward is reported to the trial
  (:class:`TrialEvalCallback`, rl-zoo3's ``TrialEvalCallback`` on :class:`~agents.common.eval_callback.
  TextEvalCallback`) and ``optuna.pruners.MedianPruner`` stops a trial that is below the median of
  the earlier trials at the same update (never at its first evaluation, never in the first
  ``--startup-trials`` trials); a trial whose training hits non-finite values is pruned too;
* the study lives in an Optuna storage (default: ``sqlite:///<out>/study.db``), created or loaded by
  name, so rerunning the command continues it, and several processes given the same storage and
  study name share its trials (each takes the next one).

``--trials N`` is the number of finished (complete or pruned) trials the *study* should reach, not
the number this process adds (rl-zoo3's ``--n-trials`` counts per process): rerunning a killed
command then finishes the same search instead of starting N more, and N processes on one storage
stop together (they may overshoot by the trials still running when the N-th finishes).  A trial
that fails is not counted and is retried with the same parameters: one stopped by SIGINT/SIGTERM at
once, one whose process was killed once another process finds it stale (no heartbeat for 60 s).

Fields given on the command line (``--kl-coef 0.1``) or in ``--config`` are held fixed and left out
of the search.  ``--out`` receives, after every trial, ``best.yaml`` (the best complete trial's full
run settings: ``textgym train ID --config best.yaml`` trains it, with ``--timesteps`` for a longer
run) and ``trials.csv``, and at the end Optuna's ``optimization_history.png`` and
``param_importances.png`` (PED-ANOVA, Optuna's default; it needs 2 complete trials).

Example::

    textgym tune textgym/Copy-v0 --model tiny-random --trials 20 --timeout 3600
    textgym tune textgym/Copy-v0 --model tiny-random --trials 20 &   # a second worker on the same study
    textgym train textgym/Copy-v0 --config runs/tune/Copy-v0-ppo/best.yaml --timesteps 40000
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import socket
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from agents.common.eval_callback import TextEvalCallback
from agents.run_config import DEFAULT_ALGO, FIELD_DEST, RUN_KEYS, config_flags, load_run_config, run_settings

DEFAULT_TRIALS = 20
DEFAULT_TRIAL_TIMESTEPS = 4000  # a trial on the tiny model takes seconds on a CPU, on a 135M model minutes
DEFAULT_EVAL_EVERY = 2
DEFAULT_EVAL_EPISODES = 32
DEFAULT_STARTUP_TRIALS = 5  # rl-zoo3: 10 random trials before TPE; LM trials cost more, so fewer
HEARTBEAT_S, GRACE_S = 10, 60  # a trial without a heartbeat for GRACE_S is stale: failed, then retried once
GROUP_SIZES = (2, 4, 8, 16)
FINISHED = ("COMPLETE", "PRUNED")  # the trial states --trials counts
SETTINGS_ATTR = "textgym_settings"  # study user attribute: what every trial trains with (checked on reruns)
BEST_YAML, TRIALS_CSV = "best.yaml", "trials.csv"
PLOTS = ("optimization_history.png", "param_importances.png")


# -- the search spaces -----------------------------------------------------------------------------------
class SearchSpace:
    """What one trial samples: ``trial.suggest_*`` for each field that is not held fixed.

    ``params`` collects the sampled values by config field name (Optuna's parameter names are the field
    names, so a trial's ``params`` are config fields as they are).  ``learning_rate`` is the centre of
    the learning-rate range (the engine's own choice for the model size, see ``OnPolicyConfig``; None
    when the learning rate is fixed) and ``num_envs`` bounds the group sizes.

    Example:
        >>> import optuna
        >>> space = SearchSpace(optuna.create_study().ask(), fixed={"n_epochs": 2}, num_envs=8, learning_rate=1e-3)
        >>> sample_ppo(space)
        >>> "n_epochs" in space.params, 1e-4 <= space.params["learning_rate"] <= 1e-2
        (False, True)
    """

    def __init__(self, trial: Any, fixed: dict[str, Any], num_envs: int, learning_rate: float | None) -> None:
        self.trial, self.fixed, self.num_envs, self.learning_rate = trial, fixed, num_envs, learning_rate
        self.params: dict[str, Any] = {}

    def float(self, name: str, low: float, high: float, log: bool = False) -> None:
        if name not in self.fixed:
            self.params[name] = self.trial.suggest_float(name, low, high, log=log)

    def choice(self, name: str, choices: Sequence[Any]) -> None:
        if name not in self.fixed:
            self.params[name] = self.trial.suggest_categorical(name, list(choices))

    def group_sizes(self) -> list[int]:
        """The group sizes >= 2 that divide num_envs (a group algorithm needs one)."""
        return [g for g in GROUP_SIZES if self.num_envs % g == 0]


def sample_on_policy(space: SearchSpace) -> None:
    """The engine's knobs (every algorithm): rl-zoo3's learning rate (log-uniform, here a decade either side
    of the engine's choice for the model size), epochs and gradient clipping, and LM RL's KL coefficient
    (log-uniform around the 0.04-0.05 defaults) and sampling temperature."""
    if space.learning_rate is not None:
        space.float("learning_rate", space.learning_rate / 10, space.learning_rate * 10, log=True)
    space.float("kl_coef", 0.005, 0.5, log=True)
    space.choice("n_epochs", [1, 2, 4, 8])
    space.choice("max_grad_norm", [0.3, 0.5, 1.0, 2.0, 5.0])
    space.float("temperature", 0.7, 1.3)


def sample_ppo(space: SearchSpace) -> None:
    """PPO (rl-zoo3's ``sample_ppo_params``): clip range, GAE lambda, entropy and value coefficients; gamma
    stays 1 (the score comes at the end of the text) and the batch sizes stay with the budget."""
    sample_on_policy(space)
    space.choice("clip_range", [0.1, 0.2, 0.3, 0.4])
    space.choice("gae_lambda", [0.9, 0.95, 0.98, 1.0])
    space.float("ent_coef", 1e-6, 1e-2, log=True)
    space.float("vf_coef", 0.05, 1.0, log=True)


def sample_group(space: SearchSpace) -> None:
    """GRPO and RLOO: the group size (completions per prompt, dividing num_envs) and the ratio clip."""
    sample_on_policy(space)
    space.choice("group_size", space.group_sizes())
    space.choice("epsilon_low", [0.1, 0.2, 0.3])


def sample_grpo(space: SearchSpace) -> None:
    """GRPO: the group's and the clip's, with the advantage scaling and the loss aggregation."""
    sample_group(space)
    space.choice("scale_rewards", ["group", "batch", "none"])
    space.choice("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])


def sample_rloo(space: SearchSpace) -> None:
    """RLOO: the group's and the clip's, with or without whitened advantages."""
    sample_group(space)
    space.choice("normalize_advantages", [True, False])


def sample_nlpo(space: SearchSpace) -> None:
    """NLPO: PPO's, with the masking policy's nucleus and refresh interval (RL4LMs: 0.9 and 20 mostly)."""
    sample_ppo(space)
    space.float("mask_top_p", 0.5, 1.0)
    space.choice("mask_update_interval", [5, 10, 20, 40])


def sample_raft(space: SearchSpace) -> None:
    """RAFT: the group size (completions per prompt; the best one is kept: a sampled keep_best could equal it)."""
    sample_on_policy(space)
    space.choice("group_size", space.group_sizes())


SEARCH_SPACES: dict[str, Callable[[SearchSpace], None]] = {
    "ppo": sample_ppo,
    "grpo": sample_grpo,
    "rloo": sample_rloo,
    "nlpo": sample_nlpo,
    "raft": sample_raft,
}
"""Algorithm name (as in :data:`agents.ALGORITHMS`) -> the function that samples its fields."""


# -- reporting to the trial ----------------------------------------------------------------------------------
class TrialEvalCallback(TextEvalCallback):
    """rl-zoo3's ``TrialEvalCallback`` for text agents: each evaluation's mean validation reward goes to
    ``trial.report`` (step = the update count) and, when the trial's pruner says so, training stops
    after the update with ``pruned`` set.  The other arguments are :class:`TextEvalCallback`'s."""

    def __init__(self, trial: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.trial, self.pruned = trial, False

    def on_update_end(self) -> bool:
        evaluations = len(self.evaluations_results)
        go_on = super().on_update_end()
        if len(self.evaluations_results) > evaluations:
            self.trial.report(self.last_mean_reward, int(self.model.n_updates))
            if self.trial.should_prune():
                self.pruned = True
                return False
        return go_on

    def final_reward(self) -> float:
        """The validation reward of the agent as trained: the last evaluation's when it followed the last
        update, else a new evaluation (reported too)."""
        if not self.evaluations_timesteps or self.evaluations_timesteps[-1] != self.model.num_timesteps:
            from agents.evaluation import evaluate_policy_on_env

            result = evaluate_policy_on_env(self.model.policy, self.eval_env, self.n_eval_episodes,
                                            deterministic=self.deterministic, seed=self.seed)  # fmt: skip
            self.last_mean_reward = float(result["reward_mean"])
            self.evaluations_timesteps.append(self.model.num_timesteps)
            self.trial.report(self.last_mean_reward, int(self.model.n_updates))
        return float(self.last_mean_reward)


class _Interrupted(Exception):
    """SIGINT/SIGTERM during a trial: the trial fails (its parameters are queued again) and the search stops."""


class _NoTracebackForInterrupts(logging.Filter):
    """Optuna logs a failed trial with its traceback; for a signal the one-line reason says it all."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], (_Interrupted, KeyboardInterrupt)):
            record.exc_info = record.exc_text = None
        return True


# -- the command ----------------------------------------------------------------------------------------------
def add_tune_arguments(
    parser: argparse.ArgumentParser, positive_int: Callable[[str], int], train_defaults: dict[str, Any]
) -> None:
    """The run flags of ``textgym tune`` (the CLI adds one flag per config field, held fixed when given);
    ``train_defaults``: ``textgym train``'s ``num_envs`` and ``seed``, which the trials share."""
    from agents import ALGORITHMS

    parser.add_argument("id", help="env id, e.g. textgym/Copy-v0")
    parser.add_argument("--algo", choices=sorted(ALGORITHMS), default=None,
                        help=f"the algorithm whose hyperparameters are searched (default: the config's algo, else {DEFAULT_ALGO})")  # fmt: skip
    parser.add_argument("--trials", metavar="N", type=positive_int, default=DEFAULT_TRIALS,
                        help="finished (complete or pruned) trials the study should reach, counting those already in "
                        f"the storage: a rerun or a second process continues to N, not N more (default: {DEFAULT_TRIALS})")  # fmt: skip
    parser.add_argument("--timeout", metavar="S", type=positive_int, default=None,
                        help="start no trial after S seconds; the running one finishes (default: none)")
    parser.add_argument("--timesteps", metavar="N", type=positive_int, default=None,
                        help=f"generated tokens per trial (default: the config's, else {DEFAULT_TRIAL_TIMESTEPS})")
    parser.add_argument("--out", metavar="DIR", default=None,
                        help=f"{BEST_YAML}, {TRIALS_CSV}, {', '.join(PLOTS)} and the default storage "
                        "(default: runs/tune/<env name>-<algo>)")  # fmt: skip
    parser.add_argument("--storage", metavar="URL", default=None,
                        help="Optuna storage URL, e.g. sqlite:///tune.db or postgresql://...; processes given the "
                        "same storage and study share its trials (default: sqlite:///<out>/study.db)")  # fmt: skip
    parser.add_argument("--study-name", metavar="NAME", default=None,
                        help="the study in the storage, created or continued (default: <id>-<algo>)")
    parser.add_argument("--config", metavar="YAML", default=None,
                        help=f"a `textgym train` run.yaml (keys {', '.join(RUN_KEYS)} and config fields); its config "
                        "fields are held fixed (default: none)")  # fmt: skip
    parser.add_argument("--model", metavar="M", default=None, help="model alias, path or hub id (default: the env's default)")
    parser.add_argument("--num-envs", metavar="N", type=positive_int, default=None,
                        help=f"episodes per rollout batch (default: the config's, else {train_defaults['num_envs']})")
    parser.add_argument("--seed", metavar="N", type=int, default=None,
                        help=f"the training seed of every trial (default: the config's, else {train_defaults['seed']})")
    parser.add_argument("--eval-every", metavar="N", type=positive_int, default=DEFAULT_EVAL_EVERY,
                        help="updates between the validation evaluations reported to the pruner; a trial is also "
                        f"scored after its last update (default: {DEFAULT_EVAL_EVERY})")  # fmt: skip
    parser.add_argument("--eval-episodes", metavar="M", type=positive_int, default=DEFAULT_EVAL_EPISODES,
                        help=f"the first M validation samples, scored greedily (default: {DEFAULT_EVAL_EPISODES})")
    parser.add_argument("--pruner", choices=["median", "none"], default="median",
                        help="median: stop a trial below the median of earlier trials at the same update (default: median)")
    parser.add_argument("--startup-trials", metavar="N", type=positive_int, default=DEFAULT_STARTUP_TRIALS,
                        help=f"random trials before TPE models the results and before the pruner prunes (default: {DEFAULT_STARTUP_TRIALS})")  # fmt: skip
    parser.add_argument("--sampler-seed", metavar="N", type=int, default=None,
                        help="seed of the sampler, for a repeatable search in one process (default: none, so that "
                        "parallel workers sample different trials)")  # fmt: skip
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto: CUDA when there is one)")


def tune_main(args: argparse.Namespace) -> int:
    """``textgym tune``: create or continue the study, run trials until it has ``--trials`` finished ones
    (or ``--timeout``), and write the results to ``--out``.  Each trial's settings come from ``textgym train``'s
    :func:`agents.run_config.run_settings`, so its agent is exactly what ``textgym train --config <that trial's
    YAML>`` makes."""
    import gymnasium as gym

    import textgym  # noqa: F401
    from agents.common.launch import checked_device

    optuna = _optuna()
    checked_device(args.device)
    given = load_run_config(args.config, args.algo)
    fixed = {**{k: v for k, v in given.items() if k not in RUN_KEYS}, **config_flags(args)}
    timesteps = args.timesteps or given.get("timesteps") or DEFAULT_TRIAL_TIMESTEPS
    run = run_settings(_trial_args(args, {}, timesteps))  # every setting checked before anything loads
    algo = run["algo"]
    env = gym.make_vec(args.id, num_envs=run["num_envs"], **run["env"])  # an unknown id fails here, in one line
    model = run["model"] or env.text_spec.model
    env.close()
    space = _space_bounds(algo, fixed, run["num_envs"], model)
    out = Path(args.out or Path("runs") / "tune" / f"{args.id.split('/')[-1]}-{algo}")
    out.mkdir(parents=True, exist_ok=True)
    name = args.study_name or f"{args.id}-{algo}"
    url = args.storage or f"sqlite:///{(out / 'study.db').resolve()}"
    settings = {"id": args.id, "algo": algo, "model": model, "timesteps": timesteps, "num_envs": run["num_envs"],
                "seed": run["seed"], "env": run["env"], "fixed": fixed, "eval_every": args.eval_every,
                "eval_episodes": args.eval_episodes, "learning_rate_centre": space["learning_rate"]}  # fmt: skip
    settings = json.loads(json.dumps(settings, default=repr))  # as the storage returns it
    study = _open_study(optuna, args, name, url, settings)
    target = args.trials
    done = _count(study, FINISHED)
    searched = SearchSpace(_FirstChoice(), fixed, space["num_envs"], space["learning_rate"])
    SEARCH_SPACES[algo](searched)
    print(f"study {name!r} in {url}: {done} finished trial(s) of {target}; searching "
          f"{', '.join(searched.params) or 'nothing (every field is fixed)'}", flush=True)  # fmt: skip

    def settings_for(params: dict[str, Any]) -> dict[str, Any]:
        return run_settings(_trial_args(args, params, timesteps))

    def objective(trial: Any) -> float:
        return _objective(trial, args, settings_for, fixed, space, settings)

    def after_trial(study: Any, _trial: Any) -> None:
        _write_tables(study, out, settings)

    interrupted = False
    if done < target:
        quiet = _NoTracebackForInterrupts()
        logger = logging.getLogger("optuna.study._optimize")  # where Optuna logs failed trials
        logger.addFilter(quiet)
        try:
            study.optimize(objective, timeout=args.timeout, gc_after_trial=True,
                           callbacks=[optuna.study.MaxTrialsCallback(target, states=_states(FINISHED)), after_trial])  # fmt: skip
        except (_Interrupted, KeyboardInterrupt):
            interrupted = True
        finally:
            logger.removeFilter(quiet)
    _write_tables(study, out, settings)
    _summary(study, out, url, name, target, _write_plots(study, out))
    if interrupted:
        print(f"interrupted: rerun the same command to continue the study to {target} trials (the stopped trial "
              "is queued to run again)")  # fmt: skip
    return 0


def _optuna() -> Any:
    try:
        import optuna
    except ImportError as err:
        from textgym.errors import DependencyNotInstalled

        raise DependencyNotInstalled(f"textgym tune needs Optuna: pip install 'textgym[tune]' ({err})") from None
    return optuna


def _trial_args(args: argparse.Namespace, params: dict[str, Any], timesteps: int | None) -> argparse.Namespace:
    """``args`` as a ``textgym train`` namespace for ``agents.run_config.run_settings``: the sampled ``params``
    are config-field flags (they override nothing: fixed fields are never sampled)."""
    trial_args = argparse.Namespace(**vars(args))
    trial_args.timesteps, trial_args.verbose = timesteps, 0
    for key, value in params.items():
        setattr(trial_args, FIELD_DEST + key, value)
    return trial_args


def _space_bounds(algo: str, fixed: dict[str, Any], num_envs: int, model: Any) -> dict[str, Any]:
    """What the search space depends on: the learning-rate centre (the engine's choice for the model's size;
    the model is loaded once for it unless the learning rate is fixed) and num_envs (group sizes)."""
    from agents import algorithm
    from agents.common.config import AUTO_LR_LARGE, AUTO_LR_SMALL, SMALL_MODEL_PARAMS
    from textgym.errors import ConfigError

    config_class = algorithm(algo).config_class
    if algo not in SEARCH_SPACES:
        raise ConfigError(f"textgym tune has no search space for {algo!r}; it has {sorted(SEARCH_SPACES)}")
    sizes = [g for g in GROUP_SIZES if num_envs % g == 0]
    if config_class.min_group_size > 1 and "group_size" not in fixed and not sizes:
        raise ConfigError(f"{algo} samples group_size from {list(GROUP_SIZES)}, and none divides num_envs={num_envs}; "
                          "choose --num-envs (e.g. 8) or fix --group-size")  # fmt: skip
    centre = None
    if "learning_rate" not in fixed:
        from agents.common.lm import load_causal_lm

        size = sum(p.numel() for p in load_causal_lm(model).parameters())
        centre = AUTO_LR_SMALL if size < SMALL_MODEL_PARAMS else AUTO_LR_LARGE
    return {"learning_rate": centre, "num_envs": num_envs}


class _FirstChoice:
    """A stand-in trial that answers every suggestion with its first option (to list what a space samples)."""

    def suggest_float(self, name: str, low: float, high: float, log: bool = False) -> float:
        return low

    def suggest_categorical(self, name: str, choices: list[Any]) -> Any:
        return choices[0]


def _open_study(optuna: Any, args: argparse.Namespace, name: str, url: str, settings: dict[str, Any]) -> Any:
    """Create the study, or load it when the storage has one of that name (then its settings must match)."""
    from sqlalchemy.exc import ArgumentError, DBAPIError

    from textgym.errors import ConfigError

    startup = args.startup_trials
    sampler = optuna.samplers.TPESampler(n_startup_trials=startup, multivariate=True, seed=args.sampler_seed)
    pruner = optuna.pruners.NopPruner()
    if args.pruner == "median":  # the warm-up: never at a trial's first evaluation
        pruner = optuna.pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=args.eval_every + 1)
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}  # writers wait for SQLite's lock
    for attempt in range(5):  # workers started together race to create the tables: the losers retry
        try:
            with warnings.catch_warnings():  # the heartbeat (a killed worker's trial is retried) is "experimental"
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = optuna.storages.RDBStorage(
                    url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                    heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1))
            study = optuna.create_study(study_name=name, storage=storage, direction="maximize", sampler=sampler,
                                        pruner=pruner, load_if_exists=True)  # fmt: skip
            break
        except ArgumentError as err:
            raise ConfigError(f"--storage {url!r} is not a database URL ({err}); e.g. sqlite:///tune.db") from None
        except DBAPIError as err:  # "table ... already exists", a UNIQUE constraint, a locked or unopenable file
            if attempt == 4:
                raise ConfigError(f"--storage {url!r}: {' '.join(str(err.orig).split())}") from None
            time.sleep(0.5 * (attempt + 1))
    stored = study.user_attrs.get(SETTINGS_ATTR)
    if stored is None:
        study.set_user_attr(SETTINGS_ATTR, settings)
    elif stored != settings:
        changed = [f"{k}={stored.get(k)!r} (now {v!r})" for k, v in settings.items() if stored.get(k) != v]
        raise ConfigError(f"study {name!r} in {url} was run with {', '.join(changed)}; rerun it with its settings, "
                          "or start another study (--study-name, --out or --storage)")  # fmt: skip
    return study


def _objective(trial: Any, args: argparse.Namespace, settings_for: Callable[[dict[str, Any]], dict[str, Any]],
               fixed: dict[str, Any], space: dict[str, Any], settings: dict[str, Any]) -> float:  # fmt: skip
    """One trial: sample, train as ``textgym train`` would (``settings_for(params)``: its run settings with the
    sampled fields), report the evaluations, return the final one."""
    import gymnasium as gym
    import optuna

    from agents import algorithm
    from agents.common.persistence import NonFiniteError

    algo = settings["algo"]
    sampled = SearchSpace(trial, fixed, space["num_envs"], space["learning_rate"])
    SEARCH_SPACES[algo](sampled)
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    trial.set_user_attr("config", _train_yaml(settings, sampled.params))
    run = settings_for(sampled.params)
    env = gym.make_vec(args.id, num_envs=run["num_envs"], **run["env"])
    try:
        agent = algorithm(algo)("auto", env, model=run["model"], seed=run["seed"], verbose=0,
                                config=run["config"], device=args.device)  # fmt: skip
        callback = TrialEvalCallback(trial, eval_every=args.eval_every, n_eval_episodes=args.eval_episodes, verbose=0)
        try:
            agent.learn(total_timesteps=run["timesteps"], callback=callback)
        except NonFiniteError as err:  # rl-zoo3 prunes a trial whose random hyperparameters give NaNs
            raise optuna.TrialPruned(f"non-finite training: {err}") from None
        if agent.stopped_by_signal:  # learn() finished the update in progress and returned
            raise _Interrupted(f"trial {trial.number} stopped by a signal")
        if callback.pruned:
            raise optuna.TrialPruned(f"validation reward {callback.last_mean_reward:.4f} at update {agent.n_updates}")
        return callback.final_reward()
    except (_Interrupted, KeyboardInterrupt):  # the trial fails; the same parameters come next time
        trial.study.enqueue_trial(sampled.params, user_attrs={"retry_of": trial.number})
        raise
    finally:
        env.close()


def _train_yaml(settings: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """A trial's run as a ``textgym train --config`` mapping: the run keys, the fixed fields, the sampled ones."""
    data: dict[str, Any] = {"algo": settings["algo"]}
    if settings["model"] is not None:
        data["model"] = settings["model"]
    data.update(timesteps=settings["timesteps"], num_envs=settings["num_envs"], seed=settings["seed"])
    env = {k: v for k, v in settings["env"].items() if k != "model"}  # run_settings puts the model there
    if env:
        data["env"] = env
    return {**data, **settings["fixed"], **params}


# -- results -----------------------------------------------------------------------------------------------------
def _states(names: Sequence[str]) -> tuple[Any, ...]:
    from optuna.trial import TrialState

    return tuple(TrialState[n] for n in names)


def _count(study: Any, names: Sequence[str]) -> int:
    return len(study.get_trials(deepcopy=False, states=_states(names)))


def _best(study: Any) -> Any:
    return study.best_trial if _count(study, ("COMPLETE",)) else None


def _write_tables(study: Any, out: Path, settings: dict[str, Any]) -> None:
    """``best.yaml`` and ``trials.csv`` from the storage (every worker's trials), each replaced atomically."""
    import yaml

    trials = study.get_trials(deepcopy=False)
    names = sorted({k for t in trials for k in t.params})
    rows = []
    for t in trials:
        ended = t.datetime_complete and t.datetime_start
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() if ended else None
        rows.append({"number": t.number, "state": t.state.name, "value": t.value,
                     "updates_reported": max(t.intermediate_values, default=None), "seconds": seconds,
                     "worker": t.user_attrs.get("worker"), **{f"params_{k}": t.params.get(k) for k in names}})  # fmt: skip
    columns = ["number", "state", "value", "updates_reported", "seconds", "worker", *[f"params_{k}" for k in names]]
    with _replacing(out / TRIALS_CSV) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows(rows)
    best = _best(study)
    if best is None:
        return
    finished = _count(study, FINISHED)
    header = (f"# textgym tune {settings['id']}: the best of {finished} finished trials of study {study.study_name!r}\n"
              f"# trial {best.number}: validation reward {best.value:.4f} (greedy, first {settings['eval_episodes']} "
              f"samples) after {settings['timesteps']} tokens of training\n"
              f"# train it: textgym train {settings['id']} --config {BEST_YAML} [--timesteps N] [--out DIR]\n")  # fmt: skip
    with _replacing(out / BEST_YAML) as tmp:
        tmp.write_text(header + yaml.safe_dump(best.user_attrs["config"], sort_keys=False), encoding="utf-8")


def _write_plots(study: Any, out: Path) -> list[str]:
    """Optuna's optimization history and parameter importances as PNGs: the lines to print, one a plot."""
    import matplotlib
    import matplotlib.pyplot as plt
    from optuna.exceptions import ExperimentalWarning
    from optuna.visualization import matplotlib as plots

    complete = _count(study, ("COMPLETE",))
    notes = []
    drawings = ((PLOTS[0], plots.plot_optimization_history, 1), (PLOTS[1], plots.plot_param_importances, 2))
    for name, draw, needs in drawings:
        if complete < needs:
            notes.append(f"{name}: needs {needs} complete trial(s), the study has {complete}")
            continue
        try:
            with warnings.catch_warnings(), matplotlib.rc_context():  # optuna sets the ggplot style globally
                warnings.simplefilter("ignore", ExperimentalWarning)
                axes = draw(study)
                figure = axes.figure
                figure.set_size_inches(8, 5)
                figure.tight_layout()
                with _replacing(out / name) as tmp:
                    figure.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
                plt.close(figure)
            notes.append(f"wrote {out / name}")
        except (ValueError, RuntimeError) as err:  # e.g. importances of trials that all scored the same
            notes.append(f"{name}: not drawn ({' '.join(str(err).split())})")
    return notes


class _replacing:
    """``with _replacing(path) as tmp:`` write ``tmp``; it replaces ``path`` at once on success (workers sharing
    an output directory never see half a file)."""

    def __init__(self, path: Path) -> None:
        self.path, self.tmp = path, path.with_name(f".{path.name}.{os.getpid()}.tmp")

    def __enter__(self) -> Path:
        return self.tmp

    def __exit__(self, kind: Any, *_: Any) -> None:
        if kind is None:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)


def _summary(study: Any, out: Path, url: str, name: str, target: int, plot_lines: list[str]) -> None:
    counts = {s: _count(study, (s,)) for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")}
    print(f"study {name!r} in {url}: {counts['COMPLETE'] + counts['PRUNED']} finished trial(s) of {target} "
          f"({', '.join(f'{n} {s.lower()}' for s, n in counts.items() if n)})")  # fmt: skip
    best = _best(study)
    if best is None:
        print("no complete trial yet: no best.yaml")
    else:
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in best.params.items())
        print(f"best: trial {best.number}, validation reward {best.value:.4f}: {params}")
    for line in [f"wrote {out / n}" for n in (BEST_YAML, TRIALS_CSV) if (out / n).exists()] + plot_lines:
        print(line)
    if best is not None:
        print(f"train it: textgym train {study.user_attrs[SETTINGS_ATTR]['id']} --config {out / BEST_YAML}")
