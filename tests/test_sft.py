"""Supervised warm start (agents.sft, textgym sft), RL from it (textgym train --init), the answers' naturalness
under the original model (eval --reference) and the trained-agent leaderboard (textgym bench --recipes)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import textgym  # noqa: F401
from agents.common.lm import load_causal_lm
from agents.recipes import RecipeBudget, parse_recipes, run_recipes, sample_scores
from agents.sft import SFTConfig, answer_loss, demonstrations, sft_meta, train_sft
from textgym.cli import build_parser, main
from textgym.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = "tiny-random"


@pytest.fixture(scope="module")
def warm(tmp_path_factory) -> dict:
    """A warm start of Copy-v0 (tiny-random, a rate for a random model)."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("sft") / "copy-sft"
    config = SFTConfig(epochs=2, learning_rate=3e-3, max_samples=128, validation_samples=32)
    return train_sft("textgym/Copy-v0", model=TINY, out=out, config=config, progress=False)


def test_the_warm_start_learns_the_references_held_out(warm) -> None:
    losses = warm["validation_loss"]  # before training, then after each epoch (answer tokens of validation samples)
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.5 * losses[0], losses
    run = Path(warm["checkpoint"]).parent
    rows = (run / "progress.csv").read_text().splitlines()
    assert rows[0].startswith("sft/loss") and len(rows) - 1 >= warm["steps"]
    assert list(run.glob("events.out.tfevents.*"))


def test_the_checkpoint_is_a_model_dir_with_its_settings(warm) -> None:
    path = Path(warm["checkpoint"])
    meta = sft_meta(path)
    assert meta["env"] == "textgym/Copy-v0" and meta["base_model"] == TINY and meta["epochs"] == 2
    assert meta["steps"] == warm["steps"] == 2 * math.ceil(128 / 8)
    trained, base = load_causal_lm(str(path)), load_causal_lm(TINY)
    moved = [n for (n, p), q in zip(trained.named_parameters(), base.parameters()) if not torch.equal(p, q)]
    assert moved  # the weights changed, and the tokenizer travels with them
    assert (path / "tokenizer.json").is_file()


def test_demonstrations_are_the_envs_prompt_then_the_reference_and_eos() -> None:
    env = gym.make("textgym/Copy-v0", model=TINY, max_new_tokens=4)
    setup = env.unwrapped.setup
    obs, info = env.reset(seed=0, options={"index": 3})
    (prompt, answer), = demonstrations(setup, [3])
    mask = obs["attention_mask"][: setup.max_prompt_tokens].astype(bool)
    assert prompt == obs["input_ids"][: setup.max_prompt_tokens][mask].tolist()
    reference = setup.tokenizer(setup.samples[3].references[0], add_special_tokens=False)["input_ids"]
    assert answer == (reference + [setup.eos_id])[:4]  # cut as the env cuts an episode


def test_the_loss_is_on_answer_tokens_only_and_padding_changes_nothing() -> None:
    lm = load_causal_lm(TINY).eval()
    rows = [([5, 6, 7, 8, 9], [10, 11]), ([12, 13], [14, 15, 16, 2])]
    with torch.no_grad():
        loss, n = answer_loss(lm, rows, pad_id=0, device="cpu")
        hand = 0.0
        for prompt, answer in rows:  # each row alone, unpadded, through the bare model
            logits = lm(torch.tensor([prompt + answer])).logits[0]
            hand += float(F.cross_entropy(logits[len(prompt) - 1 : -1], torch.tensor(answer), reduction="sum"))
    assert n == 6 and float(loss) == pytest.approx(hand, rel=1e-5)


def test_micro_batches_take_the_same_step_in_smaller_forwards(tmp_path, monkeypatch) -> None:
    """``micro_batch_tokens`` splits a batch into forwards of at most that many padded tokens, and the gradients
    add up to the whole batch's: the same weights after training (fp32)."""
    import agents.sft as sft

    forwards: list[tuple[int, int]] = []  # (rows, padded width) of each training forward

    def recording(lm, rows, pad_id, device):
        if lm.training:
            forwards.append((len(rows), max(len(p) + len(a) for p, a in rows)))
        return answer_loss(lm, rows, pad_id, device)

    monkeypatch.setattr(sft, "answer_loss", recording)
    base = SFTConfig(epochs=1, learning_rate=3e-3, max_samples=32, validation_samples=8, bf16=False)
    whole = train_sft("textgym/Copy-v0", model=TINY, out=tmp_path / "whole", progress=False,
                      config=dataclasses.replace(base, micro_batch_tokens=None))  # fmt: skip
    assert {rows for rows, _ in forwards} == {8}
    limit = 3 * max(width for _, width in forwards)
    forwards.clear()
    split = train_sft("textgym/Copy-v0", model=TINY, out=tmp_path / "split", progress=False,
                      config=dataclasses.replace(base, micro_batch_tokens=limit))  # fmt: skip
    assert all(rows * width <= limit for rows, width in forwards) and len(forwards) >= 3 * whole["steps"], forwards
    assert 0 < split["tokens"] == whole["tokens"] <= sum(rows * width for rows, width in forwards)  # padding left out
    assert split["steps"] == whole["steps"] and split["train_loss"] == pytest.approx(whole["train_loss"], rel=1e-5)
    assert split["validation_loss"] == pytest.approx(whole["validation_loss"], rel=1e-5)
    a, b = load_causal_lm(whole["checkpoint"]), load_causal_lm(split["checkpoint"])
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=name)
    assert not torch.equal(next(a.parameters()), next(load_causal_lm(TINY).parameters()))  # it did train
    with pytest.raises(ConfigError, match="micro_batch_tokens must be an integer >= 1, got 0"):
        SFTConfig(micro_batch_tokens=0)


def test_sft_micro_batch_tokens_flag(capsys) -> None:
    parser = build_parser()
    assert parser.parse_args(["sft", "textgym/Copy-v0"]).micro_batch_tokens == SFTConfig().micro_batch_tokens == 2048
    assert parser.parse_args(["sft", "textgym/Copy-v0", "--micro-batch-tokens", "none"]).micro_batch_tokens is None
    assert parser.parse_args(["sft", "textgym/Copy-v0", "--micro-batch-tokens", "512"]).micro_batch_tokens == 512
    with pytest.raises(SystemExit):
        parser.parse_args(["sft", "textgym/Copy-v0", "--micro-batch-tokens", "0"])
    assert "invalid value '0'; expected a positive integer or none" in capsys.readouterr().err


def test_bad_settings_are_refused_with_the_reason() -> None:
    with pytest.raises(ConfigError, match="epochs must be an integer >= 1"):
        SFTConfig(epochs=0)
    with pytest.raises(ConfigError, match="learning_rate must be a finite number > 0"):
        SFTConfig(learning_rate=float("nan"))
    with pytest.raises(ConfigError, match="single-turn answers.*max_turns=4"):
        train_sft("textgym/GuessNumber-v0", model=TINY, out="/tmp/textgym-never", progress=False)
    with pytest.raises(ConfigError, match="unknown recipe.*allowed: zero-shot, sft, ppo"):
        parse_recipes("sft+sft")


def test_train_init_starts_from_the_warm_start_which_is_also_the_reference(warm, tmp_path, capsys) -> None:
    run = str(Path(warm["checkpoint"]).parent)
    out = tmp_path / "rl"
    assert main(["train", "textgym/Copy-v0", "--init", run, "--timesteps", "64", "--out", str(out), "--report-to", "csv"]) == 0
    from agents import load_agent

    agent = load_agent(out)
    assert agent.model_spec == warm["checkpoint"]
    warm_lm = load_causal_lm(warm["checkpoint"])
    for p, q in zip(agent.reference.parameters(), warm_lm.parameters()):
        assert torch.equal(p, q)
    assert main(["train", "textgym/Copy-v0", "--init", run, "--model", TINY]) == 2
    assert "drop --model" in capsys.readouterr().err
    assert main(["train", "textgym/Translation-v0", "--init", run]) == 2
    assert "a warm start on 'textgym/Copy-v0', not 'textgym/Translation-v0'" in capsys.readouterr().err


def test_eval_reference_scores_perplexity_and_logratio(warm, capsys) -> None:
    assert main(["eval", "textgym/Copy-v0", "--checkpoint", warm["checkpoint"], "--reference", TINY, "--episodes", "8",
                 "--json"]) == 0  # fmt: skip
    summary = json.loads(capsys.readouterr().out)
    nat = summary["naturalness"]
    assert nat["perplexity"] > 1 and math.isfinite(nat["logratio"])
    assert main(["eval", "textgym/Copy-v0", "--model", TINY, "--reference", TINY, "--episodes", "8", "--json"]) == 0
    same = json.loads(capsys.readouterr().out)["naturalness"]
    assert same["logratio"] == pytest.approx(0.0, abs=1e-6)  # a model against itself


def test_naturalness_reuses_the_rollouts_log_probs(warm) -> None:
    from agents.common.policies import policy_for
    from agents.evaluation import evaluate_policy_on_env

    env = gym.make_vec("textgym/Copy-v0", num_envs=4, split="test", model=warm["checkpoint"])
    policy = policy_for(warm["checkpoint"], env.text_spec.vocab_size, env.text_spec.action_mask)
    forced = evaluate_policy_on_env(policy, env, 8, reference=load_causal_lm(TINY))  # reference: another model
    own = evaluate_policy_on_env(policy, env, 8, reference=policy.lm)  # the policy against itself: no forward
    for a, b in zip(forced["records"], own["records"]):
        assert a["output"] == b["output"] and a["scored_tokens"] == b["scored_tokens"] > 0
        assert a["logp_policy"] == b["logp_policy"] == b["logp_reference"]  # the log-probs the decode recorded
    # ... which are the ones a teacher-forced forward of the policy gives (the reference's own path)
    again = evaluate_policy_on_env(policy, env, 8, reference=load_causal_lm(warm["checkpoint"]))
    for a, b in zip(own["records"], again["records"]):
        assert b["logp_reference"] == pytest.approx(a["logp_policy"], rel=1e-4, abs=1e-4)
    assert forced["naturalness"]["logratio"] != 0.0 and own["naturalness"]["logratio"] == 0.0


def test_the_leaderboard_trains_each_recipe_once_and_resumes(tmp_path, monkeypatch) -> None:
    budget = RecipeBudget(sft_epochs=1, updates=1, num_envs=8, max_new_tokens=8)
    monkeypatch.chdir(tmp_path)
    kwargs = dict(seeds=[0], budget=budget, episodes=8, model=TINY, out="lb", progress=False)
    results = run_recipes("textgym/Copy-v0", "sft,sft+ppo", **kwargs)
    cells = {c["recipe"]: c for c in results["cells"]}
    assert set(cells) == {"zero-shot", "sft", "sft+ppo"} and not any(c["error"] for c in cells.values())
    # sft+ppo started from the same warm start as sft (trained once), and trained one update from it
    assert cells["sft+ppo"]["stages"]["sft"]["checkpoint"] == cells["sft"]["stages"]["sft"]["checkpoint"]
    assert cells["sft+ppo"]["stages"]["ppo"]["updates"] == 1
    assert cells["zero-shot"]["naturalness"]["logratio"] == pytest.approx(0.0, abs=1e-6)
    assert cells["sft"]["settings"]["budget"]["bf16"] in (True, False)  # "auto" is stored as what it meant here
    rows = {r["recipe"]: r for r in results["table"]}
    diff = np.asarray(sample_scores(cells["sft"])) - np.asarray(sample_scores(cells["zero-shot"]))
    assert rows["sft"]["change"] == pytest.approx(diff.mean())
    assert rows["sft"]["change_se"] == pytest.approx(diff.std(ddof=1) / math.sqrt(len(diff)))
    rl = np.asarray(sample_scores(cells["sft+ppo"])) - np.asarray(sample_scores(cells["sft"]))  # what the RL stage added
    assert rows["sft+ppo"]["change_vs_sft"] == pytest.approx(rl.mean()) and "change_vs_sft" not in rows["sft"]
    md = (tmp_path / "lb" / "results.md").read_text()
    assert "| Copy-v0 | sft+ppo |" in md and (tmp_path / "lb" / "leaderboard.png").is_file()
    stamp = {p: p.stat().st_mtime_ns for p in (tmp_path / "lb" / "cells").iterdir()}
    same = dataclasses.replace(budget, sft_config={"micro_batch_tokens": 16})  # how a step is computed, not the step
    again = run_recipes("textgym/Copy-v0", "sft,sft+ppo", **{**kwargs, "budget": same})  # resumes: nothing is trained again
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "lb" / "cells").iterdir()} == stamp
    assert again["table"] == results["table"]
    monkeypatch.chdir(tmp_path / "lb")  # the runs resume from another working directory
    more = run_recipes("textgym/Copy-v0", "sft,sft+ppo", **{**kwargs, "out": tmp_path / "lb",
                                                            "budget": dataclasses.replace(budget, updates=2)})
    assert not any(c["error"] for c in more["cells"])
    changed = {p.name for p in (tmp_path / "lb" / "cells").iterdir() if p.stat().st_mtime_ns != stamp[p]}
    assert changed == {"textgym_Copy-v0__sft+ppo__seed0.json"}  # more RL updates retrain the RL recipe only
    assert {c["recipe"]: c for c in more["cells"]}["sft+ppo"]["stages"]["ppo"]["updates"] == 2
    # --table-only: the table of what is stored, nothing trained; a recipe never run is listed as such
    files = set((tmp_path / "lb" / "cells").iterdir())
    table = run_recipes("textgym/Copy-v0", "sft,sft+ppo,sft+grpo", **{**kwargs, "out": tmp_path / "lb", "train": False,
                                                                      "budget": dataclasses.replace(budget, updates=2)})
    assert set((tmp_path / "lb" / "cells").iterdir()) == files
    rows = {r["recipe"]: r for r in table["table"]}
    assert rows["sft+grpo"]["not_run"] and rows["sft+ppo"]["mean"] == {r["recipe"]: r for r in more["table"]}["sft+ppo"]["mean"]
    assert "| Copy-v0 | sft+grpo | not run yet |" in (tmp_path / "lb" / "results.md").read_text()
    other = run_recipes("textgym/Copy-v0", "sft", **{**kwargs, "out": tmp_path / "lb", "train": False, "seeds": [1]})
    rows = {r["recipe"]: r for r in other["table"]}  # zero-shot is seed-free: the stored cell serves other seeds
    assert rows["zero-shot"]["mean"] == {r["recipe"]: r for r in results["table"]}["zero-shot"]["mean"]
    assert rows["sft"]["not_run"]
    # another warm-start config: the warm start is trained again and the RL run restarts from it (never resumed
    # from a run that started from the old weights)
    lower = dataclasses.replace(budget, sft_config={"learning_rate": 1e-5})  # and 1 update, where a 2-update run is stored
    redone = run_recipes("textgym/Copy-v0", "sft,sft+ppo", **{**kwargs, "out": tmp_path / "lb", "budget": lower})
    cells = {c["recipe"]: c for c in redone["cells"]}
    assert not any(c["error"] for c in cells.values()) and cells["sft"]["settings"]["sft"]["learning_rate"] == 1e-5
    assert sft_meta(cells["sft"]["stages"]["sft"]["checkpoint"])["config"]["learning_rate"] == 1e-5
    ppo_run = tmp_path / "lb" / "runs" / "textgym_Copy-v0" / "sft+ppo-seed0"
    history = [float(line.split(",")[0]) for line in (ppo_run / "progress.csv").read_text().splitlines()[1:]]
    assert cells["sft+ppo"]["stages"]["ppo"]["updates"] == 1 and len(history) == 1  # a fresh run, not the stored one


def test_bench_rl_config_and_split_set_every_rl_stage_and_bad_ones_fail_before_training(tmp_path, capsys) -> None:
    out = tmp_path / "lb"
    args = ["bench", "--recipes", "ppo", "--envs", "textgym/Copy-v0", "--model", TINY, "--updates", "1",
            "--num-envs", "8", "--max-new-tokens", "8", "--episodes", "4", "--out", str(out)]
    assert main([*args, "--rl-config", '{"temprature": 0.3}']) == 2  # a misspelt field: refused before any training
    assert "unknown PPOConfig field(s) ['temprature']" in capsys.readouterr().err and not (out / "runs").exists()
    with pytest.raises(SystemExit):
        main([*args, "--rl-config", "[0.3]"])
    assert "expected a JSON object" in capsys.readouterr().err
    assert main([*args, "--rl-config", '{"temperature": 0.3}']) == 0
    assert "RL: 1 updates x 8 episodes, temperature 0.3;" in capsys.readouterr().out  # the table states it
    cell = json.loads((out / "cells" / "textgym_Copy-v0__ppo__seed0.json").read_text())
    assert cell["settings"]["budget"]["rl_config"] == {"temperature": 0.3} and not cell["error"]
    saved = json.loads(Path(cell["stages"]["ppo"]["checkpoint"], "textppo.json").read_text())
    assert saved["config"]["temperature"] == 0.3 and saved["env"]["kwargs"]["split"] == "train"  # what it trained with
    # a cell and a run stored before a budget field existed are read with it at its default: reused, not retrained
    run = out / "runs" / "textgym_Copy-v0" / "ppo-seed0"
    for path in (out / "cells" / "textgym_Copy-v0__ppo__seed0.json", run / "origin.json"):
        data = json.loads(path.read_text())
        del (data["settings"] if "settings" in data else data)["budget"]["rl_split"]
        path.write_text(json.dumps(data))
    stamp = {p: p.stat().st_mtime_ns for p in [*(out / "cells").iterdir(), *run.rglob("*.safetensors")]}
    assert main([*args, "--rl-config", '{"temperature": 0.3}']) == 0
    assert {p: p.stat().st_mtime_ns for p in stamp} == stamp
    # --rl-split validation: RL on prompts a warm start never saw (a new run); the test split is refused
    assert main([*args, "--rl-config", '{"temperature": 0.3}', "--rl-split", "test"]) == 2
    assert "rl_split must be train or validation, got 'test'" in capsys.readouterr().err
    assert main([*args, "--rl-config", '{"temperature": 0.3}', "--rl-split", "validation"]) == 0
    assert "temperature 0.3, prompts from the validation split;" in capsys.readouterr().out
    saved = json.loads(Path(run, "checkpoint-000001", "textppo.json").read_text())
    assert saved["env"]["kwargs"]["split"] == "validation"


def test_the_budget_resolves_auto_to_the_dtype_this_machine_trains_in(monkeypatch) -> None:
    from agents.common import agent

    for native in (True, False):
        monkeypatch.setattr(agent, "cpu_has_native_bf16", lambda native=native: native)
        assert RecipeBudget().resolved("cpu").bf16 is native
        assert "bf16 " + str(native) in RecipeBudget().resolved("cpu").describe()
    assert RecipeBudget(bf16=False).resolved("cpu").bf16 is False
    with pytest.raises(ConfigError, match="--device 'gpu' is not a device"):
        RecipeBudget().resolved("gpu")


def test_readme_warm_start_block_runs_as_written(tmp_path, monkeypatch, capsys) -> None:
    from tests.test_authoring import readme_block

    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "readme"}
    exec(compile(readme_block("warm-start"), "README.md", "exec"), namespace)
    losses = namespace["summary"]["validation_loss"]
    assert losses[-1] < losses[0] and namespace["agent"].n_updates >= 1
    assert "validation loss per epoch" in capsys.readouterr().out


def test_a_warm_start_recipe_on_a_multi_turn_task_is_skipped_not_failed(tmp_path) -> None:
    results = run_recipes("textgym/GuessNumber-v0", "sft", seeds=[0], budget=RecipeBudget(updates=1), episodes=2,
                          model=TINY, out=tmp_path, progress=False)  # fmt: skip
    rows = {r["recipe"]: r for r in results["table"]}
    assert "multi-turn" in rows["sft"]["skipped"] and "mean" in rows["zero-shot"]
    assert not any(c.get("error") for c in results["cells"])
    assert "skipped: no warm start for a multi-turn task" in (tmp_path / "results.md").read_text()


def test_an_rl_stage_stopped_by_a_signal_is_not_scored_as_the_budget(tmp_path, monkeypatch) -> None:
    from agents.ppo import TextPPO
    from agents.recipes import rl_stage

    monkeypatch.setattr(TextPPO, "learn", lambda self, **kwargs: self)  # returns before any update, as after SIGTERM
    with pytest.raises(KeyboardInterrupt, match="after 0 of 2 updates"):
        rl_stage("textgym/Copy-v0", "ppo", TINY, 0, RecipeBudget(updates=2, num_envs=8), tmp_path / "run", "cpu")
    assert list((tmp_path / "run").glob("checkpoint-*"))  # saved: the same command resumes it


def test_bench_stopped_by_a_signal_says_what_it_kept_in_one_line(tmp_path, monkeypatch, capsys) -> None:
    from agents.ppo import TextPPO

    monkeypatch.setattr(TextPPO, "learn", lambda self, **kwargs: self)  # returns before any update, as after SIGTERM
    args = ["bench", "--recipes", "ppo", "--envs", "textgym/Copy-v0", "--model", TINY, "--updates", "2",
            "--num-envs", "8", "--max-new-tokens", "8", "--episodes", "4", "--out", str(tmp_path / "lb")]  # fmt: skip
    assert main(args) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and "textgym: interrupted: " in err and "after 0 of 2 updates (saved)" in err


def test_bench_processes_sharing_an_out_make_each_cell_once(tmp_path, monkeypatch) -> None:
    """Two leaderboards on one --out (one per seed, side by side; threads here, processes alike: it is a file
    lock) take turns on the cells they share: the zero-shot cell is scored by one and read by the other, and each
    seed's cell is made once."""
    import threading
    import time

    from agents import recipes

    made: list[tuple[str, int]] = []

    def slow_cell(env_id, recipe, seed, *args, **kwargs):
        made.append((recipe, seed))
        time.sleep(0.5)  # long enough for the other leaderboard to reach the same cell
        return {"main_metric": "copy_accuracy", "n": 2, "metrics": {}, "tokens_mean": 3.0,
                "naturalness": {"logratio": 0.0, "perplexity": 1.0},
                "records": [{"metrics": {"copy_accuracy": float(seed)}}, {"metrics": {"copy_accuracy": 0.5}}]}  # fmt: skip

    failures: list[BaseException] = []
    monkeypatch.setattr(recipes, "run_recipe_cell", slow_cell)
    monkeypatch.setattr(threading, "excepthook", lambda args: failures.append(args.exc_value))
    from transformers import AutoTokenizer  # noqa: F401  # transformers' lazy imports are not thread-safe
    kwargs = {"budget": RecipeBudget(updates=1), "out": tmp_path / "lb", "progress": False, "model": "tiny-random"}
    runs = [threading.Thread(target=recipes.run_recipes, args=("textgym/Copy-v0", "sft"), kwargs={**kwargs, "seeds": [s]})
            for s in (0, 1)]  # fmt: skip
    for run in runs:
        run.start()
    for run in runs:
        run.join()
    assert not failures, failures
    assert sorted(made) == [("sft", 0), ("sft", 1), ("zero-shot", 0)]
