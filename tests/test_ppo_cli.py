"""`textgym train` / `eval`: flags generated from each algorithm's config, the YAML, train -> eval -> resume."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from agents import ALGORITHMS, algorithm
from agents.common.config import OnPolicyConfig, field_default, field_docs
from agents.ppo import PPOConfig
from agents.run_config import FIELD_DEST, config_flags, load_run_config, run_settings
from textgym.cli import build_parser, main
from textgym.errors import ConfigError

ROOT = Path(__file__).parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


@dataclass
class FakeConfig(OnPolicyConfig):
    """A config with the field types other algorithms use (Literal, Literal | bool, optional float)."""

    loss_type: Literal["dapo", "grpo"] = "dapo"
    """Loss aggregation."""
    scale_rewards: Literal["group", "batch"] | bool = "group"
    """Advantage scaling: per group, per batch, or off."""
    epsilon_high: float | None = None
    """Upper clip (None = epsilon_low)."""


class FakeAlgo:
    name = "fake"
    config_class = FakeConfig


@pytest.fixture
def fake_algorithm(monkeypatch):
    monkeypatch.setitem(ALGORITHMS, "fake", (__name__, "FakeAlgo", "FakeConfig"))


@pytest.fixture
def wide_help(monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # one help entry per line


def parse(argv: list[str]):
    return build_parser().parse_args(argv)


def help_text(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 0
    return capsys.readouterr().out


def help_entries(text: str) -> dict[str, str]:
    """``{"--flag": its help entry}``: the flag's line and the indented lines under it, whitespace collapsed."""
    entries: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("  -"):
            flag = line.split()[0].rstrip(",")
            entries[flag] = line
        elif line.startswith("   ") and entries:
            entries[flag] += line
    return {flag: " ".join(entry.split()) for flag, entry in entries.items()}


# -- the commands reach textgym through the entry point, without torch ------------------------------------
def test_textgym_cli_never_imports_agents() -> None:
    tree = ast.parse((ROOT / "textgym" / "cli.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
        assert not [n for n in names if n == "agents" or n.startswith("agents.")], ast.dump(node)


def test_list_is_fast_and_the_agent_commands_come_from_the_entry_point() -> None:
    code = (
        "import sys; from textgym.cli import build_parser, main; "
        "p = build_parser(); print(sorted(p._subparsers._group_actions[0].choices)); "
        "main(['list']); print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    lines = out.stdout.splitlines()
    assert all(f"'{c}'" in lines[0] for c in ("train", "eval", "bench", "list")), lines[0]
    assert lines[-1] == "False False"


# -- flags generated from the config dataclass --------------------------------------------------------------
@pytest.mark.parametrize("algo", sorted(ALGORITHMS))
def test_help_lists_every_config_field_with_its_doc_and_default(algo: str, capsys) -> None:
    text = help_text(["train", "--algo", algo, "--help"], capsys)
    config_class = algorithm(algo).config_class
    docs = field_docs(config_class)
    entries = help_entries(text)
    for name in config_class.names():
        entry = entries.get("--" + name.replace("_", "-"), "")
        assert entry, f"--{name} missing from `train --algo {algo} --help`"
        assert docs[name][:40] in entry and f"(default: {field_default(config_class, name)})" in entry, entry
    assert "(default: 40000" in entries["--timesteps"] and "(default: 8)" in entries["--num-envs"]


def test_ppo_help_shows_kl_coef(capsys, wide_help) -> None:
    text = help_text(["train", "textgym/Copy-v0", "--help"], capsys)  # ppo is the default algorithm
    assert "--kl-coef FLOAT" in text and "Weight of the KL penalty against the frozen reference model" in text
    assert "(default: 0.05)" in text and "--reward-scaling, --no-reward-scaling" in text
    assert "--kl-estimator {k1,k2,k3}" in text and "--learning-rate FLOAT|none" in text


@pytest.mark.parametrize("command", ["eval", "bench", "info", "play", "new-task"])
def test_every_subcommand_help_shows_defaults(command: str, capsys) -> None:
    assert "(default: " in " ".join(help_text([command, "--help"], capsys).split())


def test_bench_help_names_every_algorithm(capsys, wide_help) -> None:
    """The checkpoint kinds of ``--agents`` and the RL recipes of ``--recipes`` are the registered algorithms."""
    entries = help_entries(help_text(["bench", "--help"], capsys))
    for flag in ("--agents", "--recipes"):
        entry = entries[flag]
        assert all(f" {name}," in entry or f" {name};" in entry for name in ALGORITHMS), entry


def test_flags_parse_into_the_config() -> None:
    args = parse(["train", "textgym/Copy-v0", "--learning-rate", "3e-4", "--no-reward-scaling", "--kl-estimator", "k3",
                  "--clip-range-vf", "none", "--n-epochs", "2", "--lora"])  # fmt: skip
    flags = config_flags(args)
    assert flags == {"learning_rate": 3e-4, "reward_scaling": False, "kl_estimator": "k3", "clip_range_vf": None,
                     "n_epochs": 2, "lora": True}  # fmt: skip
    config = PPOConfig.build(flags)
    assert (config.learning_rate, config.reward_scaling, config.kl_coef) == (3e-4, False, 0.05)  # kl_coef: untouched
    assert not [k for k in vars(parse(["train", "textgym/Copy-v0"])) if k.startswith(FIELD_DEST)]  # none given, none set


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--n-epochs", "0"], ["--n-epochs", "0", "positive integer"]),
        (["--kl-estimator", "k9"], ["--kl-estimator", "'k9'", "k1, k2, k3"]),
        (["--learning-rate", "fast"], ["--learning-rate", "'fast'", "a number or none"]),
        (["--top-p", "2"], ["--top-p", "2", "(0.0, 1.0]"]),
        (["--timesteps", "-5"], ["--timesteps", "'-5'", "positive integer"]),
        (["--algo", "a2c"], ["--algo", "'a2c'", "'ppo'"]),
        (["--no-such-flag", "1"], ["unrecognized arguments: --no-such-flag 1", "textgym train --algo ppo --help"]),
    ],
)
def test_a_bad_value_is_one_line_and_exit_2(argv: list[str], expected: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["train", "textgym/Copy-v0", *argv])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("textgym train: error: ") and all(word in err for word in expected), err


def test_another_algorithm_gets_its_own_flags(fake_algorithm, tmp_path: Path, capsys, wide_help) -> None:
    text = help_text(["train", "--algo", "fake", "--help"], capsys)
    assert "--loss-type {dapo,grpo}" in text and "--epsilon-high FLOAT|none" in text and "--kl-coef" in text
    assert "--clip-range " not in text  # PPO's own fields are not GRPO's
    args = parse(["train", "textgym/Copy-v0", "--algo", "fake", "--scale-rewards", "false", "--epsilon-high", "0.28"])
    assert config_flags(args) == {"scale_rewards": False, "epsilon_high": 0.28}
    with pytest.raises(SystemExit):
        parse(["train", "textgym/Copy-v0", "--loss-type", "grpo"])  # a fake flag under ppo
    assert "unrecognized arguments: --loss-type grpo" in capsys.readouterr().err
    config = tmp_path / "run.yaml"  # the file's algo picks the flags when --algo is not given
    config.write_text("algo: fake\nloss_type: grpo\n")
    args = parse(["train", "textgym/Copy-v0", "--config", str(config), "--scale-rewards", "batch"])
    settings = run_settings(args)
    assert settings["algo"] == "fake" and (settings["config"].loss_type, settings["config"].scale_rewards) == ("grpo", "batch")


# -- the YAML: the same names, checked ------------------------------------------------------------------
def test_yaml_names_are_the_flag_names(tmp_path: Path) -> None:
    options = {s for a in build_parser()._subparsers._group_actions[0].choices["train"].for_algorithm("ppo")._actions
               for s in a.option_strings}  # fmt: skip
    for name in PPOConfig.names():
        assert "--" + name.replace("_", "-") in options
    config = tmp_path / "run.yaml"
    config.write_text("algo: ppo\nmodel: tiny-random\ntimesteps: 100\nnum_envs: 4\nseed: 1\nverbose: 0\nenv: {max_new_tokens: 4}\n"
                      "learning_rate: 1e-3\nkl_coef: 0.1\nclip_range_vf: none\nreward_scaling: false\nkl_estimator: k3\n")  # fmt: skip
    data = load_run_config(str(config))
    assert data["learning_rate"] == 1e-3 and data["clip_range_vf"] is None  # YAML text '1e-3' / 'none' parsed as flags
    assert data["kl_coef"] == 0.1 and data["reward_scaling"] is False and data["env"] == {"max_new_tokens": 4}


def test_unknown_yaml_key_or_bad_value_is_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("modle: tiny-random\n")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['modle'\] for ppo; allowed: \['algo', 'model', .*'kl_coef'"):
        load_run_config(str(config))
    config.write_text("ppo: {kl_coef: 0.1}\n")
    with pytest.raises(ConfigError, match="the old 'ppo:' mapping is gone: write its fields at the top level"):
        load_run_config(str(config))
    for text, message in [("n_epochs: 0\n", "n_epochs must be a positive integer, got 0"),
                          ("kl_estimator: k9\n", "kl_estimator: invalid value 'k9'; expected one of k1, k2, k3"),
                          ("num_envs: many\n", "num_envs='many' is not allowed; expected an integer >= 1"),
                          ("algo: a2c\n", r"algo='a2c' is not allowed; expected one of \[.*'ppo'"),
                          ("env: 3\n", "env must be a mapping")]:  # fmt: skip
        config.write_text(text)
        with pytest.raises(ConfigError, match=message):
            load_run_config(str(config))
    with pytest.raises(ConfigError, match="is not a file"):
        load_run_config(str(tmp_path / "missing.yaml"))
    config.write_text("kl_coef: -1\n")  # through the command: one line, exit code 2
    assert main(["train", "textgym/Copy-v0", "--config", str(config), "--out", str(tmp_path / "run")]) == 2


def test_flags_override_the_yaml(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("model: tiny-random\nnum_envs: 4\ntimesteps: 100\nkl_coef: 0.1\nn_epochs: 2\n")
    settings = run_settings(parse(["train", "textgym/Copy-v0", "--config", str(config), "--kl-coef", "0.3",
                                   "--num-envs", "2", "--seed", "7"]))  # fmt: skip
    assert (settings["config"].kl_coef, settings["config"].n_epochs) == (0.3, 2)
    assert (settings["num_envs"], settings["timesteps"], settings["seed"], settings["verbose"]) == (2, 100, 7, 0)
    assert settings["env"] == {"model": "tiny-random"} and settings["algo"] == "ppo"
    defaults = run_settings(parse(["train", "textgym/Copy-v0"]))
    assert (defaults["timesteps"], defaults["num_envs"], defaults["seed"], defaults["verbose"]) == (40_000, 8, 0, 0)


# -- end to end: train, eval, resume ---------------------------------------------------------------------
TRAIN = ["train", "textgym/Copy-v0", "--model", "tiny-random", "--timesteps", "300", "--num-envs", "4", "--n-epochs", "1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    import torch

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("cli") / "copy"
    assert main([*TRAIN, "--kl-coef", "0.1", "--out", str(out)]) == 0
    return out


def test_train_then_eval(trained: Path, capsys) -> None:
    from agents import load_agent

    agent = load_agent(str(trained))
    assert agent.config.kl_coef == 0.1 and agent.config.n_epochs == 1 and agent.num_timesteps >= 300
    assert agent.total_timesteps == 300
    checkpoint = sorted(trained.glob("checkpoint-*"))[-1]
    for path in (trained, checkpoint):  # a run directory or one of its checkpoints
        assert main(["eval", "textgym/Copy-v0", "--checkpoint", str(path), "--episodes", "4", "--num-envs", "4"]) == 0
        text = capsys.readouterr().out
        assert "4 samples" in text and "copy_accuracy" in text
    assert main([*TRAIN, "--out", str(trained)]) == 2
    assert "already holds checkpoints of a run; continue it with --resume" in capsys.readouterr().err


def test_resume_continues_the_run_and_refuses_new_settings(trained: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    assert main(["train", "textgym/Copy-v0", "--resume", str(run), "--kl-coef", "0.2", "--seed", "1"]) == 2
    err = capsys.readouterr().err
    assert "--resume takes the run's algorithm and settings from its checkpoint; drop --seed --kl-coef" in err
    done = int(sorted(run.glob("checkpoint-*"))[-1].name.split("-")[1])
    assert main(["train", "textgym/Copy-v0", "--resume", str(run), "--timesteps", "1000", "--verbose", "0"]) == 0
    out = capsys.readouterr().out
    assert f"resuming {run}: {done} updates" in out and "ep_rew_mean" not in out  # --verbose 0: no log table
    final = out.strip().splitlines()[-1]
    assert final.startswith(f"saved {run}/checkpoint-") and ": ppo (TextPPO), " in final, final
    from agents import load_agent

    agent = load_agent(str(run))
    assert agent.n_updates > done and agent.num_timesteps >= 1000 and agent.config.kl_coef == 0.1  # the run's own config


@pytest.mark.parametrize("algo", sorted(ALGORITHMS))
def test_every_algorithm_trains_and_resumes_from_the_command_line(algo: str, tmp_path: Path, capsys) -> None:
    run = tmp_path / algo
    args = ["train", "textgym/Copy-v0", "--algo", algo, "--model", "tiny-random", "--num-envs", "4", "--group-size", "4",
            "--n-rollouts", "1", "--n-epochs", "1", "--verbose", "0", "--out", str(run)]  # fmt: skip
    name = f": {algo} ({algorithm(algo).__name__}), "

    def updates() -> int:
        final = capsys.readouterr().out.strip().splitlines()[-1]
        assert name in final, final
        return int(final.split(name)[1].split()[0])

    assert main([*args, "--timesteps", "20"]) == 0
    before = updates()
    assert main(["train", "textgym/Copy-v0", "--resume", str(run), "--timesteps", "60"]) == 0  # load_agent: any algorithm
    assert updates() > before


def test_eval_needs_a_checkpoint_or_a_model(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["eval", "textgym/Copy-v0"])
    assert exit_.value.code == 2 and "one of the arguments --checkpoint --model is required" in capsys.readouterr().err


def test_resume_of_a_run_budgeted_in_updates_continues_to_its_update_target(tmp_path: Path, capsys) -> None:
    """A run trained with learn(updates=N) (the leaderboard's RL stage) and stopped early resumes from the command
    line toward its N updates, not toward a token target it never had."""
    import gymnasium as gym

    from agents import TextPPO, load_agent

    env = gym.make_vec("textgym/Copy-v0", num_envs=4, model="tiny-random")
    agent = TextPPO("LMPolicy", env, model="tiny-random", seed=0, n_epochs=1, n_rollouts=1, verbose=0)
    agent.learn(updates=3, callback=lambda local, glob: agent.n_updates < 1, save_dir=tmp_path / "run")  # stopped at 1
    assert load_agent(str(tmp_path / "run")).n_updates == 1
    assert main(["train", "textgym/Copy-v0", "--resume", str(tmp_path / "run"), "--verbose", "0"]) == 0
    assert "resuming" in (out := capsys.readouterr().out) and "done of 3 updates" in out
    assert load_agent(str(tmp_path / "run")).n_updates == 3
