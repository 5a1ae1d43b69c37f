"""Bad rows in user data: rejected at load with file/line/field, or skipped and counted."""

from __future__ import annotations

import json

import gymnasium as gym
import pytest

from tests.conftest import TINY
from textgym.data.files import MAX_FIELD_CHARS, load_file
from textgym.errors import ConfigError, DataError

GOOD = [{"source": f"Word {i}", "target": f"Mot {i}"} for i in range(6)]
BAD_LINES = [
    (b'{"source": 3, "target": "x"}', "field 'source' must be a string, got int"),
    (b'{"target": "x"}', "missing field 'source'"),
    (b'{"source": "   ", "target": "x"}', "field 'source' is empty"),
    (b'{"source": "ok", "target": ["a", 2]}', "field 'target' must be a string or a list of strings"),
    (b'{"source": "\xc3\x28", "target": "x"}', "invalid UTF-8"),
    (b'["not", "an", "object"]', "expected a JSON object, got list"),
    (b"{broken", "invalid JSON"),
    (json.dumps({"source": "x" * (MAX_FIELD_CHARS + 1), "target": "y"}).encode(), "characters (limit 1,000,000)"),
]


def write(tmp_path, bad: bytes):
    path = tmp_path / "data.jsonl"
    lines = [json.dumps(r).encode() for r in GOOD[:3]] + [bad] + [json.dumps(r).encode() for r in GOOD[3:]]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


@pytest.mark.parametrize("bad,message", BAD_LINES, ids=[m.split(" (")[0][:30] for _, m in BAD_LINES])
def test_bad_row_is_rejected_with_file_line_and_field(tmp_path, bad: bytes, message: str) -> None:
    path = write(tmp_path, bad)
    with pytest.raises(DataError, match=rf"{path}:4: .*{message[:25]}".replace("(", r"\(").replace("[", r"\[")):
        load_file(path, {"prompt": "source", "references": "target"})


@pytest.mark.parametrize("bad,message", BAD_LINES, ids=[m.split(" (")[0][:30] for _, m in BAD_LINES])
def test_bad_row_is_skipped_and_counted_on_request(tmp_path, bad: bytes, message: str) -> None:
    path = write(tmp_path, bad)
    with pytest.warns(UserWarning, match=rf"skipped 1 bad row\(s\) of {path}; first: .*:4: "):
        samples = load_file(path, {"prompt": "source", "references": "target"}, on_bad_row="skip")
    assert [s.prompt for s in samples] == [r["source"] for r in GOOD]


def test_env_with_skip_policy_trains_on_the_good_rows(tmp_path) -> None:
    path = write(tmp_path, b'{"source": 3}')
    with pytest.warns(UserWarning, match="skipped 1 bad row"):
        env = gym.make("textgym/Translation-v0", model=TINY, data_files={"train": str(path)}, on_bad_row="skip")
    assert len(env.unwrapped.setup.samples) == len(GOOD)
    with pytest.raises(ConfigError, match=r"on_bad_row must be one of \['raise', 'skip'\], got 'ignore'"):
        gym.make("textgym/Translation-v0", model=TINY, data_files={"train": str(path)}, on_bad_row="ignore")
