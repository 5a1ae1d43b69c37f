"""Encoder-decoder (T5-style) policies: every algorithm, the rollout's log-probs, the encoder's call count,
checkpoints, LoRA, evaluation and generate(), on a tiny randomly initialised T5 built here."""

from __future__ import annotations

import math
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import textgym  # noqa: F401
from agents import ALGORITHMS, TextGRPO, TextPPO, algorithm
from agents.common.policies import LMPolicy, Seq2SeqLMPolicy, policy_for
from textgym.errors import ModelError

pytestmark = pytest.mark.usefixtures("one_thread")


def build_tiny_t5(out: Path, vocab_size: int | None = None) -> Path:
    """A 2-layer T5 with random weights and the default tokenizer (tiny-random's), saved to ``out``."""
    from transformers import GenerationConfig, T5Config, T5ForConditionalGeneration

    from textgym.models import load_tokenizer

    tok = load_tokenizer("tiny-random")
    ids = {"decoder_start_token_id": tok.pad_token_id, "pad_token_id": tok.pad_token_id, "eos_token_id": tok.eos_token_id}
    config = T5Config(vocab_size=vocab_size or len(tok), d_model=32, d_ff=64, num_layers=2, num_heads=2, d_kv=16, **ids)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = T5ForConditionalGeneration(config)
    model.generation_config = GenerationConfig(**ids)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


@pytest.fixture(scope="session")
def t5(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(build_tiny_t5(tmp_path_factory.mktemp("tiny-t5")))


def copy_env(model: str, n: int = 8, **kwargs):
    return gym.make_vec("textgym/Copy-v0", num_envs=n, model=model, **kwargs)


FAST = {"learning_rate": 3e-3, "n_epochs": 2, "n_rollouts": 1, "group_size": 4}


def test_auto_picks_the_class_by_config_and_a_wrong_kind_fails_clearly(t5: str, tmp_path: Path) -> None:
    env = copy_env(t5)  # model= on the env: a seq2seq checkpoint's tokenizer
    assert env.text_spec.vocab_size == 49152
    assert type(TextGRPO("auto", env, model=t5, **FAST).policy) is Seq2SeqLMPolicy
    assert type(TextGRPO("auto", copy_env("tiny-random"), model="tiny-random", **FAST).policy) is LMPolicy
    with pytest.raises(ModelError, match=r"LMPolicy cannot run model .*an encoder-decoder.*policy='auto'"):
        TextGRPO("LMPolicy", env, model=t5, **FAST)
    with pytest.raises(ModelError, match=r"Seq2SeqLMPolicy cannot run model .*tiny-random.*: it is a causal LM"):
        TextGRPO("Seq2SeqLMPolicy", copy_env("tiny-random"), model="tiny-random", **FAST)
    with pytest.raises(ValueError, match=r"unknown policy 'T5Policy'; allowed: \['LMPolicy', 'Seq2SeqLMPolicy', 'auto'\]"):
        TextGRPO("T5Policy", env, model=t5, **FAST)
    other = build_tiny_t5(tmp_path / "small-vocab", vocab_size=1000)  # the vocabulary check holds for seq2seq too
    with pytest.raises(ModelError, match=r"49152 tokens.*LM head of 1000"):
        TextGRPO("auto", env, model=str(other), **FAST)
    # A head padded past the tokenizer (flan-t5: 32128 rows, 32100 tokens) is allowed; its extra rows are never sampled.
    padded = policy_for(str(build_tiny_t5(tmp_path / "padded", vocab_size=49152 + 64)), 49152)
    assert padded.allowed_ids is not None and len(padded.allowed_ids) == 49152


def test_bf16_on_a_cpu_trains_t5_with_its_position_bias_in_fp32_attention(t5: str) -> None:
    """Under bf16 on a CPU the engine runs attention in fp32 (agents.common.lm.fp32_attention); T5 passes its
    relative position bias (bf16 under autocast) as an additive mask, which must be upcast with the rest
    (it raised "Expected attn_mask dtype to be bool or float" on CPUs where bf16="auto" is on)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bf16=True on a CPU without bf16 instructions warns (emulated)
        # ent_coef: a gradient even when every episode scores 0 (about 1 rollout in 10 of the tiny T5: then the
        # advantages, returns and zero-initialised values are all 0 and a correct update changes nothing)
        agent = TextPPO("auto", copy_env(t5), model=t5, bf16=True, ent_coef=0.01, **FAST)
    assert agent.policy.lm.config._attn_implementation != "sdpa"  # switched to the fp32 attention
    before = [p.detach().clone() for p in agent.policy.parameters()]
    agent.learn(total_timesteps=1)
    assert math.isfinite(agent.history[-1]["train/loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, agent.policy.parameters()))


def teacher_forced_logp(model, prompt: torch.Tensor, answer: torch.Tensor, allowed: np.ndarray) -> torch.Tensor:
    """Log-probs of ``answer`` under the transformers model's own forward (one row, no padding, no textgym code)."""
    start = torch.tensor([model.config.decoder_start_token_id])
    decoder_ids = torch.cat([start, answer[:-1]]).unsqueeze(0)
    logits = model(input_ids=prompt.unsqueeze(0), decoder_input_ids=decoder_ids).logits[0].float()
    logits = logits[:, : len(allowed)].masked_fill(~torch.tensor(allowed), float("-inf"))  # the env's action mask
    return torch.log_softmax(logits, -1).gather(1, answer.unsqueeze(1)).squeeze(1)


def assert_rollout_logprobs_are_the_models(model, agent, env) -> None:
    """A rollout of ``agent`` records, for every token, the log-prob that one teacher-forced forward of
    ``model`` (a transformers encoder-decoder) gives it; the update's batched forward agrees too."""
    from agents.common.rollout import collect_episodes

    obs, _ = env.reset(seed=0, options=agent._group_options())
    batch = collect_episodes(agent.policy, env, obs, generator=torch.Generator().manual_seed(0))
    P, mask = batch.prompt_len, batch.gen_mask
    assert mask.sum(1).max() >= 4  # answers of several tokens: the decoder's cache is exercised
    with torch.no_grad():
        for i in range(len(batch)):
            prompt = batch.input_ids[i, :P][batch.attention_mask[i, :P].bool()]
            answer = batch.input_ids[i, P:][mask[i]]
            expected = teacher_forced_logp(model, prompt, answer, env.text_spec.action_mask)
            torch.testing.assert_close(batch.old_logp[i][mask[i]], expected, rtol=0, atol=1e-5)
        # the update's forward (all rows at once, shared prompts encoded once) gives the same log-probs
        logp, _, _ = agent.policy.sequence_forward(batch.input_ids, batch.attention_mask, P)
    torch.testing.assert_close(logp[mask], batch.old_logp[mask], rtol=0, atol=1e-5)


def test_rollout_logprobs_equal_one_teacher_forced_forward_of_the_decoder(t5: str) -> None:
    env = copy_env(t5)
    agent = TextGRPO("auto", env, model=t5, seed=0, **FAST)
    assert_rollout_logprobs_are_the_models(agent.policy.base_lm, agent, env)


def test_encoder_runs_once_per_distinct_prompt_in_the_rollout_and_once_per_epoch(t5: str) -> None:
    """One update = the rollout (every decoding step of every completion) + n_epochs of optimizer steps.
    The trained encoder runs once per distinct prompt in the rollout and once per distinct prompt per epoch
    (it changes with each step, so it is recomputed); the frozen reference encodes each distinct prompt once."""
    n_epochs, group = 3, 4
    agent = TextPPO("auto", copy_env(t5, 16), model=t5, seed=0, learning_rate=3e-3, n_epochs=n_epochs, n_rollouts=1,
                    group_size=group)  # fmt: skip
    rows: dict[str, list[int]] = {"policy": [], "reference": []}

    def counter(name: str):
        return lambda _module, args, kwargs: rows[name].append(int(kwargs["input_ids"].shape[0]))

    agent.policy.base_lm.get_encoder().register_forward_pre_hook(counter("policy"), with_kwargs=True)
    agent.reference.get_encoder().register_forward_pre_hook(counter("reference"), with_kwargs=True)
    batches = []
    train = agent.train
    agent.train = lambda batch: batches.append(batch) or train(batch)
    agent.learn(1)
    (batch,) = batches
    P = batch.prompt_len
    distinct = len(torch.unique(torch.cat([batch.input_ids[:, :P], batch.attention_mask[:, :P]], 1), dim=0))
    assert distinct <= len(batch) // group
    assert rows["policy"] == [distinct] * (1 + n_epochs)  # the rollout, then one forward per epoch
    assert rows["reference"] == [distinct]


@pytest.mark.parametrize("algo", sorted(ALGORITHMS))
def test_resume_equals_straight_training(tmp_path: Path, t5: str, algo: str) -> None:
    cls = algorithm(algo)
    first = cls("auto", copy_env(t5), model=t5, seed=3, **FAST)
    first.learn(1)
    first.save(tmp_path / "ck")
    resumed = cls.load(tmp_path / "ck", env=copy_env(t5))
    assert type(resumed.policy).__name__ == "Seq2SeqLMPolicy" and isinstance(resumed.policy, Seq2SeqLMPolicy)
    resumed.learn(1, reset_num_timesteps=False)
    straight = cls("auto", copy_env(t5), model=t5, seed=3, **FAST)
    straight.learn(first.num_timesteps + 1)
    assert straight.n_updates == resumed.n_updates == 2 and straight.num_timesteps == resumed.num_timesteps
    moved = max(float((a - b).abs().max()) for a, b in zip(first.policy.state_dict().values(),
                                                            straight.policy.state_dict().values()))  # fmt: skip
    assert moved > 1e-4
    for a, b in zip(straight.policy.state_dict().values(), resumed.policy.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


PROMPTS = ["Copy: cat dog\nAnswer:", "Copy: red sun blue\nAnswer:", "Copy: one\nAnswer:"]


def hf_greedy(model, tokenizer, prompts: list[str], allowed: np.ndarray, max_new_tokens: int) -> list[str]:
    """transformers' own greedy ``generate`` (the env's action mask as suppressed tokens)."""
    out = []
    for prompt in prompts:
        ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])
        seq = model.generate(input_ids=ids, do_sample=False, max_new_tokens=max_new_tokens,
                             suppress_tokens=np.flatnonzero(~allowed).tolist())[0, 1:]  # fmt: skip
        out.append(tokenizer.decode(seq, skip_special_tokens=True))
    return out


def test_checkpoint_loads_with_from_pretrained_and_gives_the_same_greedy_answers(tmp_path: Path, t5: str) -> None:
    from transformers import AutoModelForSeq2SeqLM

    env = copy_env(t5)
    agent = TextGRPO("auto", env, model=t5, seed=0, **FAST)
    agent.learn(1)
    ours = agent.generate(PROMPTS, max_new_tokens=6, deterministic=True)
    agent.save(tmp_path / "ck")
    model = AutoModelForSeq2SeqLM.from_pretrained(str(tmp_path / "ck")).eval()
    assert hf_greedy(model, env.text_spec.tokenizer, PROMPTS, env.text_spec.action_mask, 6) == ours
    assert_rollout_logprobs_are_the_models(model, agent, env)
    assert TextGRPO.load(tmp_path / "ck", env=env).generate(PROMPTS, max_new_tokens=6, deterministic=True) == ours
    with pytest.raises(NotImplementedError, match="no stock-SB3 per-step interface"):
        agent.predict(env.reset(seed=0)[0])


def test_lora_trains_the_adapters_and_saves_a_merged_checkpoint(tmp_path: Path, t5: str) -> None:
    from transformers import AutoModelForSeq2SeqLM

    env = copy_env(t5)
    agent = TextGRPO("auto", env, model=t5, seed=0, lora={"r": 4, "lora_alpha": 8, "target_modules": "all-linear"},
                     **FAST)  # fmt: skip
    assert agent.reference is None and type(agent.policy.lm).__name__ == "PeftModelForSeq2SeqLM"
    before = {k: v.clone() for k, v in agent.policy.lm.named_parameters()}
    changed: set[str] = set()
    while not changed and agent.n_updates < 4:  # an update whose groups all tie has no gradient
        agent.learn(1, reset_num_timesteps=False)
        changed = {k for k, v in agent.policy.lm.named_parameters() if not torch.equal(v, before[k])}
    assert changed and all("lora_" in k for k in changed)
    assert any(".encoder." in k for k in changed) and any(".decoder." in k for k in changed)
    ours = agent.generate(PROMPTS, max_new_tokens=6, deterministic=True)
    agent.save(tmp_path / "ck")
    model = AutoModelForSeq2SeqLM.from_pretrained(str(tmp_path / "ck")).eval()  # the adapters merged in
    assert hf_greedy(model, env.text_spec.tokenizer, PROMPTS, env.text_spec.action_mask, 6) == ours
    assert_rollout_logprobs_are_the_models(model, agent, env)
    assert TextGRPO.load(tmp_path / "ck", env=env).generate(PROMPTS, max_new_tokens=6, deterministic=True) == ours


def test_evaluation_and_the_zero_shot_policy(t5: str) -> None:
    from transformers import AutoModelForSeq2SeqLM

    from agents.evaluation import evaluate_policy_on_env

    env = copy_env(t5, 4, split="test")
    spec = env.text_spec
    policy = policy_for(t5, spec.vocab_size, spec.action_mask)
    assert type(policy) is Seq2SeqLMPolicy
    result = evaluate_policy_on_env(policy, env, 8)
    assert result["answers"] == 8 and 0.0 <= result["reward_mean"] <= 1.0
    model = AutoModelForSeq2SeqLM.from_pretrained(t5).eval()
    greedy = [r["output"] for r in result["records"]]
    prompts = [env.setup.encoded_prompt(r["index"])[1] for r in result["records"]]
    assert hf_greedy(model, spec.tokenizer, prompts, spec.action_mask, spec.max_new_tokens) == greedy


@pytest.mark.learning
@pytest.mark.parametrize("algo", ["ppo", "grpo"])
def test_tiny_encoder_decoder_learns_copy(t5: str, algo: str) -> None:
    """Mean reward of the last 5 updates beats the first 5 (8,000 tokens, ~22 updates of 64 episodes)."""
    kwargs = {"learning_rate": 3e-3, "n_epochs": 4, "batch_size": 64, "kl_coef": 0.0}
    if algo == "grpo":
        kwargs["group_size"] = 8
    agent = algorithm(algo)("auto", copy_env(t5, 64), model=t5, seed=0, **kwargs)
    agent.learn(total_timesteps=8_000)
    rewards = [h["rollout/ep_rew_mean"] for h in agent.history]
    first, last = float(np.mean(rewards[:5])), float(np.mean(rewards[-5:]))
    print(f"{algo}: updates={len(rewards)} first5={first:.3f} last5={last:.3f}")
    assert last >= first + 0.03, rewards


def test_readme_seq2seq_block_runs_as_written(tmp_path: Path, monkeypatch) -> None:
    from tests.test_authoring import readme_block

    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme"}
    exec(compile(readme_block("seq2seq"), "README.md", "exec"), namespace)
    agent = namespace["agent"]
    assert isinstance(agent.policy, Seq2SeqLMPolicy) and agent.n_updates >= 1
    assert isinstance(namespace["texts"][0], str)
