"""agents.grpo and agents.rloo against Hugging Face TRL's own GRPOTrainer and RLOOTrainer, to 1e-6.

Every comparison runs TRL's code, never a transcription of it: a real
``GRPOTrainer``/``RLOOTrainer`` is built on a tiny random Llama saved to disk
(vocabulary of 64 word tokens), then

* advantages: TRL's ``_generate_and_score_completions`` runs on crafted
  completions (its generation step ``_generate_single_turn`` is replaced by one
  that returns fixed token ids, and the reward function returns fixed scores),
  and its ``advantages`` are compared with ours computed from the same scores
  and, for RLOO's KL, from the log-probs TRL's own ``_get_per_token_logps_and_entropies``
  gives for the policy and the (perturbed) reference model;
* losses: TRL's ``_compute_loss`` runs on a hand-built batch (random old and
  reference log-probs, random advantages), and our loss is computed from the
  per-token log-probs of the same model given by TRL's
  ``_get_per_token_logps_and_entropies``; loss values, the gradients they give
  the model's parameters, and the metrics TRL logs (kl, clip ratios) must agree.

The trainers run in eval mode (``model.eval()``), where TRL does not divide by
gradient-accumulation steps: our functions return one micro-batch's loss.
TRL is a test dependency (pyproject ``test`` extra): if it is missing this
module fails at import, it is not skipped.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

from agents.grpo import aggregate_loss, group_advantages, grpo_per_token_loss
from agents.rloo import rloo_advantages, rloo_aggregate_loss, rloo_per_sequence_loss, sequence_logp

ATOL = 1e-6
G = 3  # completions per prompt
B = 2 * G  # two prompts
T = 8  # max completion length
PROMPTS = ["w3 w4 w5", "w6 w7"]
# crafted completions: token ids (3..63 are words, 1 is EOS); some end with EOS, some are truncated
COMPLETIONS = [
    [5, 6, 7, 8, 9, 10, 11, 12],
    [13, 14, 15, 1],
    [16, 1],
    [17, 18, 19, 20, 21, 22, 23, 24],
    [25, 1],
    [26, 27, 28, 29, 30, 1],
]
LENGTHS = torch.tensor([len(c) for c in COMPLETIONS])
MASK = torch.arange(T)[None, :] < LENGTHS[:, None]  # (B, T) bool
NUM_ITEMS = 37.0  # a DAPO token count different from MASK.sum(), as with several processes or micro-batches


@pytest.fixture(autouse=True)
def _isolated():
    """One torch thread, and the global RNGs restored afterwards (a Trainer reseeds them at construction)."""
    threads, states = torch.get_num_threads(), (random.getstate(), np.random.get_state(), torch.get_rng_state())
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    random.setstate(states[0])
    np.random.set_state(states[1])
    torch.set_rng_state(states[2])


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> str:
    """A tiny random Llama and a 64-word whitespace tokenizer, saved as a local checkpoint."""
    words = ["<pad>", "<eos>", "<unk>"] + [f"w{i}" for i in range(3, 64)]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")
    config = LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, bos_token_id=None, eos_token_id=1, pad_token_id=0,
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    path = tmp_path_factory.mktemp("tiny_llama")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def _reward_from_column(completions, score, **kwargs):
    """TRL reward function: the ``score`` column of the dataset row (``None`` = unscorable)."""
    return list(score)


def _args(config_cls, tmp_path, **fields):
    return config_cls(
        output_dir=str(tmp_path), report_to="none", use_cpu=True, per_device_train_batch_size=B,
        per_device_eval_batch_size=B, num_generations=G, max_completion_length=T, **fields,
    )


def make_trainer(kind: str, model_dir: str, tmp_path, **fields):
    config_cls, trainer_cls = {"grpo": (GRPOConfig, GRPOTrainer), "rloo": (RLOOConfig, RLOOTrainer)}[kind]
    dataset = Dataset.from_dict({"prompt": PROMPTS, "score": [0.0, 1.0]})
    trainer = trainer_cls(
        model=model_dir, reward_funcs=_reward_from_column, args=_args(config_cls, tmp_path, **fields),
        train_dataset=dataset, processing_class=PreTrainedTokenizerFast.from_pretrained(model_dir),
    )
    trainer.model.eval()
    if trainer.ref_model is not None:  # make the reference differ from the policy, so the KL is not 0
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in trainer.ref_model.parameters():
                p.add_(0.3 * torch.randn(p.shape, generator=gen))
    return trainer


def _patch_generation(trainer, kind: str) -> None:
    """Replace TRL's sampling by the fixed COMPLETIONS (the rest of the scoring pipeline is TRL's)."""
    completions = [list(c) for c in COMPLETIONS]
    if kind == "grpo":
        trainer._generate_single_turn = lambda *args, **kwargs: (completions, None)
    else:
        trainer._generate_single_turn = lambda *args, **kwargs: completions


def score_batch(trainer, kind: str, scores: list[float | None]) -> dict:
    """TRL's ``_generate_and_score_completions`` on the crafted completions, rewarded with ``scores``."""
    _patch_generation(trainer, kind)
    inputs = [{"prompt": PROMPTS[i // G], "score": s} for i, s in enumerate(scores)]
    return trainer._generate_and_score_completions(inputs)


def token_logps(trainer, model, batch: dict) -> torch.Tensor:
    """Per-token log-probs of the completion tokens, from TRL's own method (so both sides share them)."""
    input_ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    attention_mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
    logps, _, _ = trainer._get_per_token_logps_and_entropies(model, input_ids, attention_mask, batch["completion_ids"].size(1))
    return logps


def hand_batch(seed: int = 0) -> dict:
    """prompt/completion tensors in TRL's layout: prompts left-padded, completions right-padded."""
    gen = torch.Generator().manual_seed(seed)
    prompt_ids = torch.randint(3, 64, (B, 4), generator=gen)
    prompt_mask = torch.ones(B, 4, dtype=torch.long)
    prompt_mask[1::2, :2] = 0  # every other prompt is two tokens shorter
    prompt_ids[prompt_mask == 0] = 0
    completion_ids = torch.zeros(B, T, dtype=torch.long)
    for i, c in enumerate(COMPLETIONS):
        completion_ids[i, : len(c)] = torch.tensor(c)
    return {
        "prompt_ids": prompt_ids, "prompt_mask": prompt_mask,
        "completion_ids": completion_ids, "completion_mask": MASK.long(),
    }


def grads(model) -> list[torch.Tensor]:
    out = [p.grad.detach().clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad(set_to_none=True)
    return out


def assert_close(actual, expected, what: str) -> None:
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=0, msg=lambda m: f"{what}: {m}")


def last_metric(trainer, name: str) -> float:
    return trainer._metrics["eval"][name][-1]


# ---------------------------------------------------------------- GRPO


GRPO_SCORES = [0.0, 1.0, 0.5, 2.0, 2.0, 2.0]  # the second group has zero std
GRPO_SCORES_UNSCORABLE = [0.0, None, 0.5, 2.0, -1.0, 0.25]


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("scores", [GRPO_SCORES, GRPO_SCORES_UNSCORABLE], ids=["scores", "with_unscorable"])
def test_grpo_advantages_match_trl(tiny_model_dir, tmp_path, scale, scores):
    trainer = make_trainer("grpo", tiny_model_dir, tmp_path, scale_rewards=scale)
    out = score_batch(trainer, "grpo", scores)
    assert torch.equal(out["completion_mask"].bool(), MASK)
    assert out["num_items_in_batch"].item() == MASK.sum().item()
    scores_t = torch.tensor([float("nan") if s is None else s for s in scores])
    ours = group_advantages(scores_t, G, scale)
    assert_close(ours, out["advantages"], f"advantages scale={scale}")
    assert ours.abs().sum() > 0


GRPO_LOSS_CASES = {
    # name: GRPOConfig fields (loss_type, scale etc.), with clip-higher and a KL term unless stated
    **{
        f"{loss}-{level}": dict(loss_type=loss, importance_sampling_level=level, beta=0.04, epsilon_high=0.28)
        for loss in ["grpo", "bnpo", "dr_grpo", "dapo"]
        for level in ["token", "sequence"]
    },
    "defaults": {},  # beta=0, dapo, epsilon=0.2, on-policy (no old log-probs)
    "no_bias_correction": dict(loss_type="grpo", beta=0.1, use_bias_correction_kl=False),
    "two_sided_delta": dict(loss_type="bnpo", beta=0.0, delta=1.3),
}


@pytest.mark.parametrize("case", list(GRPO_LOSS_CASES))
def test_grpo_loss_matches_trl(tiny_model_dir, tmp_path, case):
    fields = GRPO_LOSS_CASES[case]
    trainer = make_trainer("grpo", tiny_model_dir, tmp_path, **fields)
    args = trainer.args
    model = trainer.model
    batch = hand_batch()
    with torch.no_grad():
        logp0 = token_logps(trainer, model, batch)
    gen = torch.Generator().manual_seed(2)
    advantages = torch.randn(B, generator=gen)
    advantages[0], advantages[1] = 1.0, -1.0  # both signs, so both clip sides are exercised
    on_policy = case == "defaults"
    old = None if on_policy else logp0 + 0.3 * torch.randn(B, T, generator=gen)
    ref = logp0 + 0.5 * torch.randn(B, T, generator=gen) if args.beta != 0.0 else None
    inputs = dict(batch, advantages=advantages, num_items_in_batch=torch.tensor(NUM_ITEMS))
    if old is not None:
        inputs["old_per_token_logps"] = old
    if ref is not None:
        inputs["ref_per_token_logps"] = ref

    trl_loss = trainer._compute_loss(model, inputs)
    trl_loss.backward()
    trl_grads = grads(model)

    logp = token_logps(trainer, model, batch)
    per_token, stats = grpo_per_token_loss(
        logp, old, ref, advantages, MASK, epsilon_low=args.epsilon, epsilon_high=args.epsilon_high,
        beta=args.beta, importance_sampling_level=args.importance_sampling_level, delta=args.delta,
        use_bias_correction_kl=args.use_bias_correction_kl,
    )
    ours = aggregate_loss(per_token, MASK, args.loss_type, args.max_completion_length, num_items=NUM_ITEMS)
    ours.backward()
    our_grads = grads(model)

    assert_close(ours, trl_loss, f"loss {case}")
    assert len(our_grads) == len(trl_grads) > 0
    for ours_g, trl_g in zip(our_grads, trl_grads):
        assert_close(ours_g, trl_g, f"gradient {case}")
    for name in ["clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean"]:
        assert stats[name].item() == pytest.approx(last_metric(trainer, name), abs=ATOL), name
    if args.beta != 0.0:
        assert stats["kl"].item() == pytest.approx(last_metric(trainer, "kl"), abs=ATOL)
    if not on_policy and args.importance_sampling_level == "token":
        assert stats["clip_ratio/low_mean"] > 0 and stats["clip_ratio/high_mean"] > 0  # the clip is exercised


def test_grpo_end_to_end_matches_trl(tiny_model_dir, tmp_path):
    """TRL scores a batch (old and reference log-probs from its models) and computes the loss; so do we."""
    trainer = make_trainer("grpo", tiny_model_dir, tmp_path, beta=0.04, num_iterations=2, loss_type="dapo")
    out = score_batch(trainer, "grpo", GRPO_SCORES)
    assert "old_per_token_logps" in out and "ref_per_token_logps" in out  # num_iterations=2: TRL keeps old log-probs
    with torch.no_grad():
        ref = token_logps(trainer, trainer.ref_model, out)
        old = token_logps(trainer, trainer.model, out)
    mask = out["completion_mask"].bool()
    assert_close(torch.where(mask, old, 0.0), torch.where(mask, out["old_per_token_logps"], 0.0), "old log-probs")
    assert_close(torch.where(mask, ref, 0.0), torch.where(mask, out["ref_per_token_logps"], 0.0), "ref log-probs")

    trl_loss = trainer._compute_loss(trainer.model, out)
    advantages = group_advantages(torch.tensor(GRPO_SCORES), G, "group")
    logp = token_logps(trainer, trainer.model, out)
    per_token, _ = grpo_per_token_loss(logp, old, ref, advantages, mask, beta=0.04)
    ours = aggregate_loss(per_token, mask, "dapo")
    assert_close(ours, trl_loss, "end-to-end loss")


# ---------------------------------------------------------------- RLOO


RLOO_SCORES = [0.0, 1.0, 0.5, 2.0, -1.0, 0.25]


@pytest.mark.parametrize("beta", [0.0, 0.05], ids=["no_kl", "kl_in_reward"])
@pytest.mark.parametrize("normalize", [False, True], ids=["raw", "normalized"])
def test_rloo_advantages_match_trl(tiny_model_dir, tmp_path, beta, normalize):
    trainer = make_trainer("rloo", tiny_model_dir, tmp_path, beta=beta, normalize_advantages=normalize)
    out = score_batch(trainer, "rloo", RLOO_SCORES)
    mask = out["completion_mask"].bool()
    assert torch.equal(mask, MASK)
    with torch.no_grad():
        old = token_logps(trainer, trainer.model, out)
        ref = token_logps(trainer, trainer.ref_model, out) if beta else None
    assert_close(sequence_logp(old, mask), out["old_logps"], "old sequence log-probs")
    ours, stats = rloo_advantages(
        torch.tensor(RLOO_SCORES), G, old, ref, mask, beta=beta, normalize_advantages=normalize
    )
    assert_close(ours, out["advantages"], f"advantages beta={beta} normalize={normalize}")
    if beta:
        assert stats["kl"].abs().min() > 1e-3  # the reference really differs, so the KL term is exercised
        assert stats["kl_mean"].item() == pytest.approx(last_metric(trainer, "kl"), abs=ATOL)


@pytest.mark.parametrize(
    "fields, scores",
    [
        (dict(reward_clip_range=(-0.5, 1.5)), RLOO_SCORES),
        (dict(normalize_advantages=True), [0.0, None, 0.5, 2.0, -1.0, 0.25]),
    ],
    ids=["reward_clip", "unscorable"],
)
def test_rloo_advantage_options_match_trl(tiny_model_dir, tmp_path, fields, scores):
    trainer = make_trainer("rloo", tiny_model_dir, tmp_path, **fields)
    out = score_batch(trainer, "rloo", scores)
    mask = out["completion_mask"].bool()
    with torch.no_grad():
        old = token_logps(trainer, trainer.model, out)
        ref = token_logps(trainer, trainer.ref_model, out)
    scores_t = torch.tensor([float("nan") if s is None else s for s in scores])
    ours, _ = rloo_advantages(
        scores_t, G, old, ref, mask, beta=trainer.args.beta,
        normalize_advantages=trainer.args.normalize_advantages, reward_clip_range=trainer.args.reward_clip_range,
    )
    assert_close(ours, out["advantages"], f"advantages {fields}")


RLOO_RATIOS = torch.tensor([1.2, 0.85, 1.5, 0.7, 1.05, 0.95])


@pytest.mark.parametrize("fields", [{}, dict(epsilon=0.1, epsilon_high=0.3)], ids=["defaults", "clip_higher"])
def test_rloo_loss_matches_trl(tiny_model_dir, tmp_path, fields):
    trainer = make_trainer("rloo", tiny_model_dir, tmp_path, **fields)
    args, model = trainer.args, trainer.model
    batch = hand_batch()
    with torch.no_grad():
        logp0 = token_logps(trainer, model, batch)
    # old log-probs chosen so that the sequence ratios pi/pi_old are RATIOS: each side of each clip bound is hit
    gen = torch.Generator().manual_seed(3)
    noise = 0.2 * torch.randn(B, T, generator=gen) * MASK
    noise = noise - noise.sum(-1, keepdim=True) / LENGTHS[:, None] * MASK  # zero-sum per sequence
    old = logp0 + noise - (torch.log(RLOO_RATIOS) / LENGTHS)[:, None]
    advantages = torch.tensor([1.0, -1.0, 0.5, -0.5, 2.0, -2.0])
    inputs = dict(batch, advantages=advantages, old_logps=sequence_logp(old, MASK))

    trl_loss = trainer._compute_loss(model, inputs)
    trl_loss.backward()
    trl_grads = grads(model)

    logp = token_logps(trainer, model, batch)
    per_seq, stats = rloo_per_sequence_loss(logp, old, advantages, MASK, args.epsilon, args.epsilon_high)
    ours = rloo_aggregate_loss(per_seq)
    ours.backward()
    our_grads = grads(model)

    assert_close(ours, trl_loss, "RLOO loss")
    assert len(our_grads) == len(trl_grads) > 0
    for ours_g, trl_g in zip(our_grads, trl_grads):
        assert_close(ours_g, trl_g, "RLOO gradient")
    for name in ["clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean"]:
        assert stats[name].item() == pytest.approx(last_metric(trainer, name), abs=ATOL), name
    torch.testing.assert_close(stats["ratio"].detach(), RLOO_RATIOS, atol=1e-4, rtol=0)  # as crafted, up to rounding
    assert stats["clip_ratio/low_mean"] > 0 and stats["clip_ratio/high_mean"] > 0  # the clip is exercised
