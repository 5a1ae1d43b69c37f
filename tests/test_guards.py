"""Reward guards: Translation's target-language guard catches an agent that copies the source.

Also the guard mechanism itself (validation, range, callable rewards), the
translation metrics against direct lingua / sacrebleu calls, and the text
metrics every text task reports (words, distinct_2).
"""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
import sacrebleu
from lingua import Language, LanguageDetectorBuilder

from tests.conftest import TINY
from textgym.data import Sample
from textgym.env import TextEnv
from textgym.errors import ConfigError
from textgym.rewards import Reward, compute_metrics
from textgym.tasks.copy import CopyTask
from textgym.tasks.translation import TranslationTask
from textgym.wrappers import SequenceLevel

N = 30  # Translation-v0 test samples played
FR = {"language": "fr", "source_language": "en"}
DETECTOR = LanguageDetectorBuilder.from_languages(Language.ENGLISH, Language.FRENCH).build()


def french(text: str) -> bool:
    """lingua called directly, as the issue describes the metric."""
    return DETECTOR.detect_language_of(text) == Language.FRENCH


def translation(**kwargs):
    return SequenceLevel(gym.make("textgym/Translation-v0", model=TINY, split="test", max_new_tokens=128, **kwargs))


def play(env, answer_of) -> list[dict]:
    """One episode per test sample 0..N-1, answering ``answer_of(reset_info)``: (reward, final info)."""
    out = []
    for i in range(N):
        _, info = env.reset(options={"index": i})
        answer = answer_of(info)
        _, reward, terminated, _, final = env.step(answer)
        assert terminated and final["generated_text"] == answer
        out.append({"reward": reward, **final})
    return out


def test_guard_catches_an_agent_that_copies_the_source() -> None:
    guarded, plain = translation(), translation(target_language_guard=False)
    assert guarded.unwrapped.setup.reward.guards == ("language_guard",) and plain.unwrapped.setup.reward.guards == ()
    copy_guarded = play(guarded, lambda info: info["prompt"])
    copy_plain = play(plain, lambda info: info["prompt"])
    g = np.array([e["reward"] for e in copy_guarded])
    u = np.array([e["reward"] for e in copy_plain])
    chrf = np.array([e["metrics"]["chrf"] for e in copy_guarded])
    np.testing.assert_array_equal(chrf, [e["metrics"]["chrf"] for e in copy_plain])  # chrF itself is not guarded
    np.testing.assert_array_equal(u, chrf)
    assert all(e["metrics"]["source_copy"] == 1.0 for e in copy_guarded)
    # caught: an English source whose reference is French (lingua called directly) scores 0
    caught = np.array([not french(e["prompt"]) and french(e["references"][0]) for e in copy_guarded])
    assert caught.sum() >= N // 2 and (u[caught] > 0).all() and (g[caught] == 0).all()
    np.testing.assert_array_equal(g[~caught], u[~caught])  # the rest pass: French-looking or undecidable strings
    assert g.mean() < 0.5 * u.mean()
    # a correct French answer keeps its full reward
    right = play(guarded, lambda info: info["references"][0])
    assert all(e["reward"] == e["metrics"]["chrf"] == 1.0 and e["metrics"]["language_guard"] == 1.0 for e in right)


def test_language_guard_trusts_answers_when_the_reference_is_undecidable() -> None:
    samples = [
        Sample("url", "URL", ("URL",), FR),  # the reference is not detected as French
        Sample("save", "Save the file", ("Enregistrer le fichier",), FR),
    ]
    assert not french("URL") and french("Enregistrer le fichier") and not french("Save the file")
    out = Reward("chrf", extra_metrics=("target_language",), guards=("language_guard",))(["URL", "Save the file"], samples)
    assert out.metrics["target_language"].tolist() == [0.0, 0.0]
    assert out.metrics["language_guard"].tolist() == [1.0, 0.0]
    assert out.scores.tolist() == [1.0, 0.0] and out.metrics["chrf"][1] > 0


def test_guard_validation_and_range() -> None:
    with pytest.raises(ConfigError, match=r"reward guard 'nope' .* not a metric; valid metric names: .*'chrf'"):
        Reward("chrf", guards=("nope",))
    with pytest.raises(ConfigError, match=r"reward guard 'ter' .* range \[0.0, inf\].*within \[0, 1\]"):
        Reward("chrf", guards=("ter",))
    with pytest.raises(ConfigError, match=r"reward guard 'repetition' .* range \[-1.0, 0.0\]"):
        Reward("chrf", guards=("repetition",))
    with pytest.raises(ConfigError, match="sequence of metric names"):
        Reward("chrf", guards="language_guard")
    assert Reward("chrf", guards=("language_guard",)).range == (0.0, 1.0)
    assert Reward({"chrf": 0.5, "placeholders": 0.5}, guards=("language_guard",)).range == (0.0, 1.0)
    assert Reward("length_penalty").range == (-1.0, 0.0)
    assert Reward({"length_penalty": 1.0, "chrf": 2.0}, guards=("language_guard",)).range == (-1.0, 2.0)
    assert Reward({"chrf": 1.0, "bleu": 1.0}, guards=("language_guard",)).metric_names[-1] == "language_guard"
    # a user callable is guarded too, and the guard is reported beside its metrics
    copy, answer = Sample("s", "Save the file", ("Enregistrer le fichier",), FR), "Save the file"
    out = Reward(lambda texts, samples: [0.7] * len(texts), guards=("language_guard",))([answer, answer], [copy, copy])
    assert out.scores.tolist() == [0.0, 0.0] and out.metrics["language_guard"].tolist() == [0.0, 0.0]
    assert out.metrics["reward"].tolist() == [0.0, 0.0]


def test_task_guards_reach_the_env_and_are_checked_at_make() -> None:
    env = gym.make("textgym/Translation-v0", model=TINY, split="test")
    assert env.unwrapped.setup.reward.guards == ("language_guard",) and env.unwrapped.reward_range == (0.0, 1.0)
    bleu = gym.make("textgym/Translation-v0", model=TINY, split="test", reward="bleu").unwrapped.setup.reward
    assert bleu.guards == ("language_guard",)  # any reward= is guarded

    class Badly(CopyTask):
        reward_guards = ("length_ratio",)

    with pytest.raises(ConfigError, match=r"reward guard 'length_ratio' of task 'Badly' has range \[0.0, inf\]"):
        TextEnv(Badly, model=TINY, split="test")


def test_languages_are_checked_at_construction() -> None:
    with pytest.raises(ConfigError, match=r"target_language_guard=False.*cannot detect language 'kab'.*fr \(French\)"):
        TranslationTask(language="kab")
    with pytest.raises(ConfigError, match=r"cannot detect language 'Klingon'"):
        TranslationTask(source_language="Klingon")
    with pytest.raises(ConfigError, match=r"'en_GB'.*same language \('en'\)"):
        TranslationTask(language="en_GB")
    with pytest.raises(ConfigError, match="target_language_guard must be True or False"):
        TranslationTask(target_language_guard="yes")
    kabyle = TranslationTask(language="kab", target_language_guard=False)  # scored without language metrics
    assert kabyle.reward_guards == () and "target_language" not in kabyle.info_metrics
    assert "language" not in kabyle.samples("test")[0].meta
    assert TranslationTask(language="pt_BR").samples("test")[0].meta["language"] == "pt"
    assert TranslationTask(language="de", source_language="english").lingua_languages == ("de", "en")


def test_every_data_source_carries_the_languages(tmp_path) -> None:
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps({"source": f"Open file {i}", "target": f"Ouvrir le fichier {i}"}) for i in range(20)))
    datasets = pytest.importorskip("datasets")
    dataset = datasets.Dataset.from_list([json.loads(line) for line in path.read_text().splitlines()])
    for task in (TranslationTask(data_files=str(path)), TranslationTask(dataset=dataset)):
        samples = [s for split in ("train", "validation", "test") for s in task.samples(split)]
        assert len(samples) == 20 and all((s.meta["language"], s.meta["source_language"]) == ("fr", "en") for s in samples)
    assert all(s.meta["file"] for s in TranslationTask().samples("validation"))  # the catalog's own meta is kept
    with pytest.raises(ConfigError, match=r"metric 'language_guard' needs the sample's languages .*sample 'x'"):
        compute_metrics(("language_guard",), ["a"], [Sample("x", "a", ("b",))])


def test_metric_values_match_lingua_and_sacrebleu() -> None:
    samples = TranslationTask().samples("test")
    sources, refs = [s.prompt for s in samples], [s.references[0] for s in samples]
    names = ("target_language", "language_guard", "copy_score", "source_copy")
    for answers in (sources, refs, [r.upper() for r in refs], [f"{s}  " for s in sources]):
        out = compute_metrics(names, answers, samples)
        assert out["target_language"].tolist() == [float(french(a)) for a in answers]
        assert out["language_guard"].tolist() == [float(french(a) or not french(r)) for a, r in zip(answers, refs)]
        assert out["copy_score"].tolist() == [sacrebleu.sentence_chrf(a, [s]).score / 100 for a, s in zip(answers, sources)]
        assert out["source_copy"].tolist() == [float(" ".join(a.lower().split()) == " ".join(s.lower().split()))
                                                for a, s in zip(answers, sources)]
    assert compute_metrics(("language_guard",), refs, samples)["language_guard"].min() == 1.0  # by construction
    words = compute_metrics(("words", "distinct_2"), ["a b  c", "", "x y x y"], samples[:3])
    assert words["words"].tolist() == [3.0, 0.0, 4.0] and words["distinct_2"].tolist() == [1.0, 0.0, 2 / 3]


@pytest.mark.parametrize("env_id", ["textgym/Summarization-v0", "textgym/Dialogue-v0", "textgym/Translation-v0"])
def test_text_tasks_report_words_and_distinct_2(env_id) -> None:
    env = SequenceLevel(gym.make(env_id, model=TINY, split="test"))
    env.reset(seed=0)
    *_, info = env.step("the answer is the answer is here")  # bigrams: 6, of which 4 distinct
    assert info["metrics"]["words"] == 7.0 and info["metrics"]["distinct_2"] == 4 / 6


def test_readme_guards_block_runs_as_written(capsys) -> None:
    from tests.test_authoring import readme_block

    namespace: dict = {"__name__": "readme"}
    exec(compile(readme_block("guards"), "README.md", "exec"), namespace)
    rewards, chrf = namespace["rewards"], namespace["chrf"]
    assert rewards[True] == 0.0 and rewards[False] == chrf > 0
    assert "guard on" in capsys.readouterr().out
