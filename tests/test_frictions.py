"""Issue 18, "Devices, offline, data": model typos and an unreachable hub fail fast, small data
files have no empty split, Dataset objects are accepted, and the textgym command is friendlier."""

from __future__ import annotations

import json
import os
import socket
import time

import gymnasium as gym
import pytest

import textgym
from tests.conftest import TINY
from textgym import models
from textgym.cli import HelpFormatter, build_parser, main
from textgym.data import SPLITS, assign_splits, hash_split, load_data_files, split_samples
from textgym.data.base import Sample
from textgym.errors import ConfigError, DataError, ModelError

CAPITALS = [
    ("France", "Paris"), ("Peru", "Lima"), ("Japan", "Tokyo"), ("Kenya", "Nairobi"), ("Canada", "Ottawa"),
    ("Egypt", "Cairo"), ("Norway", "Oslo"), ("Chile", "Santiago"), ("India", "New Delhi"), ("Spain", "Madrid"),
]
FIELDS = {"prompt": "country", "references": "capital"}


@pytest.fixture
def online(monkeypatch):
    """No offline switch in the environment (whatever the machine running the tests sets)."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)


@pytest.fixture
def empty_hf_cache(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    return tmp_path / "hf"


def one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text, text
    return text


# -- 1. models: typos fail at once, the hub fails fast ------------------------------------------


def test_mistyped_alias_fails_at_once_and_suggests_the_alias(online, monkeypatch) -> None:
    gym.make("textgym/Copy-v0", model=TINY)  # imports and caches warm: time only the model check
    monkeypatch.setattr(models, "probe_hub", lambda *a, **k: pytest.fail("a mistyped alias must not touch the network"))
    start = time.perf_counter()
    with pytest.raises(ModelError) as err:
        gym.make("textgym/Copy-v0", model="tiny_random")
    assert time.perf_counter() - start < 2.0
    assert "cannot load model 'tiny_random'" in one_line(err) and "did you mean 'tiny-random'?" in str(err.value)
    with pytest.raises(ModelError, match="did you mean 'smollm2-135m-instruct'"):
        models.load_model("smollm2")
    with pytest.raises(ModelError, match="hub ids need their org"):
        models.resolve_model_path("not-a-model-at-all")


@pytest.mark.parametrize(
    "spec,ok",
    [("HuggingFaceTB/SmolLM2-135M-Instruct", True), ("org/name.v2", True), ("org/name", True),
     ("tiny_random", False), ("a/b/c", False), ("org/-name", False), ("org/na--me", False), ("org/", False)],
)
def test_hub_id_shape(spec: str, ok: bool) -> None:
    assert models.is_hub_id(spec) is ok


def test_uncached_hub_id_fails_in_one_line_when_offline(monkeypatch, empty_hf_cache) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(models, "probe_hub", lambda *a, **k: pytest.fail("offline: no probe"))
    assert models.hub_offline()
    start = time.perf_counter()
    with pytest.raises(ModelError) as err:
        gym.make("textgym/Copy-v0", model="someorg/not-cached")
    assert time.perf_counter() - start < 2.0
    assert "not in the Hugging Face cache and the hub is offline (HF_HUB_OFFLINE=1)" in one_line(err)


def test_unreachable_hub_fails_in_one_line(online, monkeypatch, empty_hf_cache) -> None:
    monkeypatch.setattr(models, "probe_hub", lambda *a, **k: "no answer from https://huggingface.co within 3 s")
    with pytest.raises(ModelError) as err:
        models.load_tokenizer("someorg/unreachable")
    text = one_line(err)
    assert text.startswith("cannot reach the Hugging Face hub") and "no answer" in text and "'someorg/unreachable'" in text


def test_probe_gives_up_on_a_silent_or_closed_server(monkeypatch) -> None:
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(models, "_hub_reachable", False)  # an earlier successful probe is remembered
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        monkeypatch.setattr(models, "_hub_endpoint", lambda: f"http://127.0.0.1:{silent.getsockname()[1]}")
        start = time.perf_counter()
        assert models.probe_hub(timeout=0.3) is not None
        assert time.perf_counter() - start < 1.5
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    monkeypatch.setattr(models, "_hub_endpoint", lambda: f"http://127.0.0.1:{closed}")
    assert models.probe_hub(timeout=1.0) is not None


@pytest.mark.parametrize("offline", [True, False])
def test_cached_hub_id_loads_from_the_hf_cache_without_network(monkeypatch, empty_hf_cache, offline: bool) -> None:
    """An ``org/name`` id in a (fake) HF cache loads when the hub is offline or silent, with no retries."""
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        monkeypatch.setattr(models, "probe_hub", lambda *a, **k: pytest.fail("offline: no probe"))
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
        monkeypatch.setattr(models, "hub_offline", lambda: False)
        monkeypatch.setattr(models, "probe_hub", lambda *a, **k: "no answer from https://huggingface.co within 3 s")
    repo = empty_hf_cache / "models--frictions--tiny"
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    source = models.resolve_model_path(TINY)
    for name in os.listdir(source):
        os.symlink(os.path.join(source, name), snapshot / name)
    name = f"frictions/tiny-{'offline' if offline else 'silent'}"  # load_tokenizer caches per name
    os.rename(repo, empty_hf_cache / f"models--{name.replace('/', '--')}")
    start = time.perf_counter()
    assert models.resolve_model_path(name).startswith(str(empty_hf_cache))
    assert len(models.load_tokenizer(name)) == 49152
    assert models.load_model(name).config.num_hidden_layers == 2
    assert time.perf_counter() - start < 10.0


# -- 2. small data files: no empty split, split_sizes= ----------------------------------------------


@pytest.fixture
def capitals(tmp_path):
    path = tmp_path / "capitals.jsonl"
    path.write_text("".join(json.dumps({"country": c, "capital": k}) + "\n" for c, k in CAPITALS))
    return path


def sizes(path, **kwargs) -> list[int]:
    return [len(load_data_files(path, s, FIELDS, **kwargs)) for s in SPLITS]


def test_readme_ten_row_file_has_every_split(capitals) -> None:
    assert sizes(capitals) == [8, 1, 1]  # the plain hash gives 10 / 0 / 0
    parts = {s: [x.prompt for x in load_data_files(capitals, s, FIELDS)] for s in SPLITS}
    assert sorted(sum(parts.values(), [])) == sorted(c for c, _ in CAPITALS)
    assert parts == {s: [x.prompt for x in load_data_files(capitals, s, FIELDS)] for s in SPLITS}  # deterministic
    textgym.register_task("frictions/Capitals-v0", data_files=str(capitals), fields=FIELDS, reward="chrf")
    env = gym.make("frictions/Capitals-v0", model=TINY, split="test")
    assert len(env.unwrapped.setup.samples) == 1


@pytest.mark.parametrize("n", range(3, 40))
def test_no_split_is_empty_from_three_rows(n: int) -> None:
    samples = [Sample(id=f"q{n}-{i}", prompt="x") for i in range(n)]
    parts = [split_samples(samples, s) for s in SPLITS]
    assert all(parts) and sum(map(len, parts)) == n


def test_fill_only_moves_rows_when_a_split_is_empty() -> None:
    keys = [f"key-{i}" for i in range(300)]
    assert assign_splits(keys) == {k: hash_split(k) for k in keys}  # built-in data keeps its split
    two = assign_splits(["a", "b"])
    assert len(two) == 2  # fewer rows than splits: nothing to guarantee, no error


def test_split_sizes_fractions_counts_and_mapping(capitals) -> None:
    assert sizes(capitals, split_sizes=(0.6, 0.2, 0.2)) == [6, 3, 1]
    assert sizes(capitals, split_sizes=(6, 2, 2)) == [6, 2, 2]
    assert sizes(capitals, split_sizes=(None, 1, 3)) == [6, 1, 3]
    assert sizes(capitals, split_sizes=(4, 1, 1)) == [4, 1, 1]  # the other 4 rows are left out
    assert sizes(capitals, split_sizes={"train": 0.5, "test": 0.5})[1] == 0  # a 0 fraction stays empty
    for bad, message in [((0.5, 0.2, 0.2), "must sum to 1"), ((0.8, 0.2), "3 fractions or 3 row counts"),
                         ((None, None, 1), "at most one count may be None"), ((1, -1, 1), "non-negative")]:
        with pytest.raises(ConfigError, match=message):
            load_data_files(capitals, "train", FIELDS, split_sizes=bad)
    with pytest.raises(DataError, match="asks for 12 rows but the data has 10"):
        load_data_files(capitals, "train", FIELDS, split_sizes=(10, 1, 1))
    with pytest.raises(ConfigError, match="already names its splits"):
        load_data_files({"train": capitals}, "train", FIELDS, split_sizes=(8, 1, 1))


def test_split_sizes_through_register_task_and_gym_make(capitals) -> None:
    textgym.register_task("frictions/Sized-v0", data_files=str(capitals), fields=FIELDS, split_sizes=(5, 3, 2))
    assert len(gym.make("frictions/Sized-v0", model=TINY, split="validation").unwrapped.setup.samples) == 3
    env = gym.make("frictions/Sized-v0", model=TINY, split="test", split_sizes=(2, 4, 4))  # overrides the default
    assert len(env.unwrapped.setup.samples) == 4
    rows = [{"prompt": c, "references": [k]} for c, k in CAPITALS]
    textgym.register_task("frictions/SizedList-v0", rows, split_sizes=(None, 2, 2))
    assert len(gym.make("frictions/SizedList-v0", model=TINY, split="test").unwrapped.setup.samples) == 2
    with pytest.raises(ConfigError, match="must sum to 1"):
        textgym.register_task("frictions/BadSizes-v0", rows, split_sizes=(0.9, 0.9, 0.9))


# -- 3. dataset= takes Dataset and DatasetDict objects ------------------------------------------------


def test_dataset_and_datasetdict_objects() -> None:
    datasets = pytest.importorskip("datasets")
    rows = [{"country": c, "capital": k} for c, k in CAPITALS]
    ds = datasets.Dataset.from_list(rows)
    textgym.register_task("frictions/FromDataset-v0", dataset=ds, fields=FIELDS)
    parts = [gym.make("frictions/FromDataset-v0", model=TINY, split=s).unwrapped.setup.samples for s in SPLITS]
    assert all(parts) and sorted(x.prompt for p in parts for x in p) == sorted(r["country"] for r in rows)
    assert textgym.ENVS["frictions/FromDataset-v0"].data == "Dataset(10 rows)"

    sized = gym.make("frictions/FromDataset-v0", model=TINY, split="test", split_sizes=(4, 3, 3))
    assert len(sized.unwrapped.setup.samples) == 3

    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"source": ["Yes", "No"], "target": ["Oui", "Non"]}),
        "validation": datasets.Dataset.from_dict({"source": ["Open"], "target": ["Ouvrir"]}),
        "test": datasets.Dataset.from_dict({"source": ["Cancel"], "target": ["Annuler"]}),
    })
    env = gym.make("textgym/Translation-v0", model=TINY, dataset=dd, split="test")
    assert [(s.prompt, s.references) for s in env.unwrapped.setup.samples] == [("Cancel", ("Annuler",))]
    env = gym.make("textgym/Translation-v0", model=TINY, dataset=dd["train"].select(range(2)), split="train")
    assert len(env.unwrapped.setup.samples) >= 1

    with pytest.raises(ConfigError, match="dataset= must be a hub id, a save_to_disk folder, a datasets.Dataset"):
        gym.make("textgym/Translation-v0", model=TINY, dataset=[{"source": "a", "target": "b"}])


# -- 4. and 5. the textgym command --------------------------------------------------------------------


def test_version_and_defaults_in_every_help(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"textgym {textgym.__version__}"
    parser = build_parser()
    subcommands = parser._subparsers._group_actions[0].choices  # noqa: SLF001 - argparse has no public accessor
    for name in ("list", "info", "play", "new-task", "serve"):
        sub = subcommands[name]
        assert sub.formatter_class is HelpFormatter
        text = " ".join(sub.format_help().split())
        options = [a for a in sub._actions if a.option_strings and a.dest != "help"]  # noqa: SLF001
        assert text.count("(default:") == len(options), (name, text)
    assert "(default: 0.7)" in " ".join(subcommands["play"].format_help().split())


@pytest.mark.parametrize("command", ["play", "info"])
def test_unknown_id_is_one_line_with_the_closest_ids(capsys, command: str) -> None:
    assert main([command, "textgym/Nope-v0", "--model", TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert err.startswith("textgym: error: unknown env id 'textgym/Nope-v0'") and "'textgym/Copy-v0'" in err
    assert main([command, "textgym/copy-v0"]) == 2
    assert "did you mean 'textgym/Copy-v0'" in capsys.readouterr().err
