"""The README's shell commands name flags and values the CLIs accept (parsed, not run: they train for hours)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from agents.demo import parse_args as demo_args
from textgym.cli import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_commands() -> list[str]:
    """``textgym ...`` and ``python -m agents.demo ...`` commands of the README's shell blocks: comments, a trailing
    ``&`` and ``[optional]`` notation dropped, ``a && b`` split; ``--help`` lines left out (they exit by design)."""
    out = []
    for block in re.findall(r"```(?:bash|sh|console)\n(.*?)```", README.read_text(), re.S):
        for line in block.splitlines():
            line = re.sub(r"\[[^\]]*\]", "", line.split(" #")[0]).strip().rstrip("&").strip()
            for part in (p.strip() for p in line.split("&&")):
                if part.startswith(("textgym ", "python -m agents.demo")) and "--help" not in part:
                    out.append(part)
    return out


def test_the_readme_has_commands_to_check() -> None:
    commands = readme_commands()
    assert len(commands) > 15 and any(c.startswith("textgym bench --recipes") for c in commands)


@pytest.mark.parametrize("command", readme_commands())
def test_a_readme_command_parses(command: str) -> None:
    words = shlex.split(command)
    try:
        if words[0] == "textgym":
            build_parser().parse_args(words[1:])
        else:
            demo_args(words[3:])
    except SystemExit as exit_:
        pytest.fail(f"README command does not parse (exit {exit_.code}): {command}")
