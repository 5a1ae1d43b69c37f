"""Translation-v0: gettext data, other data sources, and rewards equal to sacrebleu's."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
import sacrebleu

from tests.conftest import TINY
from textgym.data import Sample
from textgym.data.gettext import read_po
from textgym.errors import DataError
from textgym.rewards import Reward
from textgym.tasks.translation import placeholder_scores

PO = r'''# header comment
msgid ""
msgstr ""
"Content-Type: text/plain; charset=UTF-8\n"

#: app/views.py:10
msgid "Save"
msgstr "Enregistrer"

#, fuzzy
msgid "Delete"
msgstr "Supprimer peut-être"

msgctxt "verb"
msgid "Open"
msgstr "Ouvrir"

msgid "Hello %(name)s, you have "
"{count} messages"
msgstr "Bonjour %(name)s, vous avez "
"{count} messages"

msgid "one file"
msgid_plural "%d files"
msgstr[0] "un fichier"
msgstr[1] "%d fichiers"

msgid "Untranslated"
msgstr ""

#~ msgid "Old"
#~ msgstr "Vieux"
'''


def write_catalog(root, lang="fr"):
    folder = root / lang / "LC_MESSAGES"
    folder.mkdir(parents=True)
    (folder / "django.po").write_text(PO, encoding="utf-8")
    return root


def test_po_reader_keeps_translated_entries_only(tmp_path) -> None:
    entries = list(read_po(write_catalog(tmp_path) / "fr" / "LC_MESSAGES" / "django.po"))
    pairs = [(e.msgid, e.msgstr, e.msgctxt) for e in entries]
    assert pairs == [
        ("Save", "Enregistrer", None),
        ("Open", "Ouvrir", "verb"),
        ("Hello %(name)s, you have {count} messages", "Bonjour %(name)s, vous avez {count} messages", None),
        ("one file", "un fichier", None),
    ]


def test_po_reader_reports_file_and_line(tmp_path) -> None:
    path = tmp_path / "bad.po"
    path.write_text('msgid "a"\nmsgstr "b"\nbogus "c"\n')
    with pytest.raises(DataError, match=rf"{path}:3: unknown keyword 'bogus'"):
        list(read_po(path))


def test_po_dir_is_a_data_source(tmp_path) -> None:
    root = write_catalog(tmp_path)
    sources = set()
    for split in ("train", "validation", "test"):
        try:
            env = gym.make("textgym/Translation-v0", model=TINY, po_dir=str(root), split=split)
        except DataError:
            continue  # 4 strings: a split may be empty, and says so
        sources |= {s.prompt for s in env.unwrapped.setup.samples}
    assert sources == {"Save", "Open", "Hello %(name)s, you have {count} messages", "one file"}


def test_default_catalog_is_django_french() -> None:
    env = gym.make("textgym/Translation-v0", model=TINY)
    task = env.unwrapped.task
    total = sum(task.splits_info().values())
    assert total > 800  # distinct English strings with a French translation
    assert any(s.references == ("Enregistrer",) for s in task._catalog_samples() if s.prompt == "Save")
    german = gym.make("textgym/Translation-v0", model=TINY, language="de").unwrapped.task._catalog_samples()
    assert [s.references for s in german if s.prompt == "Save"] == [("Sichern",)]  # django admin's German catalog
    assert all("/de/LC_MESSAGES/" in s.meta["file"] for s in german)


def test_data_files_jsonl_per_split(tmp_path) -> None:
    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    train.write_text("\n".join(json.dumps({"en": f"Word {i}", "fr": f"Mot {i}"}) for i in range(5)))
    test.write_text(json.dumps({"en": "File", "fr": "Fichier"}))
    env = gym.make(
        "textgym/Translation-v0",
        model=TINY,
        split="test",
        data_files={"train": str(train), "test": str(test)},
        fields={"prompt": "en", "references": "fr"},
    )
    _, info = env.reset(seed=0)
    assert info["prompt"] == "File" and info["references"] == ["Fichier"]


def test_saved_hf_dataset_is_a_data_source(tmp_path) -> None:
    datasets = pytest.importorskip("datasets")
    ds = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"source": ["Yes", "No"], "target": ["Oui", "Non"]}),
            "test": datasets.Dataset.from_dict({"source": ["Cancel"], "target": ["Annuler"]}),
        }
    )
    ds.save_to_disk(str(tmp_path / "ds"))
    env = gym.make("textgym/Translation-v0", model=TINY, split="test", dataset=str(tmp_path / "ds"))
    _, info = env.reset(seed=0)
    assert (info["prompt"], info["references"]) == ("Cancel", ["Annuler"])


HYPS = ["Enregistrer le fichier", "", "Bonjour %(name)s", "le chat est sur le tapis", "Supprimer"]
REFS = ["Enregistrer", "Annuler", "Bonjour %(name)s !", "le chat est sur le tapis", "Effacer l'objet"]


def test_metrics_equal_sacrebleu_on_the_same_strings() -> None:
    samples = [Sample(id=str(i), prompt="x", references=(r,)) for i, r in enumerate(REFS)]
    out = Reward("chrf", extra_metrics=("bleu", "ter"))(HYPS, samples)
    for i, (h, r) in enumerate(zip(HYPS, REFS)):
        assert out.metrics["chrf"][i] == sacrebleu.sentence_chrf(h, [r]).score / 100
        assert out.metrics["bleu"][i] == sacrebleu.sentence_bleu(h, [r]).score / 100
        assert out.metrics["ter"][i] == sacrebleu.sentence_ter(h, [r]).score / 100
    np.testing.assert_array_equal(out.scores, out.metrics["chrf"])
    assert out.metrics["chrf"][3] == 1.0 and out.metrics["chrf"][1] == 0.0


def test_env_reward_equals_sacrebleu_chrf_of_the_generated_text() -> None:
    env = gym.make("textgym/Translation-v0", model=TINY, max_new_tokens=12)
    _, info = env.reset(seed=4)
    tok = env.unwrapped.tokenizer
    ids = tok.encode(info["references"][0][:12] + " fin", add_special_tokens=False)[:11]
    for t in ids:
        *_, info_end = env.step(t)
    _, reward, terminated, _, info_end = env.step(env.unwrapped.setup.eos_id)
    assert terminated
    expected = sacrebleu.sentence_chrf(info_end["generated_text"], info_end["references"]).score / 100
    assert reward == expected and info_end["metrics"]["chrf"] == expected


def test_weighted_reward_with_placeholder_bonus() -> None:
    samples = [Sample(id="a", prompt="Hello %(name)s, {count} new", references=("Bonjour %(name)s, {count} nouveaux",))]
    reward = Reward({"chrf": 0.8, "placeholders": 0.2})
    kept = reward(["Bonjour %(name)s, {count} nouveaux"], samples)
    dropped = reward(["Bonjour, nouveaux"], samples)
    assert kept.metrics["placeholders"][0] == 1.0 and dropped.metrics["placeholders"][0] == 0.0
    assert kept.scores[0] == pytest.approx(0.8 * kept.metrics["chrf"][0] + 0.2)
    assert placeholder_scores(["x"], [Sample(id="b", prompt="no placeholders")], frozenset())["placeholders"][0] == 1.0


def test_scoring_workers_give_the_same_metrics_as_in_process() -> None:
    from textgym.rewards.base import compute_metrics

    texts = [f"{h} {i}" for i, h in enumerate(HYPS * 8)]
    samples = [Sample(id=str(i), prompt="x", references=(REFS[i % len(REFS)],)) for i in range(len(texts))]
    names = ("chrf", "bleu", "ter", "placeholders")
    local = compute_metrics(names, texts, samples)
    pooled = compute_metrics(names, texts, samples, workers=2)
    for name in names:
        np.testing.assert_array_equal(local[name], pooled[name])
