"""``textgym train``, ``eval``, ``bench`` and ``tune``: the agents from the command line.

textgym's CLI finds :func:`add_commands` through the ``textgym.commands`` entry
point (``pyproject.toml``) and calls it with its argparse subparsers.  Heavy
imports (torch, transformers) happen inside the command functions, so
``textgym list`` stays fast.

Examples::

    textgym train textgym/Copy-v0 --model tiny-random --timesteps 5000 --out runs/copy
    textgym train textgym/Copy-v0 --algo ppo --learning-rate 3e-4 --kl-coef 0.1 --no-reward-scaling
    textgym train --algo grpo --help                           # GRPO's flags, each with its doc and default
    textgym train textgym/Translation-v0 --config run.yaml --out runs/fr --save-every 5
    textgym train textgym/Translation-v0 --resume runs/fr      # after a crash, a kill or Ctrl-C
    textgym eval textgym/Translation-v0 --checkpoint runs/fr --split test --episodes 64
    textgym eval textgym/Translation-v0 --model smollm2-135m-instruct   # zero-shot
    textgym eval textgym/CodeGeneration-v0 --checkpoint runs/code --samples 10 --output answers.jsonl  # pass@1, pass@10
    textgym tune textgym/Copy-v0 --algo grpo --trials 20 --storage sqlite:///tune.db   # Optuna; see agents/tune.py

Every field of the chosen algorithm's config class (``PPOConfig``, ...) is a
flag, generated from the dataclass: ``learning_rate`` is ``--learning-rate``,
its type comes from the annotation (``bool`` fields are ``--x/--no-x``, a
``Literal`` lists its choices, an optional one also takes the word ``none``)
and its help is the string under the field plus its default.  ``--algo`` is
read before the flags are built (from the command line, else the
``--config`` file's ``algo``, else ``ppo``).

A ``--config`` YAML file uses the same names: ``algo``, ``model``,
``timesteps``, ``num_envs``, ``seed``, ``verbose``, ``env`` (``gym.make_vec``
keyword arguments) and the config fields themselves (``learning_rate: 1e-3``,
``kl_coef: 0.1``); flags override it.

``--out`` is a run directory of numbered checkpoints (``checkpoint-<updates>``,
each a Hugging Face model dir plus the training state), written every
``--save-every`` updates, on SIGINT/SIGTERM (after the current update; exit
code 0) and at the end, beside the run's records (``progress.csv``, TensorBoard
events, ``learning_curve.png``: ``--report-to``; ``best/``: ``--eval-every``,
see ``agents/common/records.py``).  ``--resume DIR`` continues, with any algorithm, from
the newest checkpoint that passes validation until ``--timesteps`` tokens in
all (the run's settings come from the checkpoint).  ``eval --checkpoint`` and
``bench --agents ppo:DIR`` (also ``grpo:``, ``rloo:``, ``nlpo:``, ``checkpoint:``) take a
run directory, one checkpoint or a model dir, resolved by
:func:`agents.common.checkpoints.resolve_checkpoint`, and print what they loaded.
"""

from __future__ import annotations

import argparse
import sys
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agents import ALGORITHMS
from agents.benchmark import add_bench_arguments
from agents.evaluation import add_eval_arguments
from agents.run_config import (
    DEFAULT_ALGO,
    DEFAULT_NUM_ENVS,
    DEFAULT_SEED,
    DEFAULT_TIMESTEPS,
    DEFAULT_VERBOSE,
    RUN_KEYS,
    add_config_arguments,
    algorithm_config,
    config_flags,
    run_settings,
)
from agents.sft import add_sft_arguments

DEFAULT_EVAL_EPISODES = 32
TRAIN_USAGE = "%(prog)s ID [--algo NAME] [--config YAML] [--model M | --init RUN] [--timesteps N] [--out DIR] [--FIELD VALUE ...]"
TUNE_USAGE = "%(prog)s ID [--algo NAME] [--trials N] [--timeout S] [--storage URL] [--out DIR] [--timesteps N] [--FIELD VALUE ...]"


# -- the commands ----------------------------------------------------------------------------------
def add_commands(subparsers: Any) -> None:
    """Add ``train``, ``eval``, ``bench`` and ``tune`` to an argparse ``add_subparsers()`` object (the entry point)."""
    _add_parser(subparsers, "train", _TrainParser, help="train an agent (PPO, GRPO, ...) on an env id",
                description="Train an agent on an env id. Every field of the algorithm's config is a flag: "
                "`textgym train --algo NAME --help` lists NAME's.", usage=TRAIN_USAGE)  # fmt: skip

    ev = _add_parser(subparsers, "eval", _CommandParser, help="score a checkpoint or model on a split",
                     description="Score a checkpoint or a model on a split of an env: greedily, or K sampled "
                     "answers per prompt (pass@k, best-of-k).")  # fmt: skip
    add_eval_arguments(ev, _positive_int)
    ev.set_defaults(func=eval_command)

    bench = _add_parser(subparsers, "bench", _CommandParser,
                        help="benchmark agents across envs: results.json, results.md, plots",
                        description="Benchmark agents across envs: results.json, results.md and plots.")  # fmt: skip
    add_bench_arguments(bench, _positive_int)
    bench.set_defaults(func=bench_command)

    sft = _add_parser(subparsers, "sft", _CommandParser, help="supervised warm start on an env's references",
                      description="Fine-tune the env's model on its train split's references (the env's own prompts, "
                      "loss on the answer tokens only); writes a run directory for `textgym train --init`, "
                      "`textgym eval --checkpoint` and `textgym bench`.")  # fmt: skip
    add_sft_arguments(sft, _positive_int)
    sft.set_defaults(func=sft_command)

    _add_parser(subparsers, "tune", _TuneParser, help="search an algorithm's hyperparameters with Optuna",
                description="Search an algorithm's hyperparameters with Optuna (TPE, median pruning on the validation "
                "reward); the study is resumable and shared by processes on one --storage. Writes best.yaml for "
                "`textgym train --config`, trials.csv and plots. A config field given as a flag or in --config is "
                "held fixed: `textgym tune --algo NAME --help` lists NAME's.", usage=TUNE_USAGE)  # fmt: skip


def _add_parser(subparsers: Any, name: str, parser_class: type, **kwargs: Any) -> argparse.ArgumentParser:
    """``subparsers.add_parser`` with our parser class (argparse takes one class for all subcommands)."""
    default = subparsers._parser_class
    subparsers._parser_class = parser_class
    try:
        return subparsers.add_parser(name, **kwargs)
    finally:
        subparsers._parser_class = default


class _CommandParser(argparse.ArgumentParser):
    """A bad argument is one line: ``textgym train: error: argument --n-epochs: ...`` (exit code 2)."""

    help_command = ""  # how to list the flags, for the error line (default: PROG --help)

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.help_command or self.prog + ' --help'})\n")


class _TrainParser(_CommandParser):
    """``textgym train``: the flags depend on ``--algo``, so each parse picks the algorithm first, then
    parses with that algorithm's full parser (built once; reading the config class imports the algorithm's
    module, hence torch: this waits until ``train`` is parsed, so ``textgym list`` stays fast)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._by_algo: dict[str, argparse.ArgumentParser] = {}

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:
        args = list(sys.argv[1:] if args is None else args)
        parser = self.for_algorithm(chosen_algorithm(args))
        namespace, extras = parser.parse_known_args(args, namespace)
        if extras:  # here, not in the parent parser: one error line, which names the algorithm's flag list
            parser.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras

    def for_algorithm(self, algo: str) -> argparse.ArgumentParser:
        """The full parser: run flags and one flag per field of ``algo``'s config class."""
        if algo not in self._by_algo:
            parser = _CommandParser(prog=self.prog, usage=self.usage, description=self.description,
                                    allow_abbrev=False)  # fmt: skip
            parser.help_command = f"{self.prog} --algo {algo} --help"
            _add_run_arguments(parser)
            add_config_arguments(parser, algorithm_config(algo), title=f"{algo} hyperparameters")
            self._by_algo[algo] = parser
        return self._by_algo[algo]

    def format_help(self) -> str:
        return self.for_algorithm(DEFAULT_ALGO).format_help()


class _TuneParser(_TrainParser):
    """``textgym tune``: its run flags (:func:`agents.tune.add_tune_arguments`) and, as for ``train``, one flag per
    field of ``--algo``'s config, whose value is then held fixed instead of searched."""

    def for_algorithm(self, algo: str) -> argparse.ArgumentParser:
        if algo not in self._by_algo:
            from agents.tune import add_tune_arguments

            parser = _CommandParser(prog=self.prog, usage=self.usage, description=self.description,
                                    allow_abbrev=False)  # fmt: skip
            parser.help_command = f"{self.prog} --algo {algo} --help"
            add_tune_arguments(parser, _positive_int, {"num_envs": DEFAULT_NUM_ENVS, "seed": DEFAULT_SEED})
            add_config_arguments(parser, algorithm_config(algo), title=f"{algo} hyperparameters held fixed (not searched)")
            parser.set_defaults(func=tune_command)
            self._by_algo[algo] = parser
        return self._by_algo[algo]


def chosen_algorithm(args: Sequence[str]) -> str:
    """The ``--algo`` of a train command line, else its ``--config`` file's ``algo``, else ``ppo`` (an unknown
    name picks ``ppo`` here: the full parser, or the config check, then reports it)."""
    algo = _last_value(args, "--algo")
    if algo is None:
        config = _last_value(args, "--config")
        if config is not None:
            try:
                import yaml

                algo = (yaml.safe_load(Path(config).read_text(encoding="utf-8")) or {}).get("algo")
            except Exception:  # a broken file is reported by load_run_config, with the details
                algo = None
    return algo if isinstance(algo, str) and algo in ALGORITHMS else DEFAULT_ALGO


def _last_value(args: Sequence[str], flag: str) -> str | None:
    value = None
    for i, arg in enumerate(args):
        if arg == "--":
            break
        if arg == flag and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    return value


def _add_run_arguments(train: argparse.ArgumentParser) -> None:
    train.add_argument("id", help="env id, e.g. textgym/Copy-v0")
    train.add_argument("--algo", choices=sorted(ALGORITHMS), default=None,
                       help=f"the algorithm; its flags are listed below (default: the config's algo, else {DEFAULT_ALGO})")  # fmt: skip
    train.add_argument("--config", metavar="YAML", default=None,
                       help=f"run.yaml with keys {', '.join(RUN_KEYS)} and the config fields below with underscores, "
                       "e.g. learning_rate: 1e-3; flags override it (default: none)")  # fmt: skip
    train.add_argument("--model", metavar="M", default=None, help="model alias, path or hub id (default: the env's default)")
    train.add_argument("--init", metavar="RUN", default=None,
                       help="start from this model instead of --model, also the KL reference: a `textgym sft` run "
                       "directory (its newest checkpoint), a checkpoint or a Hugging Face model dir")  # fmt: skip
    train.add_argument("--timesteps", metavar="N", type=_positive_int, default=None,
                       help=f"generated tokens of the whole run (default: {DEFAULT_TIMESTEPS}; with --resume the run's own target)")  # fmt: skip
    train.add_argument("--num-envs", metavar="N", type=_positive_int, default=None,
                       help=f"episodes per rollout batch (default: {DEFAULT_NUM_ENVS})")  # fmt: skip
    train.add_argument("--seed", metavar="N", type=int, default=None, help=f"random seed (default: {DEFAULT_SEED})")
    train.add_argument("--verbose", type=int, choices=[0, 1, 2], default=None,
                       help=f"0 a progress bar only, 1 also a log table per update (default: {DEFAULT_VERBOSE}; with "
                       "--resume the run's own)")  # fmt: skip
    train.add_argument("--out", metavar="DIR", default=None,
                       help="run directory for the checkpoints and the records (default: runs/<env name>, or the --resume DIR)")  # fmt: skip
    train.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto: CUDA when there is one)")
    train.add_argument("--save-every", metavar="N", type=_positive_int, default=10, help="updates between checkpoints (default: 10)")
    train.add_argument("--keep", metavar="N", type=_positive_int, default=2, help="checkpoints kept in the run directory (default: 2)")
    train.add_argument("--resume", metavar="DIR", default=None,
                       help="continue the run in DIR (any algorithm) from its newest valid checkpoint up to "
                       "--timesteps; the settings come from the checkpoint (default: a new run)")  # fmt: skip
    train.add_argument("--report-to", metavar="LIST", type=_report_to, default="csv,tensorboard",
                       help="records in the run directory, comma-separated: csv (progress.csv), tensorboard, trackio "
                       "(a local dashboard: trackio show), or none (default: csv,tensorboard)")  # fmt: skip
    train.add_argument("--eval-every", metavar="N", type=_positive_int, default=None,
                       help="evaluate greedily on the validation split every N updates, logged as eval/*, keeping the "
                       "best agent in <out>/best (default: no evaluation)")  # fmt: skip
    train.add_argument("--eval-episodes", metavar="M", type=_positive_int, default=None,
                       help=f"with --eval-every: the first M validation samples (default: {DEFAULT_EVAL_EPISODES})")
    train.set_defaults(func=train_command)


def _report_to(text: str) -> tuple[str, ...]:
    from agents.common.records import parse_report_to

    try:
        return parse_report_to(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err).removeprefix("report_to: ")) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}; expected a positive integer")
    return value


# -- train / eval / bench ------------------------------------------------------------------------------
def train_command(args: argparse.Namespace) -> int:
    """``textgym train``; also under ``torchrun --nproc_per_node=N -m textgym train ...`` (data-parallel)."""
    from agents.common.distributed import record_errors

    return record_errors(_train)(args)


def _train(args: argparse.Namespace) -> int:
    import gymnasium as gym

    import textgym  # noqa: F401
    from agents import algorithm, load_agent
    from agents.common.launch import checked_device
    from agents.common.persistence import list_checkpoints
    from textgym.errors import ConfigError

    checked_device(args.device)  # CUDA asked for where there is none: one line, before any loading
    device = args.device  # as given: under torchrun "auto"/"cuda" become this rank's GPU
    out = Path(args.out or args.resume or Path("runs") / args.id.split("/")[-1])
    if args.eval_episodes is not None and args.eval_every is None:
        raise ConfigError("--eval-episodes needs --eval-every N (evaluate every N updates)")
    if args.resume is not None:
        given = [f"--{k.replace('_', '-')}" for k in ("algo", "config", "model", "init", "num_envs", "seed") if getattr(args, k) is not None]
        given += [f"--{k.replace('_', '-')}" for k in config_flags(args)]
        if given:
            raise ConfigError(f"--resume takes the run's algorithm and settings from its checkpoint; drop {' '.join(given)}")
        verbose = {} if args.verbose is None else {"verbose": args.verbose}
        agent = load_agent(args.resume, device=device, **verbose)  # the newest valid checkpoint (broken ones skipped)
        if agent.env.spec is None or agent.env.spec.id != args.id:
            raise ConfigError(f"--resume {args.resume!r} is a run of {getattr(agent.env.spec, 'id', None)!r}, not {args.id!r}")
        timesteps = args.timesteps if args.timesteps is not None else agent.total_timesteps  # the run's own target
        by_update = args.timesteps is None and agent.total_updates is not None  # a run budgeted in updates
        target = f"{agent.total_updates} updates" if by_update else f"{timesteps} tokens"
        print(f"resuming {args.resume}: {agent.n_updates} updates, {agent.num_timesteps} tokens done of {target}")
    else:
        if list_checkpoints(out):
            raise ConfigError(f"{str(out)!r} already holds checkpoints of a run; continue it with --resume {out} "
                              "or choose another --out")  # fmt: skip
        run = run_settings(args)
        env = gym.make_vec(args.id, num_envs=run["num_envs"], **run["env"])
        timesteps, by_update = run["timesteps"], False
        agent = algorithm(run["algo"])("auto", env, model=run["model"], seed=run["seed"], verbose=run["verbose"],
                                       config=run["config"], device=device)  # fmt: skip
    remaining = agent.total_updates - agent.n_updates if by_update else timesteps - agent.num_timesteps
    if remaining > 0:
        evaluation = None
        if args.eval_every is not None:
            from agents.common.eval_callback import TextEvalCallback

            evaluation = TextEvalCallback(eval_every=args.eval_every, best_model_save_path=out / "best",
                                          n_eval_episodes=args.eval_episodes or DEFAULT_EVAL_EPISODES,
                                          verbose=agent.verbose)  # fmt: skip
        budget = {"updates": remaining} if by_update else {"total_timesteps": remaining}
        agent.learn(**budget, reset_num_timesteps=False, save_dir=out, save_every=args.save_every,
                    keep_checkpoints=args.keep, callback=evaluation, progress_bar=True, report_to=args.report_to)  # fmt: skip
    else:
        agent.save_checkpoint(out, args.keep)
    if not agent.dist.is_main:
        return 0
    last = agent.history[-1] if agent.history else {}
    print(_records_line(out, args.report_to))
    print(f"saved {list_checkpoints(out)[-1]}: {agent.name} ({type(agent).__name__}), {agent.n_updates} updates, "
          f"{agent.num_timesteps} tokens, last reward {last.get('rollout/ep_rew_mean', float('nan')):.4f}, "
          f"KL to reference {last.get('rollout/kl_ref', float('nan')):.4f}")  # fmt: skip
    return 0


def _records_line(out: Path, report_to: Sequence[str]) -> str:
    """Where the run's records are, for the user who looks for them later."""
    names = [name for name in ("progress.csv", "learning_curve.png", "best") if (out / name).exists()]
    names += [text for target, text in (("tensorboard", f"TensorBoard events (tensorboard --logdir {out})"),
                                        ("trackio", "a trackio run (trackio show)")) if target in report_to]  # fmt: skip
    return f"records in {out}: {', '.join(names) or 'checkpoints only'}"


def eval_command(args: argparse.Namespace) -> int:
    """``textgym eval`` (:func:`agents.evaluation.eval_main`)."""
    from agents.evaluation import eval_main

    return eval_main(args)


def bench_command(args: argparse.Namespace) -> int:
    """``textgym bench`` (:func:`agents.benchmark.bench_main`); with ``--recipes``, the trained-agent leaderboard
    (:func:`agents.recipes.recipes_main`)."""
    if args.recipes is not None:
        from agents.recipes import recipes_main

        return recipes_main(args)
    if args.table_only:
        from textgym.errors import ConfigError

        raise ConfigError("--table-only writes the trained-agent leaderboard's table: it goes with --recipes")
    from agents.benchmark import bench_main

    return bench_main(args)


def sft_command(args: argparse.Namespace) -> int:
    """``textgym sft`` (:func:`agents.sft.sft_main`)."""
    from agents.sft import sft_main

    return sft_main(args)


def tune_command(args: argparse.Namespace) -> int:
    """``textgym tune`` (:func:`agents.tune.tune_main`)."""
    from agents.tune import tune_main

    return tune_main(args)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m agents.cli train ...`` = ``textgym train ...`` (errors as one line, exit code 2)."""
    from textgym.errors import TextGymError

    parser = argparse.ArgumentParser(prog="textgym")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except TextGymError as err:
        print(f"textgym: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
