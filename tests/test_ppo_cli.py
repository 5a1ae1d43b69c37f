"""`textgym train` / `textgym eval` commands of agents.cli (tiny model, Copy-v0)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from agents.cli import add_commands, load_run_config, main
from textgym.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")


def test_commands_register_without_heavy_imports() -> None:
    code = (
        "import argparse, sys; from agents.cli import add_commands; p = argparse.ArgumentParser(); "
        "add_commands(p.add_subparsers(dest='cmd')); "
        "print(p.parse_args(['train', 'textgym/Copy-v0', '--timesteps', '5']).timesteps); "
        "print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path(__file__).parents[1])
    assert out.stdout.split() == ["5", "False", "False"]


def test_train_then_eval(tmp_path: Path, capsys) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("model: tiny-random\nnum_envs: 4\nppo: {learning_rate: 0.001, n_epochs: 1, verbose: 0}\n")
    out = tmp_path / "copy"
    assert main(["train", "textgym/Copy-v0", "--config", str(config), "--timesteps", "1", "--out", str(out)]) == 0
    assert "saved" in capsys.readouterr().out and (out / "checkpoint-000001" / "textppo.json").is_file()
    for checkpoint in (out, out / "checkpoint-000001"):  # a run directory or one of its checkpoints
        assert main(["eval", "textgym/Copy-v0", "--checkpoint", str(checkpoint), "--episodes", "4", "--num-envs", "4"]) == 0
        text = capsys.readouterr().out
        assert "4 samples" in text and "copy_accuracy" in text
    with pytest.raises(ConfigError, match="already holds checkpoints of a run; continue it with --resume"):
        main(["train", "textgym/Copy-v0", "--config", str(config), "--out", str(out)])


def test_bad_run_config(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("modle: tiny-random\n")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['modle'\]; allowed: \['model'"):
        load_run_config(str(config))
    with pytest.raises(ConfigError, match="is not a file"):
        load_run_config(str(tmp_path / "missing.yaml"))
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="cmd"))
    with pytest.raises(SystemExit):
        parser.parse_args(["eval", "textgym/Copy-v0"])  # --checkpoint or --model is required
