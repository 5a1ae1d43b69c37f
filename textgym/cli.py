"""The ``textgym`` command.

    textgym --version                 the installed version
    textgym list                      registered ids with one-line descriptions
    textgym info ID                   spaces, reward, data and split sizes of an id
    textgym play ID [--model M]       one episode with a model, printed readably
    textgym new-task NAME             a task skeleton (module + YAML entry + test)
    textgym serve ID [--port P]       the env as an OpenEnv server (HTTP/WebSocket), one answer per step

More commands come from installed packages through the ``textgym.commands``
entry point group: each entry is a function called with the argparse
subparsers.  This distribution's ``agents`` package adds ``train``, ``eval``
and ``bench`` that way (textgym itself never imports ``agents``).

An unknown env id, model or data problem is one line on stderr
(``textgym: error: ...``, naming the closest registered ids for a typo) and exit code 2.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Sequence
from typing import Any

import gymnasium as gym

import textgym
from textgym.errors import TextGymError

COMMANDS_GROUP = "textgym.commands"
"""Entry point group of the commands that other packages add (``agents`` adds train, eval and bench)."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` after every option's help, unless the help already says it or there is no default."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        help = action.help or ""
        if "%(default)" in help or "(default" in help or action.default in (None, argparse.SUPPRESS):
            return help
        return super()._get_help_string(action)


def unknown_id_message(env_id: str, known: Sequence[str]) -> str:
    """One line: the unknown id and the closest registered ones (difflib, case-insensitive)."""
    by_lower = {k.lower(): k for k in known}
    close = [by_lower[m] for m in difflib.get_close_matches(env_id.lower(), list(by_lower), n=3, cutoff=0.6)]
    if close:
        guess = " or ".join([", ".join(repr(c) for c in close[:-1]), repr(close[-1])] if len(close) > 1 else [repr(close[0])])
        return f"unknown env id {env_id!r}; registered: did you mean {guess}? (`textgym list` shows all {len(known)})"
    return f"unknown env id {env_id!r}; registered: none is close among {len(known)} ids (`textgym list` shows them)"


def _entry(env_id: str) -> textgym.registry.EnvEntry:
    if env_id not in textgym.ENVS:
        raise TextGymError(unknown_id_message(env_id, sorted(textgym.ENVS)))
    return textgym.ENVS[env_id]


def cmd_list(args: argparse.Namespace) -> int:
    width = max(len(i) for i in textgym.ENVS)
    for env_id, entry in sorted(textgym.ENVS.items()):
        source = "" if entry.source == "textgym" else f"  [{entry.source}]"
        print(f"{env_id:<{width}}  {entry.description}{source}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    entry = _entry(args.id)
    env = gym.make(args.id, model=args.model)
    setup = env.unwrapped.setup
    task = setup.task
    low, high = setup.reward.range
    reward = setup.reward.function or setup.reward.weights
    print(f"id:           {args.id}  (source: {entry.source})")
    print(f"description:  {entry.description}")
    print(f"task:         {type(task).__module__}:{type(task).__name__}")
    print(f"data:         {entry.data}")
    print(f"defaults:     {dict(entry.kwargs)}")
    print(f"action space: {env.action_space}")
    print(f"observation:  {env.observation_space}")
    guards = f" x {' x '.join(setup.reward.guards)}" if setup.reward.guards else ""
    print(f"reward:       {reward}{guards}  range [{low}, {high}]  main metric: {task.main_metric}")
    print(f"info metrics: {list(setup.reward.metric_names)}")
    print(f"action mask:  {'yes' if setup.action_mask is not None else 'no'}")
    sizes = task.splits_info()
    print("splits:       " + ", ".join(f"{k}={v}" for k, v in sizes.items()))
    return 0


def cmd_play(args: argparse.Namespace) -> int:
    from textgym.models import load_model
    from textgym.rollout import lm_responder, play_episodes

    _entry(args.id)
    envs = gym.make_vec(args.id, num_envs=args.episodes, model=args.model, split=args.split)
    model = load_model(args.model)
    respond = lm_responder(model, do_sample=not args.greedy, temperature=args.temperature, seed=args.seed)
    infos = play_episodes(envs, respond, seed=args.seed)
    for k, info in enumerate(infos):
        print(f"=== {args.id} episode {k} (sample {info['sample_id']}, seed {args.seed}) ===")
        print(f"prompt:    {info['prompt']}")
        print(f"output:    {info['generated_text']}")
        for ref in info["references"][:1]:
            print(f"reference: {ref}")
        metrics = ", ".join(f"{n}={v:.4f}" for n, v in info["metrics"].items())
        print(f"reward:    {info['reward']:.4f}  ({metrics})")
    return 0


def cmd_new_task(args: argparse.Namespace) -> int:
    from textgym.scaffold import new_task

    for path in new_task(args.name, args.out, args.namespace):
        print(f"wrote {path}")
    print(f"next: cd {args.out} && python -m pytest test_{args.name}.py")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    _entry(args.id)
    from textgym.integrations.openenv import Server  # without openenv: DependencyNotInstalled, one line

    server = Server(args.id, host=args.host, port=args.port, num_envs=args.num_envs, model=args.model, split=args.split)
    print(f"serving {args.id} on {server.url} (OpenEnv WebSocket sessions at /ws, at most {args.num_envs}; Ctrl-C stops)",
          flush=True)
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn has shut down gracefully, then re-raised the SIGINT
        pass
    return 0


MODEL_HELP = "model alias, local folder or hub id org/name (default: $TEXTGYM_MODEL, else smollm2-135m-instruct)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="textgym", description="Text tasks as Gymnasium environments.", formatter_class=HelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"textgym {textgym.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="registered env ids", description="Registered env ids with one-line descriptions.",
                       formatter_class=HelpFormatter)
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("info", help="spaces, reward, data and split sizes of an env id",
                       description="Spaces, reward, data and split sizes of an env id.", formatter_class=HelpFormatter)
    p.add_argument("id", help="env id, e.g. textgym/Copy-v0")
    p.add_argument("--model", default=None, help=MODEL_HELP + "; only its tokenizer is loaded")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("play", help="play episodes with a model and print them",
                       description="Play episodes with a model and print them.", formatter_class=HelpFormatter)
    p.add_argument("id", help="env id, e.g. textgym/Copy-v0")
    p.add_argument("--model", default=None, help=MODEL_HELP)
    p.add_argument("--seed", type=int, default=0, help="seed of the env and of sampling")
    p.add_argument("--split", default="test", help="data split: train, validation or test")
    p.add_argument("--episodes", type=int, default=1, help="episodes to play (in one batch)")
    p.add_argument("--temperature", type=float, default=0.7, help="sampling temperature")
    p.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling (default: sampling)")
    p.set_defaults(func=cmd_play)

    p = sub.add_parser("new-task", help="write a commented task skeleton (module, YAML entry, test)",
                       description="Write a commented task skeleton: module, YAML entry and a passing test.",
                       formatter_class=HelpFormatter)
    p.add_argument("name", help="lower-case identifier, e.g. arithmetic")
    p.add_argument("--out", default=".", help="folder to write into (default: . = here)")
    p.add_argument("--namespace", default="my", help="env id namespace (default: my -> my/Name-v0)")
    p.set_defaults(func=cmd_new_task)

    p = sub.add_parser("serve", help="serve an env as an OpenEnv server (one answer per step)",
                       description="Serve an env as an OpenEnv server: reset/step/state over HTTP and WebSocket, one "
                       "whole answer (text or token ids) per step, each session with its own env. Clients: "
                       "textgym.integrations.openenv.TextGymClient or any OpenEnv EnvClient. Needs "
                       "pip install 'textgym[serve]'.", formatter_class=HelpFormatter)
    p.add_argument("id", help="env id, e.g. textgym/Translation-v0")
    p.add_argument("--model", default=None, help=MODEL_HELP + "; only its tokenizer is loaded")
    p.add_argument("--split", default="train", help="data split: train, validation or test")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface; no auth)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (0: any free port, printed)")
    p.add_argument("--num-envs", type=int, default=8, help="concurrent sessions at most, each with its own env")
    p.set_defaults(func=cmd_serve)

    add_entry_point_commands(sub)
    return parser


def add_entry_point_commands(sub: Any, group: str = COMMANDS_GROUP) -> None:
    """Call every ``group`` entry point (``add_commands(subparsers)``), e.g. agents' train/eval/bench.

    One that fails to load is reported on stderr and skipped, so the other commands keep working.
    """
    from importlib.metadata import entry_points

    seen = set()
    for entry in entry_points(group=group):
        if entry.name in seen:  # the same distribution found twice on sys.path
            continue
        seen.add(entry.name)
        try:
            entry.load()(sub)
        except Exception as err:  # noqa: BLE001 - a broken plug-in must not break `textgym list`
            print(f"textgym: warning: commands of {entry.value!r} not loaded: {type(err).__name__}: {err}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (TextGymError, gym.error.UnregisteredEnv) as err:
        print(f"textgym: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:  # Ctrl-C, or a command that stopped on SIGTERM and says what it kept
        print(f"textgym: interrupted{': ' + str(stop) if str(stop) else ''}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
