"""The demo (``python -m agents.demo``): its flags and one tiny end-to-end run."""

from __future__ import annotations

import json

from agents import demo


def test_demo_flags_parse():
    args = demo.parse_args(
        ["--env-kwargs", '{"max_prompt_tokens": 64}', "--n-rollouts", "2", "--batch-size", "4", "--lora"]
    )
    assert args.env_kwargs == {"max_prompt_tokens": 64}
    assert args.n_rollouts == 2 and args.batch_size == 4 and args.lora
    defaults = demo.parse_args([])
    assert defaults.env_kwargs == {} and defaults.batch_size is None and defaults.n_rollouts == 1


def test_demo_runs_end_to_end_with_the_tiny_model(tmp_path, tiny):
    args = demo.parse_args(
        ["--out", str(tmp_path), "--env", "textgym/Copy-v0", "--model", tiny, "--minutes", "0.001",
         "--eval-episodes", "4", "--num-envs", "4", "--max-new-tokens", "4", "--env-kwargs", "{}",
         "--threads", "1"]
    )  # fmt: skip
    results = demo.run(args)
    assert results["test_samples"] == 4 and results["updates"] >= 1
    assert results["train_episodes"] == results["updates"] * 4
    saved = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    assert saved["main_metric"] == results["main_metric"] and "final_kl_to_reference" in saved
    assert saved["change_standard_error"] >= 0
    assert (tmp_path / "learning_curve.png").is_file() and (tmp_path / "samples.jsonl").is_file()


def test_ppo_real_task_benchmark_prints_a_table(tmp_path, tiny, capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "ppo_real_task.py"
    spec = importlib.util.spec_from_file_location("ppo_real_task", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--seeds", "0", "--out", str(tmp_path), "--", "--env", "textgym/Copy-v0", "--model", tiny,
                 "--minutes", "0.001", "--eval-episodes", "4", "--num-envs", "4", "--max-new-tokens", "4"])  # fmt: skip
    table = (tmp_path / "summary.md").read_text(encoding="utf-8")
    assert "| 0 | 4 |" in table and "final KL to ref" in table
    assert (tmp_path / "seed0" / "results.json").is_file()
