"""Helpers over a Hugging Face LM: loading (causal or encoder-decoder), dropout, LoRA, the vocabulary
check, and the causal decoder forward with a KV cache that encodes a prompt shared by several rows once
(the encoder-decoder forward is :mod:`agents.common.seq2seq`'s)."""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch
from torch import nn

from textgym.errors import ModelError

DROPOUT_ATTRS = ("attention_dropout", "dropout", "hidden_dropout", "resid_pdrop", "attn_pdrop", "embd_pdrop")


def load_causal_lm(model: Any) -> nn.Module:
    """An LM from a textgym model spec (alias, path, hub id) or a ready ``PreTrainedModel``: a causal LM, or an
    encoder-decoder (``AutoModelForSeq2SeqLM``) when its config says ``is_encoder_decoder``."""
    if isinstance(model, nn.Module):
        return model
    from textgym.models import load_model

    return load_model(model)


FP32_ATTENTION = "textgym_sdpa_fp32"


def _sdpa_in_fp32(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  attention_mask: torch.Tensor | None, **kwargs: Any) -> tuple[torch.Tensor, Any]:  # fmt: skip
    """transformers' SDPA attention, computed in float32 inside a bf16 autocast region (see :func:`fp32_attention`)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    dtype = query.dtype

    def fp32(x: Any) -> Any:  # the additive masks: the attention mask, T5's position bias (bf16 under autocast)
        return x.float() if isinstance(x, torch.Tensor) and x.is_floating_point() else x

    attention_mask, kwargs = fp32(attention_mask), {name: fp32(value) for name, value in kwargs.items()}
    with torch.autocast(query.device.type, enabled=False):
        out, weights = sdpa_attention_forward(module, query.float(), key.float(), value.float(), attention_mask, **kwargs)
    return out.to(dtype), weights


def fp32_attention(lm: nn.Module | None) -> bool:
    """Run ``lm``'s SDPA attention in float32 under bf16 autocast, the projections and MLPs staying bf16.

    On CPUs PyTorch's bf16 flash-attention backward was measured 4x slower than the float32 one (SmolLM2-135M,
    8 x 96 tokens: 0.60 s vs 0.15 s of a 3.4 s forward + backward), while attention is a few percent of the
    FLOPs.  Only models on transformers' ``"sdpa"`` implementation are switched; returns whether ``lm`` was.
    """
    config = getattr(lm, "config", None)
    if lm is None or getattr(config, "_attn_implementation", None) != "sdpa" or not hasattr(lm, "set_attn_implementation"):
        return False
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(FP32_ATTENTION, _sdpa_in_fp32)
    AttentionMaskInterface.register(FP32_ATTENTION, sdpa_mask)  # the masks SDPA expects (padding included)
    lm.set_attn_implementation(FP32_ATTENTION)
    return True


def sparse_embedding_gradient(lm: nn.Module) -> bool:
    """Give ``lm``'s input embedding a sparse gradient where its weight is the output head's (tied) and trained.

    The head's gradient covers the whole vocabulary anyway; the embedding's own covers the rows of the tokens
    in the batch, and dense it costs a zeroed vocabulary x hidden buffer and a sum with the head's per backward
    (SmolLM2-135M: 49,152 x 576 floats, 113 MB).  Sparse, autograd adds those rows into the head's dense
    gradient: the same sum (tests/test_policy.py).  A backward without the head (the decoder's hidden states
    alone) would leave a sparse ``.grad``: a hook makes it dense, so ``.grad`` is dense for every caller.
    Returns whether the embedding was switched.
    """
    embedding, head = lm.get_input_embeddings(), lm.get_output_embeddings()
    if not isinstance(embedding, nn.Embedding) or head is None or head.weight is not embedding.weight:
        return False
    if not embedding.weight.requires_grad:  # LoRA: frozen
        return False
    embedding.sparse = True
    embedding.weight.register_post_accumulate_grad_hook(_dense_grad)
    return True


def _dense_grad(weight: torch.Tensor) -> None:
    if weight.grad is not None and weight.grad.is_sparse:
        weight.grad = weight.grad.to_dense()


def disable_dropout(module: nn.Module) -> None:
    """Dropout off everywhere (policy, reference and critic must be deterministic functions)."""
    for sub in module.modules():
        if isinstance(sub, nn.Dropout):
            sub.p = 0.0
        for attr in DROPOUT_ATTRS:
            if isinstance(getattr(sub, attr, None), float):
                setattr(sub, attr, 0.0)
    config = getattr(module, "config", None)
    for attr in DROPOUT_ATTRS:
        if isinstance(getattr(config, attr, None), float):
            setattr(config, attr, 0.0)


def model_name(model: Any) -> str:
    """A model spec or a loaded model's name, for messages."""
    if isinstance(model, nn.Module):
        return getattr(getattr(model, "config", None), "_name_or_path", type(model).__name__)
    return str(model)


def is_encoder_decoder(lm: nn.Module) -> bool:
    """True for an encoder-decoder (T5-style) model, by its config (inside a peft wrapper too)."""
    return bool(getattr(getattr(lm, "config", None), "is_encoder_decoder", False))


def padded_head(rows: int, vocab_size: int) -> bool:
    """An LM head padded past the tokenizer (T5: 32128 rows for 32100 tokens): rows a multiple of 64 and
    fewer than 1% of them extra.  The extra rows are no token; the policy never samples them."""
    return rows > vocab_size and rows % 64 == 0 and (rows - vocab_size) * 100 < rows


def check_vocab(lm: nn.Module, vocab_size: int, env_model: Any, model: Any) -> None:
    """The model's LM head must have one row per token id of the env's tokenizer (``vocab_size``),
    or be padded past it (:func:`padded_head`)."""
    rows = int(lm.get_output_embeddings().weight.shape[0])
    if rows != vocab_size and not padded_head(rows, vocab_size):
        raise ModelError(
            f"vocabulary mismatch: env {env_model or 'default'!r} has a tokenizer of {vocab_size} tokens, "
            f"model {model_name(model)!r} an LM head of {rows} (config.vocab_size="
            f"{getattr(lm.config, 'vocab_size', '?')}); build the env with the same model: "
            f"gym.make_vec(id, model={model_name(model)!r})"
        )


def apply_lora(lm: nn.Module, lora: Any, task_type: str = "CAUSAL_LM") -> nn.Module:
    """Wrap ``lm`` in LoRA adapters (``lora``: True, a dict of ``LoraConfig`` kwargs or a ``LoraConfig``);
    ``task_type`` is peft's (``"SEQ_2_SEQ_LM"`` for an encoder-decoder) unless the config names one."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as err:  # pragma: no cover - peft is a test dependency
        from textgym.errors import DependencyNotInstalled

        raise DependencyNotInstalled("lora= needs peft: pip install peft") from err
    if lora is True:
        config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type=task_type)
    elif isinstance(lora, dict):
        config = LoraConfig(**{"lora_dropout": 0.0, "task_type": task_type, **lora})
    elif isinstance(lora, LoraConfig):
        config = lora
    else:
        raise TypeError(f"lora must be True, a dict of LoraConfig arguments or a LoraConfig, got {lora!r}")
    return get_peft_model(lm, config)


def run_decoder(
    decoder: nn.Module,
    ids: torch.Tensor,
    attention_mask: torch.Tensor,
    positions: torch.Tensor,
    past: Any = None,
    use_cache: bool = False,
) -> tuple[torch.Tensor, Any]:
    """Last hidden states and KV cache of a transformers decoder (``cache=`` in transformers >= 5.x,
    ``past_key_values=`` before)."""
    kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": attention_mask, "position_ids": positions}
    kwargs["use_cache"] = use_cache  # never build a cache nobody reads (the update's full forward)
    if use_cache:
        kwargs[cache_kwarg(type(decoder))] = past
    out = decoder(**kwargs)
    cache = getattr(out, "cache", None) if use_cache else None
    if use_cache and cache is None:
        cache = getattr(out, "past_key_values", None)
    return out.last_hidden_state, cache


@functools.lru_cache(maxsize=16)
def cache_kwarg(cls: type) -> str:
    """The name of a transformers module's KV-cache argument: ``cache`` (transformers >= 5.x) or ``past_key_values``."""
    return "cache" if "cache" in inspect.signature(cls.forward).parameters else "past_key_values"


def first_real_column(mask: torch.Tensor) -> int:
    """The first column where any row has a real token (left padding shared by all rows starts before it)."""
    used = torch.nonzero(mask.any(dim=0))
    return int(used[0]) if used.numel() else max(mask.shape[1] - 1, 0)


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Position ids of a left-padded batch: 0 at the first real token."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def prompt_groups(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Rows that share a prompt: ``(first, inverse)`` with ``ids[first][inverse] == ids`` (and the same
    for ``mask``), or None when every row's prompt is its own."""
    key = torch.cat([ids, mask.to(ids.dtype)], dim=1)
    unique, inverse = torch.unique(key, dim=0, return_inverse=True)
    if unique.shape[0] == ids.shape[0]:
        return None
    rows = torch.arange(ids.shape[0], device=ids.device)
    first = torch.zeros(unique.shape[0], dtype=torch.long, device=ids.device).scatter_(0, inverse, rows)
    return first, inverse


def select_cache_rows(cache: Any, index: torch.Tensor) -> Any:
    """The KV cache of rows ``index`` (rows may repeat); differentiable, so a shared prompt's
    keys and values receive the gradients of every completion that attends to them."""
    if hasattr(cache, "batch_select_indices"):  # transformers' Cache classes
        cache.batch_select_indices(index)
        return cache
    return tuple(tuple(t[index] for t in layer) for layer in cache)  # legacy tuple-of-tuples format


def reserve_cache(cache: Any, columns: int) -> Any:
    """``cache`` with room for ``columns`` more tokens per layer, so that decoding writes each new column in place.

    transformers' ``DynamicCache`` grows by ``torch.cat``: every decoded token copies the whole cache of every
    layer, which made 22% of a CPU rollout's time (SmolLM2-135M, 8 rows, 32 new tokens after ~100 prompt
    tokens; more for longer answers).  Its layers are replaced by :class:`ReservedLayer` s (the same keys and
    values, then written in place; ``keys``/``values`` are views of the filled columns, so attention computes
    exactly what it did).  Other caches (static, sliding-window, legacy tuples) are returned as they are; an
    encoder-decoder cache has its decoder self-attention cache reserved.  Only for decoding without gradients.
    """
    inner = getattr(cache, "self_attention_cache", None)
    if inner is not None:
        reserve_cache(inner, columns)
        return cache
    layer_class = _reserved_layer_class()
    layers = getattr(cache, "layers", None)
    if layer_class is None or not isinstance(layers, list):
        return cache
    base = layer_class.__mro__[1]
    if layers and all(type(layer) is base and layer.is_initialized for layer in layers):
        layers[:] = [layer_class(layer, columns) for layer in layers]
    return cache


@functools.cache
def _reserved_layer_class() -> type | None:
    """:class:`ReservedLayer`, defined once over this transformers' ``DynamicLayer`` (None before transformers has one)."""
    try:
        from transformers.cache_utils import DynamicLayer
    except ImportError:
        return None

    class ReservedLayer(DynamicLayer):
        """A ``DynamicLayer`` whose keys and values are the first columns of a larger buffer: an update writes its
        columns into the room left (doubling the buffer when full) instead of concatenating."""

        def __init__(self, layer: Any, columns: int) -> None:
            super().__init__()
            self.device, self.is_initialized = layer.device, True
            self.length = layer.keys.shape[-2]
            self.buffers = [self._room(t, self.length + columns) for t in (layer.keys, layer.values)]
            self._views()

        def _room(self, t: torch.Tensor, size: int) -> torch.Tensor:
            out = t.new_empty((*t.shape[:-2], size, t.shape[-1]))
            out[..., : self.length, :] = t[..., : self.length, :]
            return out

        def _views(self) -> None:
            self.keys, self.values = (b[..., : self.length, :] for b in self.buffers)

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            end = self.length + key_states.shape[-2]
            if end > self.buffers[0].shape[-2]:
                self.buffers = [self._room(b, max(end, 2 * b.shape[-2])) for b in self.buffers]
            self.buffers[0][..., self.length : end, :] = key_states
            self.buffers[1][..., self.length : end, :] = value_states
            self.length = end
            self._views()
            return self.keys, self.values

        def crop(self, tokens_to_remove: int) -> None:
            if tokens_to_remove > 0:
                raise ValueError(f"crop takes a negative number of tokens to remove, got {tokens_to_remove}")
            self.length -= abs(tokens_to_remove)
            self._views()

        def _rows(self, pick: Any) -> None:
            self.buffers = [pick(b) for b in self.buffers]
            self._views()

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            self._rows(lambda b: b[indices])

        def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
            self._rows(lambda b: b.index_select(0, beam_idx.to(b.device)))

        def batch_repeat_interleave(self, repeats: int) -> None:
            self._rows(lambda b: b.repeat_interleave(repeats, dim=0))

        def reset(self) -> None:
            self.length = 0
            self._views()

    return ReservedLayer


def shared_prefix_forward(
    decoder: nn.Module, ids: torch.Tensor, mask: torch.Tensor, prompt_len: int, use_cache: bool = False
) -> tuple[torch.Tensor, Any]:
    """Hidden states (and, with ``use_cache``, the KV cache) of a left-padded batch whose first
    ``prompt_len`` columns are a prompt, encoding each distinct prompt once.

    With k completions per prompt the prompt's tokens go through the transformer once instead of
    k times; the completions then attend to its (repeated, differentiable) KV cache.  Without
    shared prompts this is a plain forward.  Gradient checkpointing in training needs the plain
    forward (transformers turns the cache off there).
    """
    positions = positions_from_mask(mask)
    groups = prompt_groups(ids[:, :prompt_len], mask[:, :prompt_len]) if prompt_len > 0 else None
    checkpointing = getattr(decoder, "gradient_checkpointing", False) and decoder.training
    if groups is None or checkpointing:
        return run_decoder(decoder, ids, mask, positions, use_cache=use_cache)
    first, inverse = groups
    P = prompt_len
    hidden, cache = run_decoder(decoder, ids[first, :P], mask[first, :P], positions[first, :P], use_cache=True)
    cache = select_cache_rows(cache, inverse)
    hidden = hidden[inverse]
    if ids.shape[1] == P:
        return hidden, (cache if use_cache else None)
    rest, cache = run_decoder(decoder, ids[:, P:], mask, positions[:, P:], cache, use_cache=True)
    return torch.cat([hidden, rest], dim=1), (cache if use_cache else None)
