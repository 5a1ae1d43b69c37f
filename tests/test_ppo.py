"""TextPPO end to end on Copy-v0 with the tiny random model: learning, resume, callbacks, bad input."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3.common.callbacks import BaseCallback, CheckpointCallback, EvalCallback
from stable_baselines3.common.logger import configure

import textgym  # noqa: F401
from agents import TextPPO
from agents.common.persistence import CheckpointError
from textgym.errors import ModelError

FAST = {"model": "tiny-random", "learning_rate": 1e-3, "verbose": 0, "n_epochs": 2, "n_rollouts": 1}


pytestmark = pytest.mark.usefixtures("one_thread")


def copy_env(n: int = 8, **kwargs):
    return gym.make_vec("textgym/Copy-v0", num_envs=n, model="tiny-random", **kwargs)


@pytest.mark.learning
@pytest.mark.slow  # the default suite has TextPPO learning Copy-v0 twice: the README block, the CLI defaults
def test_ppo_learns_copy() -> None:
    """Mean reward of the last 5 updates beats the first 5 by >= 0.03.

    Measured with this exact config (8,000 tokens, ~23 updates, 30-60 s on a shared 2-core CPU):
    margins +0.040, +0.059, +0.073, +0.046, +0.082, +0.059 for seeds 0-5.
    """
    agent = TextPPO("LMPolicy", copy_env(64), model="tiny-random", learning_rate=3e-3, n_epochs=8, batch_size=32,
                    kl_coef=0.0, seed=0, verbose=0)  # fmt: skip
    agent.learn(total_timesteps=8_000)
    rewards = [h["rollout/ep_rew_mean"] for h in agent.history]
    first, last = float(np.mean(rewards[:5])), float(np.mean(rewards[-5:]))
    print(f"updates={len(rewards)} first5={first:.3f} last5={last:.3f}")
    assert last >= first + 0.03, rewards


def test_resume_equals_straight_training(tmp_path: Path) -> None:
    kwargs = {**FAST, "seed": 3, "batch_size": 4, "kl_target": 1.0}  # adaptive KL: its state must resume too
    first = TextPPO("LMPolicy", copy_env(), **kwargs)
    first.learn(1)  # one update
    n1 = first.num_timesteps
    first.save(tmp_path / "ck")
    resumed = TextPPO.load(tmp_path / "ck", env=copy_env())
    assert resumed.num_timesteps == n1 and resumed.kl_ctl == first.kl_ctl
    resumed.learn(1, reset_num_timesteps=False)  # one more update
    straight = TextPPO("LMPolicy", copy_env(), **kwargs)
    straight.learn(n1 + 1)  # two updates in one call
    assert straight.n_updates == resumed.n_updates == 2
    assert straight.num_timesteps == resumed.num_timesteps
    for a, b in zip(straight.policy.state_dict().values(), resumed.policy.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert straight.kl_ctl.value == pytest.approx(resumed.kl_ctl.value)


def test_budget_in_updates_stops_at_the_count_and_resumes(tmp_path: Path, capsys) -> None:
    """learn(updates=N) runs exactly N more updates whatever the answer lengths, its linear schedule reaches 0 at
    the N-th, a resumed run continues toward the saved target, and the progress bar counts updates."""
    seen: list[float] = []
    kwargs = {**FAST, "seed": 1, "learning_rate": lambda remaining: seen.append(remaining) or 1e-3}
    agent = TextPPO("LMPolicy", copy_env(4), **kwargs)
    agent.learn(updates=2, save_dir=tmp_path / "run", progress_bar=True)
    assert agent.n_updates == 2 and agent.total_updates == 2
    assert "2/2" in capsys.readouterr().err  # the bar's count is updates, not tokens
    assert seen[-2:] == [1.0, 0.5]  # progress_remaining before each update
    resumed = TextPPO.load(tmp_path / "run", env=copy_env(4), learning_rate=kwargs["learning_rate"])
    assert resumed.total_updates == 2  # the saved target
    resumed.learn(updates=3, reset_num_timesteps=False)
    assert resumed.n_updates == 5 and resumed.num_timesteps > agent.num_timesteps
    resumed.learn(total_timesteps=1, reset_num_timesteps=False)  # back to a token budget: one update
    assert resumed.n_updates == 6 and resumed.total_updates is None


def test_checkpoint_is_a_plain_hf_model_and_saves_atomically(tmp_path: Path, monkeypatch) -> None:
    from transformers import AutoModelForCausalLM

    from agents.common import persistence

    agent = TextPPO("LMPolicy", copy_env(), seed=0, **FAST)
    agent.learn(1)
    agent.save(tmp_path / "ck")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "ck")
    torch.testing.assert_close(hf.lm_head.weight, agent.policy.lm.lm_head.weight)
    before = sorted(os.listdir(tmp_path / "ck"))

    def crash(agent, out):
        (out / "config.json").write_text("{}")
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(persistence, "_write", crash)
    with pytest.raises(KeyboardInterrupt):
        agent.save(tmp_path / "ck")
    assert sorted(os.listdir(tmp_path / "ck")) == before  # the previous checkpoint is intact
    assert sorted(os.listdir(tmp_path)) == ["ck"]  # no temp dirs left behind
    monkeypatch.undo()
    TextPPO.load(tmp_path / "ck", env=copy_env())


def test_checkpoint_missing_files_are_named(tmp_path: Path) -> None:
    agent = TextPPO("LMPolicy", copy_env(), seed=0, **FAST)
    agent.save(tmp_path / "ck")
    (tmp_path / "ck" / "optimizer.pt").unlink()
    (tmp_path / "ck" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"missing: optimizer.pt, model.safetensors"):
        TextPPO.load(tmp_path / "ck")
    with pytest.raises(CheckpointError, match="does not exist"):
        TextPPO.load(tmp_path / "nowhere")


def test_bad_inputs() -> None:
    env = copy_env(2)
    from transformers import LlamaConfig, LlamaForCausalLM

    small = LlamaForCausalLM(LlamaConfig(vocab_size=1000, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1))  # fmt: skip
    with pytest.raises(ModelError, match=r"49152 tokens.*1000"):
        TextPPO("LMPolicy", env, model=small, verbose=0)
    with pytest.raises(TypeError, match=r"Discrete action space.*Box"):
        TextPPO("LMPolicy", gym.make("Pendulum-v1"), model="tiny-random", verbose=0)
    with pytest.raises(ValueError, match=r"unknown policy 'MlpPolicy'; allowed: \['LMPolicy', 'Seq2SeqLMPolicy', 'auto'\]"):
        TextPPO("MlpPolicy", env, model="tiny-random", verbose=0)
    with pytest.raises(ValueError, match=r"unknown PPOConfig field\(s\) \['n_steps'\]; allowed: \['learning_rate'"):
        TextPPO("LMPolicy", env, model="tiny-random", n_steps=5)
    with pytest.raises(ValueError, match="gae_lambda must be in"):
        TextPPO("LMPolicy", env, model="tiny-random", gae_lambda=2.0)
    with pytest.raises(ValueError, match=r"group_size=3 must divide the env's num_envs=2"):
        TextPPO("LMPolicy", env, model="tiny-random", group_size=3, verbose=0)
    with pytest.raises(ValueError, match=r"group_size must be a positive integer, got 0"):
        TextPPO("LMPolicy", env, model="tiny-random", group_size=0, verbose=0)
    agent = TextPPO("LMPolicy", env, model="tiny-random", verbose=0)
    for bad in (0, -5, 1.5):
        with pytest.raises(ValueError, match=f"total_timesteps must be a positive integer.*got {bad}"):
            agent.learn(bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=f"updates must be a positive integer, got {bad}"):
            agent.learn(updates=bad)  # type: ignore[arg-type]
    for both in ({}, {"total_timesteps": 10, "updates": 1}):
        with pytest.raises(ValueError, match="learn\\(\\) takes one budget: total_timesteps .* or updates"):
            agent.learn(**both)


def test_single_env_is_wrapped_and_predict_generate_work() -> None:
    agent = TextPPO("LMPolicy", gym.make("textgym/Copy-v0", model="tiny-random"), seed=0, **FAST)
    assert agent.env.num_envs == 1
    agent.learn(5)
    obs, _ = agent.env.reset(seed=0)
    action, state = agent.predict(obs, deterministic=True)
    assert action.shape == (1,) and state is None and agent.env.setup.action_mask[action[0]]
    texts = agent.generate(["Copy: red cat\nAnswer:", "Copy: sun\nAnswer:"], max_new_tokens=4)
    words = {"red", "blue", "green", "cat", "dog", "sun", "tree", "fish"}
    assert len(texts) == 2 and all(set(t.split()) <= words for t in texts)


def test_logger_and_callbacks(tmp_path: Path) -> None:
    agent = TextPPO("LMPolicy", copy_env(4), seed=0, **FAST)
    agent.set_logger(configure(str(tmp_path / "log"), ["csv"]))

    class Counter(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.steps = self.rollouts = 0

        def _on_step(self) -> bool:
            self.steps += 1
            return self.num_timesteps < 60  # stops training from inside a rollout

        def _on_rollout_end(self) -> None:
            self.rollouts += 1

    counter = Counter()
    eval_env = gym.make("textgym/Copy-v0", model="tiny-random", split="validation")
    callbacks = [
        counter,
        CheckpointCallback(save_freq=6, save_path=str(tmp_path / "ckpt"), name_prefix="copy"),
        EvalCallback(eval_env, eval_freq=6, n_eval_episodes=2, verbose=0),
    ]
    agent.learn(10_000, callback=callbacks)
    assert 60 <= agent.num_timesteps < 90 and counter.rollouts >= 2
    assert any(p.name.startswith("copy_") for p in (tmp_path / "ckpt").iterdir())
    assert callbacks[2].last_mean_reward > -np.inf
    with open(tmp_path / "log" / "progress.csv") as fh:
        columns = set(next(csv.reader(fh)))
    for key in ("rollout/ep_rew_mean", "rollout/copy_accuracy_mean", "rollout/kl_ref", "train/kl_coef",
                "train/entropy", "train/clip_fraction", "train/approx_kl", "train/explained_variance",
                "train/value_loss", "train/policy_gradient_loss", "time/tokens_per_s", "rollout/ep_len_mean"):  # fmt: skip
        assert key in columns, key


@pytest.mark.parametrize("algo", ["ppo", "grpo"])
def test_ratio_statistics_are_logged_only_when_a_step_follows_the_first(algo: str) -> None:
    """Before an update's first step the policy is the rollout policy: approx_kl, clip fraction and ratio are
    trivial there, so an update of one step logs none of them, and one of two steps logs what the second saw."""
    from agents import algorithm

    def first_update(n_epochs: int) -> dict[str, float]:
        agent = algorithm(algo)("LMPolicy", copy_env(), seed=0, group_size=2,
                                **{**FAST, "n_epochs": n_epochs, "learning_rate": 1e-2})  # fmt: skip
        agent.learn(1)
        return agent.history[0]

    one, two = first_update(1), first_update(2)
    assert "train/loss" in one and "train/entropy" in one
    assert not {"train/approx_kl", "train/clip_fraction", "train/ratio"} & set(one), sorted(one)
    assert "train/clip_fraction" in two and two["train/ratio"] != 1.0  # the second step saw the moved policy
    if algo == "ppo":
        assert two["train/approx_kl"] > 0.0


def test_top_k_top_p_temperature_give_consistent_old_log_probs() -> None:
    agent = TextPPO("LMPolicy", copy_env(), seed=0, temperature=0.7, top_k=3, top_p=0.9, **FAST)
    agent.learn(1)
    first = agent.history[0]
    # old log-probs recomputed with the same transform: every sampled token has a finite log-prob,
    # so the first epoch starts at ratio 1 and nothing explodes
    assert first["train/skipped_minibatches"] == 0 and np.isfinite(first["train/approx_kl"])
    obs, _ = agent.env.reset(seed=0)
    from agents.common.rollout import collect_episodes

    batch = collect_episodes(agent.policy, agent.env, obs, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logp, _, _ = agent.policy.sequence_forward(batch.input_ids, batch.attention_mask, batch.prompt_len)
    assert torch.isfinite(logp[batch.gen_mask]).all()
    # the rollout's own record of them (used as PPO's old log-probs in fp32) is the same distribution
    torch.testing.assert_close(batch.old_logp[batch.gen_mask], logp[batch.gen_mask], atol=1e-5, rtol=1e-5)


def test_lora_reference_is_the_base_with_adapters_off(tmp_path: Path) -> None:
    pytest.importorskip("peft")
    agent = TextPPO("LMPolicy", copy_env(4), seed=0, lora={"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]},
                    **FAST)  # fmt: skip
    assert agent.reference is None
    base = {n: p.detach().clone() for n, p in agent.policy.lm.named_parameters() if "lora_" not in n}
    agent.learn(1)
    for n, p in agent.policy.lm.named_parameters():
        if "lora_" not in n:
            assert torch.equal(p, base[n]), n  # only adapters (and the value head) train
    assert agent.history[0]["rollout/kl_ref"] == pytest.approx(0.0, abs=1e-5)  # step 0: policy == reference
    agent.save(tmp_path / "lora")
    assert (tmp_path / "lora" / "adapter" / "adapter_config.json").is_file()
    loaded = TextPPO.load(tmp_path / "lora", env=copy_env(4))
    for a, b in zip(agent.policy.state_dict().values(), loaded.policy.state_dict().values()):
        torch.testing.assert_close(a, b)


def test_group_size_repeats_prompts_and_centres_scores_on_the_other_completions() -> None:
    env = gym.make_vec("textgym/Translation-v0", num_envs=8, model="tiny-random", max_new_tokens=6)
    agent = TextPPO("LMPolicy", env, seed=1, group_size=4, kl_coef=0.0, reward_scaling=False, **FAST)
    batch = agent.collect(agent._init_callback(None))
    prompts = batch.input_ids[:, : batch.prompt_len]
    ids = [info["sample_id"] for info in batch.infos]
    for k in range(2):  # slots [4k, 4k+4) hold one drawn prompt, 4 completions of it
        assert len(set(ids[4 * k : 4 * k + 4])) == 1
        assert (prompts[4 * k : 4 * k + 4] == prompts[4 * k]).all()
    assert batch.input_ids[:4, batch.prompt_len :].unique(dim=0).shape[0] > 1  # different completions
    stats = agent.checked_train(batch)
    scores = batch.scores.view(2, 4)
    others = (scores.sum(1, keepdim=True) - scores) / 3
    # KL coefficient 0: the reward of an episode is its score minus the mean of its group's other scores
    torch.testing.assert_close(batch.rewards.sum(1), (scores - others).reshape(-1))
    assert stats["rollout/group_score_std"] == pytest.approx(float(scores.std(1).mean()))
    assert stats["rollout/ep_rew_mean"] == pytest.approx(float(batch.scores.mean()))  # logged: the raw scores
    # mini-batches shuffle whole groups: a chunk of 4 rows is one prompt's 4 completions
    chunks = [c.tolist() for c in batch.minibatches(4, torch.Generator().manual_seed(0), group_size=4)]
    assert sorted(chunks) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    orders = {tuple(torch.cat(list(batch.minibatches(4, torch.Generator().manual_seed(s), 4))).tolist()) for s in range(8)}
    assert len(orders) == 2  # both group orders occur
    # one chunk of all rows keeps their order (the first step may reuse prepare's forward of the batch)
    whole = {tuple(torch.cat(list(batch.minibatches(8, torch.Generator().manual_seed(s), 4))).tolist()) for s in range(8)}
    assert whole == {tuple(range(8))}
