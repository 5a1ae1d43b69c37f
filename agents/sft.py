"""Supervised warm start: fine-tune the env's model on the train split's references, then start RL from it.

RL4LMs' GRUE benchmark found supervised warm start followed by RL ("Sup+PPO") better than either alone,
and a 135M model that cannot do a task at all gives RL no signal to start from.  :func:`train_sft`
trains on exactly what the env shows: each sample's prompt as the env encodes it (its chat template,
its ``max_prompt_tokens`` cut) followed by the sample's first reference and EOS, cut to the env's
``max_new_tokens`` -- so the answers it learns are answers the env would accept and end.  The loss is
the mean cross-entropy of the answer tokens only (the prompt is context).

A run directory is written as ``textgym train`` writes one: ``checkpoint-<steps>/`` folders (each a
Hugging Face model directory with its tokenizer and ``sft.json``: the env, the base model, the
settings, the losses), ``progress.csv`` and TensorBoard events.  Every entry point that takes a model
takes it: ``textgym train --init RUN`` (RL from the warm start, which is also the KL reference),
``textgym eval --checkpoint RUN``, ``textgym bench --agents checkpoint:RUN``.

Why not TRL's ``SFTTrainer``: it writes a ``transformers.Trainer`` output directory (its own checkpoint
and resume layout, no textgym metadata) and tokenizes the prompt itself, while this must train on the
env's own encoded prompts and write textgym's run directory.  The loop is the on-policy engine's:
the same model loading, device, bf16 autocast (attention in fp32, :func:`agents.common.lm.fp32_attention`)
and record writers.

    textgym sft textgym/Translation-v0 --epochs 2 --out runs/translation-sft
    textgym train textgym/Translation-v0 --init runs/translation-sft --timesteps 20000

Example:
    >>> from agents.sft import SFTConfig, train_sft
    >>> summary = train_sft("textgym/Copy-v0", model="tiny-random", out="/tmp/textgym-sft-doctest",
    ...                     config=SFTConfig(epochs=1, max_samples=16), progress=False)
    >>> summary["steps"], summary["checkpoint"].endswith("checkpoint-000002")
    (2, True)
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from textgym.errors import ConfigError

SFT_META = "sft.json"


@dataclasses.dataclass
class SFTConfig:
    """Settings of a supervised warm start (the CLI flags of ``textgym sft``).

    Args:
        epochs: passes over the (first ``max_samples`` of the) train split.
        learning_rate: AdamW's peak rate, decayed linearly to 0 over the run.
        batch_size: samples per optimizer step (rows of similar length are batched together).
        micro_batch_tokens: the most padded tokens (rows x longest row) one forward takes: a batch above it is
            run in consecutive micro-batches whose gradients add up to the batch's (the same step, in less
            memory; a row longer than this goes alone). None: every batch in one forward. Memory grows with it:
            32 CodeCompletion-v0 pairs (batches of up to 4,700 tokens) peaked at 8.1 GB in whole batches, 5.6 GB
            at 2048 (``benchmarks/sft_memory.py``). It changes how a step is computed, not the step, so stored
            warm starts are compared without it.
        max_grad_norm: gradient clipping.
        weight_decay: AdamW's.
        max_samples: train on this many samples of the shuffled train split (None: all).
        bf16: bf16 autocast with fp32 master weights; ``"auto"`` as the RL algorithms decide
            (:func:`agents.common.agent.use_bf16`).
        validation_samples: the validation loss (answer tokens only) after each epoch is measured on this
            many validation samples (0: not measured).
    """

    epochs: int = 2
    learning_rate: float = 1e-4
    batch_size: int = 8
    micro_batch_tokens: int | None = 2048
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0
    max_samples: int | None = None
    bf16: bool | str = "auto"
    validation_samples: int = 64

    def __post_init__(self) -> None:
        def count(name: str, low: int) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ConfigError(f"SFTConfig.{name} must be an integer >= {low}, got {value!r}")

        count("epochs", 1)
        count("batch_size", 1)
        count("validation_samples", 0)
        if self.max_samples is not None:
            count("max_samples", 1)
        if self.micro_batch_tokens is not None:
            count("micro_batch_tokens", 1)
        for name in ("learning_rate", "max_grad_norm"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ConfigError(f"SFTConfig.{name} must be a finite number > 0, got {value!r}")
        if isinstance(self.weight_decay, bool) or not isinstance(self.weight_decay, (int, float)) or self.weight_decay < 0:
            raise ConfigError(f"SFTConfig.weight_decay must be a number >= 0, got {self.weight_decay!r}")
        if self.bf16 not in (True, False, "auto"):
            raise ConfigError(f"SFTConfig.bf16 must be True, False or 'auto', got {self.bf16!r}")


#: SFTConfig fields that change how a step is computed, not the step: stored warm starts are compared without them
EXECUTION_FIELDS = ("micro_batch_tokens",)


def comparable_config(config: dict[str, Any] | None) -> dict[str, Any] | None:
    """A stored ``SFTConfig`` dict as two warm starts are compared: fields added since it was stored at their
    defaults (what it was trained with), :data:`EXECUTION_FIELDS` left out.

    >>> comparable_config({"epochs": 2}) == comparable_config({**dataclasses.asdict(SFTConfig()), "micro_batch_tokens": 1})
    True
    """
    if config is None:
        return None
    return {k: v for k, v in {**dataclasses.asdict(SFTConfig()), **config}.items() if k not in EXECUTION_FIELDS}


def demonstrations(setup: Any, indices: Sequence[int]) -> list[tuple[list[int], list[int]]]:
    """``(prompt ids, answer ids)`` of the samples ``indices`` of an :class:`~textgym.envsetup.EnvSetup`.

    The prompt is the env's own encoding; the answer is the sample's first reference, then EOS, cut to
    ``max_new_tokens`` (an answer the env would have truncated keeps no EOS, as in an episode).
    """
    task = setup.task
    if setup.max_turns > 1:
        raise ConfigError(f"supervised warm start trains single-turn answers; {type(task).__name__} has "
                          f"max_turns={setup.max_turns}")  # fmt: skip
    out = []
    for index in indices:
        sample = setup.samples[index]
        if not sample.references or not str(sample.references[0]).strip():
            raise ConfigError(f"sample {sample.id!r} of {type(task).__name__} ({setup.split} split) has no reference "
                              "answer to train on; supervised warm start needs a reference per sample")  # fmt: skip
        prompt, _ = setup.encoded_prompt(index)
        answer = setup.tokenizer(str(sample.references[0]), add_special_tokens=False)["input_ids"]
        answer = (list(answer) + [setup.eos_id])[: setup.max_new_tokens]
        out.append(([int(t) for t in prompt], [int(t) for t in answer]))
    return out


def length_grouped_batches(lengths: Sequence[int], batch_size: int, rng: np.random.Generator) -> list[list[int]]:
    """Shuffled batches of indices, rows of similar length together (less padding): the shuffled order is cut
    into windows of 16 batches, each window sorted by length and cut into batches, and the batches shuffled.

    >>> batches = length_grouped_batches([5, 1, 4, 2, 3, 6], 2, np.random.default_rng(0))
    >>> sorted(i for b in batches for i in b), all(len(b) == 2 for b in batches)
    ([0, 1, 2, 3, 4, 5], True)
    """
    order = rng.permutation(len(lengths))
    window = batch_size * 16
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i])
        batches += [[int(i) for i in chunk[k : k + batch_size]] for k in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def micro_batches(lengths: Sequence[int], limit: int | None) -> list[slice]:
    """Consecutive slices of a batch of rows of ``lengths`` tokens, each padded to its longest row within ``limit``
    tokens (rows x longest row); a row longer than ``limit`` is a slice of its own.  ``None``: one slice.

    >>> micro_batches([100, 120, 130, 400], 300)
    [slice(0, 2, None), slice(2, 3, None), slice(3, 4, None)]
    """
    if limit is None:
        return [slice(0, len(lengths))]
    out, start, longest = [], 0, 0
    for end, length in enumerate(lengths):
        longest = max(longest, length)
        if end > start and (end + 1 - start) * longest > limit:
            out.append(slice(start, end))
            start, longest = end, length
    return [*out, slice(start, len(lengths))]


def answer_loss(lm: Any, rows: Sequence[tuple[list[int], list[int]]], pad_id: int, device: Any) -> tuple[Any, int]:
    """Summed cross-entropy of the answer tokens of ``rows`` (prompt, answer) and their count.

    Rows are left-padded (positions counted from the mask, as in the rollouts), so every answer ends at the
    last column and the LM head runs on the last ``longest answer + 1`` columns only.
    """
    import torch
    import torch.nn.functional as F

    from agents.common.lm import positions_from_mask

    width = max(len(p) + len(a) for p, a in rows)
    keep = max(len(a) for _, a in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), keep), -100, dtype=torch.long)
    for row, (prompt, answer) in enumerate(rows):
        tokens = prompt + answer
        ids[row, width - len(tokens) :] = torch.tensor(tokens)
        mask[row, width - len(tokens) :] = 1
        labels[row, keep - len(answer) :] = torch.tensor(answer)
    ids, mask, labels = ids.to(device), mask.to(device), labels.to(device)
    logits = lm(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask), use_cache=False,
                logits_to_keep=keep + 1).logits[:, :-1]  # fmt: skip
    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100,
                           reduction="sum")  # fmt: skip
    return loss, int((labels != -100).sum())


def _save(lm: Any, tokenizer: Any, meta: dict[str, Any], run_dir: Path, step: int, keep: int) -> Path:
    """``run_dir/checkpoint-<step>``: a Hugging Face model dir + tokenizer + sft.json, written atomically."""
    from agents.common.checkpoints import CHECKPOINT_PREFIX, list_checkpoints

    target = run_dir / f"{CHECKPOINT_PREFIX}{step:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=run_dir))
    try:
        lm.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        (tmp / SFT_META).write_text(json.dumps(meta, indent=2), encoding="utf-8")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def sft_meta(path: str | Path) -> dict[str, Any] | None:
    """The ``sft.json`` of a warm-start checkpoint (None for any other model dir)."""
    file = Path(path) / SFT_META
    return json.loads(file.read_text(encoding="utf-8")) if file.is_file() else None


def train_sft(
    env_id: str,
    *,
    model: str | None = None,
    out: str | os.PathLike[str] | None = None,
    config: SFTConfig | None = None,
    seed: int = 0,
    device: str = "auto",
    env_kwargs: dict[str, Any] | None = None,
    keep: int = 1,
    report_to: Sequence[str] = ("csv", "tensorboard"),
    progress: bool = True,
) -> dict[str, Any]:
    """Fine-tune ``model`` (default: the env's) on ``env_id``'s train-split references; write a run directory.

    Returns a summary: ``checkpoint`` (the final model dir), ``steps``, ``epochs``, ``samples``,
    ``answer_tokens`` (trained per epoch), ``tokens`` (prompt and answer tokens run forward per epoch, padding
    left out), ``train_loss`` (the last epoch's mean), ``validation_loss`` (per
    epoch, measured before training too), ``seconds``.  ``env_kwargs`` go to ``gym.make`` (e.g.
    ``max_new_tokens``).  Checkpoints are saved after every epoch (the ``keep`` newest stay).
    """
    import gymnasium as gym
    import torch
    from stable_baselines3.common.logger import Logger
    from tqdm.auto import tqdm

    import textgym  # noqa: F401
    from agents.common.agent import use_bf16
    from agents.common.launch import checked_device
    from agents.common.lm import disable_dropout, fp32_attention, load_causal_lm
    from agents.common.records import ProgressCSV, parse_report_to, run_tensorboard
    from textgym.models import default_model

    config = SFTConfig() if config is None else config
    if not isinstance(config, SFTConfig):
        raise ConfigError(f"config must be an SFTConfig, got {type(config).__name__}")
    report_to = parse_report_to(report_to)
    torch_device = checked_device(device)
    env_kwargs = dict(env_kwargs or {})
    if model is not None:
        env_kwargs["model"] = model
    train_env = gym.make(env_id, split="train", **env_kwargs)
    setup = train_env.unwrapped.setup
    base_model = str(setup.model if setup.model is not None else default_model())
    run_dir = Path(out if out is not None else Path("runs") / f"{env_id.split('/')[-1]}-sft")
    run_dir.mkdir(parents=True, exist_ok=True)

    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    indices = [int(i) for i in rng.permutation(len(setup.samples))[: config.max_samples]]
    rows = demonstrations(setup, indices)
    validation: list[tuple[list[int], list[int]]] = []
    if config.validation_samples:
        val_setup = gym.make(env_id, split="validation", **env_kwargs).unwrapped.setup
        validation = demonstrations(val_setup, range(min(config.validation_samples, len(val_setup.samples))))

    lm = load_causal_lm(base_model).to(torch_device)
    if getattr(lm.config, "is_encoder_decoder", False):
        raise ConfigError(f"supervised warm start trains causal LMs; {base_model!r} is an encoder-decoder")
    disable_dropout(lm)
    bf16 = use_bf16(config.bf16, torch_device)
    if bf16 and torch_device.type == "cpu":
        fp32_attention(lm)

    def autocast() -> Any:
        return torch.autocast(torch_device.type, dtype=torch.bfloat16, enabled=bf16)

    def mean_loss(data: Sequence[tuple[list[int], list[int]]]) -> float:
        lm.eval()
        total, count = 0.0, 0
        with torch.no_grad(), autocast():
            for start in range(0, len(data), config.batch_size):
                batch = data[start : start + config.batch_size]
                for part in micro_batches([len(p) + len(a) for p, a in batch], config.micro_batch_tokens):
                    loss, n = answer_loss(lm, batch[part], setup.pad_id, torch_device)
                    total, count = total + float(loss), count + n
        return total / max(count, 1)

    steps_per_epoch = math.ceil(len(rows) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    optimizer = torch.optim.AdamW([p for p in lm.parameters() if p.requires_grad], lr=config.learning_rate,
                                  weight_decay=config.weight_decay)  # fmt: skip
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1.0 - step / total_steps))
    formats: list[Any] = []
    if "csv" in report_to:
        formats.append(ProgressCSV(run_dir / "progress.csv", math.inf))
    if "tensorboard" in report_to:
        formats.append(run_tensorboard(run_dir, 0))
    logger = Logger(folder=str(run_dir), output_formats=formats)
    settings = {"env": env_id, "env_kwargs": {k: v for k, v in env_kwargs.items() if k != "model"},
                "base_model": base_model, "seed": seed, "config": dataclasses.asdict(config),
                "samples": len(rows)}  # fmt: skip
    validation_loss = [mean_loss(validation)] if validation else []
    answer_tokens = sum(len(a) for _, a in rows)
    lengths = [len(p) + len(a) for p, a in rows]  # tokens of each row, prompt and answer
    started = time.perf_counter()
    step, checkpoint, epoch_loss = 0, None, math.nan
    bar = tqdm(total=total_steps, desc="sft", unit="step", disable=not progress)
    for epoch in range(1, config.epochs + 1):
        lm.train()
        disable_dropout(lm)
        loss_sum, token_sum = 0.0, 0
        for batch in length_grouped_batches(lengths, config.batch_size, rng):
            data = [rows[i] for i in batch]
            n = sum(len(a) for _, a in data)  # the batch's answer tokens: each micro-batch's share of the mean
            value = 0.0
            for part in micro_batches([lengths[i] for i in batch], config.micro_batch_tokens):
                with autocast():
                    loss, _ = answer_loss(lm, data[part], setup.pad_id, torch_device)
                (loss / n).backward()
                value += float(loss.detach())
            grad_norm = torch.nn.utils.clip_grad_norm_(lm.parameters(), config.max_grad_norm)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            loss_sum, token_sum = loss_sum + value, token_sum + n
            if not math.isfinite(value):
                raise FloatingPointError(f"supervised loss became {value} at step {step}; lower the learning rate")
            logger.record("sft/loss", value / n)
            logger.record("sft/grad_norm", float(grad_norm))
            logger.record("sft/learning_rate", schedule.get_last_lr()[0])
            logger.record("sft/epoch", epoch - 1 + (step - (epoch - 1) * steps_per_epoch) / steps_per_epoch)
            logger.record("time/seconds", time.perf_counter() - started)
            logger.dump(step)
            bar.update(1)
            bar.set_postfix(loss=f"{value / n:.3f}")
        epoch_loss = loss_sum / max(token_sum, 1)
        if validation:
            validation_loss.append(mean_loss(validation))
            logger.record("sft/validation_loss", validation_loss[-1])
        logger.record("sft/epoch_loss", epoch_loss)
        logger.dump(step)
        meta = {**settings, "steps": step, "epochs": epoch, "train_loss": epoch_loss,
                "validation_loss": validation_loss}  # fmt: skip
        checkpoint = _save(lm, setup.tokenizer, meta, run_dir, step, keep)
    bar.close()
    logger.close()
    return {"checkpoint": str(checkpoint), "steps": step, "epochs": config.epochs, "samples": len(rows),
            "answer_tokens": answer_tokens, "tokens": sum(lengths), "train_loss": epoch_loss, "validation_loss": validation_loss,
            "seconds": time.perf_counter() - started}  # fmt: skip


# -- textgym sft ---------------------------------------------------------------------------------------
def bf16_flag(text: str) -> bool | str:
    """The argparse type of every ``--bf16`` flag: ``auto``, ``true``/``on``/``1`` or ``false``/``off``/``0``."""
    value = {"auto": "auto", "true": True, "on": True, "1": True, "false": False, "off": False, "0": False}.get(text.lower())
    if value is None:
        import argparse

        raise argparse.ArgumentTypeError(f"invalid value {text!r}; expected auto, true or false")
    return value


def json_object(text: str) -> dict[str, Any]:
    """The argparse type of the JSON-object flags (``--rl-config``, ``--env-kwargs``): a dict, or a clear error."""
    import argparse

    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not JSON ({e}): {text!r}; expected an object such as "
                                         "'{\"temperature\": 0.3}'") from None  # fmt: skip
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"temperature\": 0.3}}', got {text!r}")
    return value


def optional_positive_int(positive_int: Any) -> Any:
    """An argparse type: ``none`` or what ``positive_int`` takes."""

    import argparse

    def parse(text: str) -> int | None:
        if text.strip().lower() == "none":
            return None
        try:
            return positive_int(text)
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(f"invalid value {text!r}; expected a positive integer or none") from None

    return parse


def add_sft_arguments(sft: Any, positive_int: Any) -> None:
    """``textgym sft``'s arguments (``positive_int``: the CLI's argparse type for counts)."""
    defaults = SFTConfig()
    sft.add_argument("id", help="env id, e.g. textgym/Translation-v0")
    sft.add_argument("--model", default=None, help="model alias, path or hub id (default: the env's default)")
    sft.add_argument("--out", metavar="DIR", default=None, help="run directory (default: runs/<ENV>-sft)")
    sft.add_argument("--epochs", type=positive_int, default=defaults.epochs, help=f"(default: {defaults.epochs})")
    sft.add_argument("--lr", type=float, default=defaults.learning_rate,
                     help=f"peak learning rate, decayed linearly to 0 (default: {defaults.learning_rate:g})")  # fmt: skip
    sft.add_argument("--batch-size", type=positive_int, default=defaults.batch_size, help=f"(default: {defaults.batch_size})")
    sft.add_argument("--micro-batch-tokens", metavar="N|none", type=optional_positive_int(positive_int), default=defaults.micro_batch_tokens,
                     help="most padded tokens per forward, a larger batch is split (same step, less memory); none: "
                     f"whole batches (default: {defaults.micro_batch_tokens})")  # fmt: skip
    sft.add_argument("--max-samples", type=positive_int, default=None, help="train on N samples of the train split (default: all)")
    sft.add_argument("--validation-samples", type=int, default=defaults.validation_samples,
                     help=f"validation loss after each epoch on N samples, 0: none (default: {defaults.validation_samples})")  # fmt: skip
    sft.add_argument("--bf16", type=bf16_flag, default=defaults.bf16, help="auto, true or false (default: auto)")
    sft.add_argument("--seed", type=int, default=0, help="(default: 0)")
    sft.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    sft.add_argument("--max-new-tokens", type=positive_int, default=None,
                     help="the env's answer length, the longest answer trained (default: the env's)")  # fmt: skip
    sft.add_argument("--keep", metavar="N", type=positive_int, default=1, help="checkpoints kept (default: 1)")


def sft_main(args: Any) -> int:
    """``textgym sft``: train, then say where the model is and how to start RL from it."""
    config = SFTConfig(epochs=args.epochs, learning_rate=args.lr, batch_size=args.batch_size, max_samples=args.max_samples,
                       bf16=args.bf16, validation_samples=args.validation_samples,
                       micro_batch_tokens=args.micro_batch_tokens)  # fmt: skip
    env_kwargs = {} if args.max_new_tokens is None else {"max_new_tokens": args.max_new_tokens}
    summary = train_sft(args.id, model=args.model, out=args.out, config=config, seed=args.seed, device=args.device,
                        env_kwargs=env_kwargs, keep=args.keep)  # fmt: skip
    run_dir = Path(summary["checkpoint"]).parent
    losses = ", ".join(f"{v:.4f}" for v in summary["validation_loss"]) or "not measured"
    print(f"saved {summary['checkpoint']}: {summary['steps']} steps, {summary['epochs']} epochs over {summary['samples']} "
          f"samples ({summary['answer_tokens']:,} answer tokens each), {summary['seconds']:.0f} s; last epoch's train "
          f"loss {summary['train_loss']:.4f}; validation loss per epoch (before training first): {losses}")  # fmt: skip
    print(f"records in {run_dir}: progress.csv, TensorBoard events (tensorboard --logdir {run_dir})")
    print(f"next: textgym eval {args.id} --checkpoint {run_dir}   |   textgym train {args.id} --init {run_dir}")
    return 0
