"""The demo (``python -m agents.demo``): its flags and one tiny end-to-end run."""

from __future__ import annotations

import json

from agents import demo


def test_demo_flags_parse():
    args = demo.parse_args(["--env-kwargs", '{"max_prompt_tokens": 64}', "--rl-config", '{"kl_coef": 0.05}', "--updates", "3"])
    assert args.env_kwargs == {"max_prompt_tokens": 64} and args.rl_config == {"kl_coef": 0.05} and args.updates == 3
    defaults = demo.parse_args([])
    assert defaults.env == "textgym/Translation-v0" and defaults.algo == "ppo" and defaults.eval_episodes is None
    assert defaults.sft_epochs >= 1 and defaults.updates >= 1  # a budget in epochs and updates, never in minutes


def test_demo_runs_end_to_end_with_the_tiny_model(tmp_path, tiny):
    args = demo.parse_args(
        ["--out", str(tmp_path), "--env", "textgym/Copy-v0", "--model", tiny, "--sft-epochs", "1", "--updates", "2",
         "--eval-episodes", "4", "--num-envs", "4", "--max-new-tokens", "4", "--threads", "1", "--bf16", "false"]
    )  # fmt: skip
    results = demo.run(args)
    cells = {c["recipe"]: c for c in results["cells"]}
    assert set(cells) == {"zero-shot", "sft", "sft+ppo"} and all(c["n"] == 4 for c in cells.values())
    assert cells["sft+ppo"]["stages"]["ppo"]["updates"] == 2  # the budget is counted in updates
    saved = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    rows = {r["recipe"]: r for r in saved["table"]}
    assert rows["sft+ppo"]["change_se"] >= 0 and "perplexity" in rows["sft"]
    lines = (tmp_path / "samples.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 4 and set(json.loads(lines[0])) >= {"prompt", "zero-shot", "sft", "sft+ppo"}
    assert (tmp_path / "learning_curve.png").is_file() and "| Copy-v0 | sft+ppo |" in (tmp_path / "results.md").read_text()
