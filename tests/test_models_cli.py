"""Model resolution and the textgym command."""

from __future__ import annotations

import time

import pytest

import textgym
from tests.conftest import TINY
from textgym import models
from textgym.cli import main


def test_tiny_model_shares_the_tokenizer_vocabulary() -> None:
    lm = models.load_model(TINY)
    tok = models.load_tokenizer(TINY)
    assert lm.config.vocab_size == len(tok) == 49152
    assert not lm.training
    assert sum(p.numel() for p in lm.parameters()) < 5_000_000


def test_alias_resolves_to_a_cached_checkpoint_once() -> None:
    path = models.resolve_model_path(TINY)
    start = time.perf_counter()
    assert models.resolve_model_path(TINY) == path
    assert time.perf_counter() - start < 0.5
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(path).config.num_hidden_layers == 2


def test_local_path_is_a_model_spec(tmp_path) -> None:
    lm = models.load_model(TINY)
    lm.save_pretrained(str(tmp_path))
    models.load_tokenizer(TINY).save_pretrained(str(tmp_path))
    again = models.load_model(str(tmp_path))
    assert again.config.hidden_size == lm.config.hidden_size
    assert len(models.load_tokenizer(str(tmp_path))) == 49152


@pytest.mark.slow
def test_default_model_is_smollm2_135m() -> None:
    lm = models.load_model(models.DEFAULT_MODEL)
    assert type(lm).__name__ == "LlamaForCausalLM"
    assert 134_000_000 < sum(p.numel() for p in lm.parameters()) < 135_000_000


def test_cli_list_shows_every_id(capsys) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for env_id in textgym.ENVS:
        assert env_id in out


def test_cli_info_shows_spaces_reward_and_splits(capsys) -> None:
    assert main(["info", "textgym/Translation-v0", "--model", TINY]) == 0
    out = capsys.readouterr().out
    assert "Discrete(49152)" in out and "chrf" in out and "train=" in out and "test=" in out


def test_cli_play_prints_an_episode(capsys) -> None:
    assert main(["play", "textgym/Copy-v0", "--model", TINY, "--episodes", "2", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert out.count("=== textgym/Copy-v0 episode") == 2 and "reward:" in out and "reference:" in out


def test_cli_unknown_id_is_a_clear_error(capsys) -> None:
    assert main(["info", "textgym/Nope-v0"]) == 2
    assert "unknown env id 'textgym/Nope-v0'; registered:" in capsys.readouterr().err
