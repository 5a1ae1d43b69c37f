"""``textgym train`` and ``textgym eval``: TextPPO from the command line.

``textgym/cli.py`` calls :func:`add_commands` on its argparse subparsers.
Heavy imports (torch, transformers) happen inside the command functions, so
``textgym list`` stays fast.

Examples::

    textgym train textgym/Copy-v0 --model tiny-random --timesteps 5000 --out runs/copy
    textgym train textgym/Translation-v0 --config run.yaml --out runs/fr --save-every 5
    textgym train textgym/Translation-v0 --resume runs/fr      # after a crash, a kill or Ctrl-C
    textgym eval textgym/Translation-v0 --checkpoint runs/fr --split test --episodes 64
    textgym eval textgym/Translation-v0 --model smollm2-135m-instruct   # zero-shot

``--out`` is a run directory of numbered checkpoints (``checkpoint-<updates>``,
each a Hugging Face model dir plus the training state), written every
``--save-every`` updates, on SIGINT/SIGTERM (after the current update; exit
code 0) and at the end.  ``--resume DIR`` continues from the newest checkpoint
that passes validation until ``--timesteps`` tokens in all (the run's settings
come from the checkpoint).  ``eval --checkpoint`` takes a run directory or one
checkpoint.

A ``--config`` YAML file may hold ``model``, ``timesteps``, ``num_envs``,
``seed``, ``env`` (``gym.make_vec`` keyword arguments) and ``ppo`` (TextPPO
keyword arguments, e.g. ``learning_rate``, ``kl_coef``); flags override it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

CONFIG_KEYS = ("model", "timesteps", "num_envs", "seed", "env", "ppo")


def add_commands(subparsers: Any) -> None:
    """Add the ``train`` and ``eval`` subcommands to an argparse ``add_subparsers()`` object."""
    train = subparsers.add_parser("train", help="train TextPPO on an env id", description="Train TextPPO on an env id.")
    train.add_argument("id", help="env id, e.g. textgym/Copy-v0")
    train.add_argument("--model", default=None, help="model alias, path or hub id (default: the env's default)")
    train.add_argument("--timesteps", type=int, default=None, help="generated tokens of the whole run (default 2048)")
    train.add_argument("--config", default=None, help="run.yaml with model/timesteps/num_envs/seed/env/ppo keys")
    train.add_argument("--out", default=None, help="run directory for the checkpoints (default runs/<env name>)")
    train.add_argument("--num-envs", type=int, default=None, help="episodes per rollout (default 8)")
    train.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    train.add_argument("--save-every", type=_positive_int, default=10, help="updates between checkpoints (default 10)")
    train.add_argument("--keep", type=_positive_int, default=2, help="checkpoints kept in the run directory (default 2)")
    train.add_argument("--resume", metavar="DIR", default=None,
                       help="continue the run in DIR from its newest valid checkpoint up to --timesteps (default: "
                       "the run's own target); writes there unless --out")
    train.set_defaults(func=train_command)

    ev = subparsers.add_parser("eval", help="score a checkpoint or model on a split", description="Score a model greedily.")
    ev.add_argument("id", help="env id, e.g. textgym/Translation-v0")
    source = ev.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a TextPPO save dir (or any Hugging Face checkpoint dir)")
    source.add_argument("--model", help="a model spec, for a zero-shot score")
    ev.add_argument("--split", default="test", choices=["train", "validation", "test"])
    ev.add_argument("--episodes", type=int, default=64, help="first N samples of the split (default 64)")
    ev.add_argument("--num-envs", type=int, default=16, help="batch size")
    ev.add_argument("--json", action="store_true", help="print the full result as JSON")
    ev.set_defaults(func=eval_command)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def load_run_config(path: str | None) -> dict[str, Any]:
    """The ``--config`` YAML as a dict, with unknown keys rejected."""
    if path is None:
        return {}
    import yaml

    from textgym.errors import ConfigError

    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"--config {path!r} is not a file")
    data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with keys {list(CONFIG_KEYS)}")
    unknown = sorted(set(data) - set(CONFIG_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown}; allowed: {list(CONFIG_KEYS)}")
    for key in ("env", "ppo"):
        if not isinstance(data.get(key, {}), dict):
            raise ConfigError(f"{path}: {key!r} must be a mapping of keyword arguments")
    return data


def _pick(flag: Any, config: dict[str, Any], key: str, default: Any) -> Any:
    return flag if flag is not None else config.get(key, default)


def train_command(args: argparse.Namespace) -> int:
    """``textgym train``; also under ``torchrun --nproc_per_node=N -m textgym train ...`` (data-parallel)."""
    from agents.distributed import record_errors

    return record_errors(_train)(args)


def _train(args: argparse.Namespace) -> int:
    import gymnasium as gym

    import textgym  # noqa: F401
    from agents import TextPPO
    from agents.persistence import list_checkpoints
    from textgym.errors import ConfigError

    config = load_run_config(args.config)
    out = Path(args.out or args.resume or Path("runs") / args.id.split("/")[-1])
    if args.resume is not None:
        if args.config is not None or args.model is not None or args.num_envs is not None or args.seed is not None:
            raise ConfigError("--resume takes the run's settings from its checkpoint; drop --config/--model/--num-envs/--seed")
        agent = TextPPO.load(args.resume)  # the newest valid checkpoint; broken ones are reported and skipped
        if agent.env.spec is None or agent.env.spec.id != args.id:
            raise ConfigError(f"--resume {args.resume!r} is a run of {getattr(agent.env.spec, 'id', None)!r}, not {args.id!r}")
        timesteps = args.timesteps if args.timesteps is not None else agent._total_timesteps  # the run's own target
        print(f"resuming {args.resume}: {agent.n_updates} updates, {agent.num_timesteps} tokens done of {timesteps}")
    else:
        if list_checkpoints(out):
            raise ConfigError(f"{str(out)!r} already holds checkpoints of a run; continue it with --resume {out} "
                              "or choose another --out")  # fmt: skip
        model = _pick(args.model, config, "model", None)
        env_kwargs = dict(config.get("env", {}))
        if model is not None:
            env_kwargs["model"] = model
        env = gym.make_vec(args.id, num_envs=int(_pick(args.num_envs, config, "num_envs", 8)), **env_kwargs)
        seed = int(_pick(args.seed, config, "seed", 0))
        timesteps = int(_pick(args.timesteps, config, "timesteps", 2048))
        agent = TextPPO("LMPolicy", env, model=model, seed=seed, **config.get("ppo", {}))
    remaining = timesteps - agent.num_timesteps
    if remaining > 0:
        agent.learn(total_timesteps=remaining, reset_num_timesteps=False, save_dir=out,
                    save_every=args.save_every, keep_checkpoints=args.keep)  # fmt: skip
    else:
        agent.save_checkpoint(out, args.keep)
    if not agent.dist.is_main:
        return 0
    last = agent.history[-1] if agent.history else {}
    print(f"saved {list_checkpoints(out)[-1]}: {agent.n_updates} updates, {agent.num_timesteps} tokens, "
          f"last reward {last.get('rollout/ep_rew_mean', float('nan')):.4f}, "
          f"KL to reference {last.get('rollout/kl_ref', float('nan')):.4f}")  # fmt: skip
    return 0


def eval_command(args: argparse.Namespace) -> int:
    import gymnasium as gym

    import textgym  # noqa: F401
    from agents.evaluation import evaluate_policy_on_env
    from agents.persistence import check_checkpoint, list_checkpoints, newest_checkpoint
    from agents.policies import LMPolicy

    if args.checkpoint is not None:
        path = Path(args.checkpoint)
        if (path / "textppo.json").is_file():
            check_checkpoint(path)
        elif list_checkpoints(path):
            path = newest_checkpoint(path)  # a run directory: its newest checkpoint that passes the checks
        elif not (path / "config.json").is_file():
            from agents.persistence import CheckpointError

            raise CheckpointError(f"--checkpoint {str(path)!r} has no config.json (not a Hugging Face checkpoint)")
        spec = str(path)
    else:
        spec = args.model
    env = gym.make_vec(args.id, num_envs=args.num_envs, split=args.split, model=spec)
    policy = LMPolicy(env.single_observation_space, env.single_action_space, lambda _: 0.0, model=spec,
                      action_mask=env.setup.action_mask)  # fmt: skip
    result = evaluate_policy_on_env(policy, env, args.episodes)
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
        return 0
    print(f"{args.id} [{args.split}] {spec}: {result['n']} samples, greedy")
    print(f"  reward     {result['reward_mean']:.4f}")
    for name, value in result["metrics"].items():
        print(f"  {name:<10} {value:.4f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m agents.cli train ...``) until textgym's CLI wires these commands."""
    parser = argparse.ArgumentParser(prog="textgym")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
