"""Registration from YAML, from Python and from plugin entry points."""

from __future__ import annotations

from importlib import metadata

import gymnasium as gym
import pytest

import textgym
from tests.conftest import TINY
from textgym.errors import ConfigError
from textgym.registry import load_plugins, register_env
from textgym.tasks.copy import CopyTask


def test_every_yaml_id_is_registered_with_a_vector_entry_point() -> None:
    for env_id in textgym.BUILTIN_IDS:
        spec = gym.spec(env_id)
        assert spec.entry_point == "textgym.env:TextEnv"
        assert spec.vector_entry_point == "textgym.vector:TextVectorEnv"


def test_make_kwargs_override_yaml_defaults() -> None:
    assert gym.spec("textgym/Copy-v0").kwargs["max_new_tokens"] == 6
    env = gym.make("textgym/Copy-v0", model=TINY, max_new_tokens=3)
    assert env.unwrapped.setup.max_new_tokens == 3
    envs = gym.make_vec("textgym/Copy-v0", num_envs=2, model=TINY, max_new_tokens=4)
    assert envs.unwrapped.setup.max_new_tokens == 4


def test_register_from_yaml(tmp_path) -> None:
    path = tmp_path / "envs.yaml"
    path.write_text(
        "test/ShortCopy-v0:\n  task: textgym.tasks.copy:CopyTask\n  description: short\n"
        "  kwargs: {max_words: 2, min_words: 2, max_new_tokens: 3}\n"
    )
    assert textgym.register_from_yaml(path) == ["test/ShortCopy-v0"]
    _, info = gym.make("test/ShortCopy-v0", model=TINY).reset(seed=0)
    assert len(info["prompt"].split()) == 2
    assert textgym.register_from_yaml(path) == ["test/ShortCopy-v0"]  # same definition again: fine


def test_yaml_unknown_key_lists_valid_keys(tmp_path) -> None:
    path = tmp_path / "envs.yaml"
    path.write_text("test/Bad-v0:\n  task: textgym.tasks.copy:CopyTask\n  defaults: {}\n")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['defaults'\]; valid keys: \['task', 'description'"):
        textgym.register_from_yaml(path)


def test_duplicate_id_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"env id 'textgym/Copy-v0' is already registered \(by textgym\)"):
        register_env("textgym/Copy-v0", CopyTask, kwargs={"max_words": 9})


def test_plugin_entry_point_registers_envs(monkeypatch) -> None:
    def plugin() -> None:
        register_env("plugin/Copy-v0", CopyTask, description="from a plugin", kwargs={"max_new_tokens": 2})

    ep = metadata.EntryPoint(name="demo", value="demo_plugin:register", group="textgym.envs")
    monkeypatch.setattr(metadata.EntryPoint, "load", lambda self: plugin)
    monkeypatch.setattr(metadata, "entry_points", lambda group=None: [ep] if group == "textgym.envs" else [])
    assert load_plugins() == ["plugin/Copy-v0"]
    assert textgym.ENVS["plugin/Copy-v0"].source == "demo_plugin:register"
    env = gym.make("plugin/Copy-v0", model=TINY)
    assert env.unwrapped.setup.max_new_tokens == 2


def test_broken_plugin_warns_and_does_not_break(monkeypatch) -> None:
    ep = metadata.EntryPoint(name="broken", value="no_such_module:register", group="textgym.envs")
    monkeypatch.setattr(metadata, "entry_points", lambda group=None: [ep] if group == "textgym.envs" else [])
    with pytest.warns(UserWarning, match="textgym plugin 'broken'"):
        assert load_plugins() == []
