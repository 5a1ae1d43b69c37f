"""What an encoder-decoder (T5-style) LM needs to be the policy of the on-policy engine.

:class:`agents.common.policies.Seq2SeqLMPolicy` is ``LMPolicy`` with :class:`Seq2SeqMethods`
mixed in (the class lives beside ``LMPolicy``, so that ``policy="auto"`` can pick either
without an import cycle; its encoder-decoder half lives here).

The engine and the env keep one layout for every kind of model: a rollout row is
the left-padded prompt in columns ``[0, P)`` followed by the answer tokens
(:class:`~agents.common.buffers.SequenceBatch`).  ``Seq2SeqLMPolicy``
implements the methods the engine calls on a policy over that layout:

* the prompt goes to the encoder, once per *distinct* prompt (the ``group_size``
  completions of one prompt share its encoding, through a differentiable
  index, so every completion's gradient reaches it);
* the decoder reads ``[decoder_start] + answer[:-1]`` (teacher forcing) and
  cross-attends to the encoding; its last hidden state before each answer
  token feeds the LM head (through the model's own output scaling: T5 scales
  by ``d_model ** -0.5``; BART adds ``final_logits_bias``) and the value head;
* :meth:`~Seq2SeqMethods.decode_step`, the KV-cached step of
  :func:`agents.common.decoding.decode`: its first call encodes the prompts and
  feeds the decoder start token, later calls feed one column through the
  decoder's self- and cross-attention caches.

Everything else is :class:`~agents.common.policies.LMPolicy`'s: the sampling
distribution (temperature, action mask, top-k/top-p), the value head (zero
init, on the decoder's hidden states), LoRA (peft task type ``SEQ_2_SEQ_LM``),
``separate_critic`` (a copy of the whole encoder-decoder), saving and loading.
``policy="auto"`` picks this class for a model whose config says
``is_encoder_decoder``.

Per update the encoder of the policy runs once per distinct prompt in the rollout
(shared by the group's completions and by every decoding step), and once per
distinct prompt of each mini-batch in each epoch: the encoder is trained, so its
output changes with every optimizer step and is recomputed with the weights of
that step (caching it across steps would freeze it).  The frozen reference
model encodes each distinct prompt once more, for the KL term.

The stock-SB3 per-step interface (``forward``/``evaluate_actions``/``predict`` on
flat observations, for ``stable_baselines3.PPO``/``MaskablePPO``) is the causal
:class:`~agents.common.policies.LMPolicy`'s only; ``generate()``, evaluation and every algorithm of
:mod:`agents` work with both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from agents.common.lm import (
    cache_kwarg,
    first_real_column,
    model_name,
    prompt_groups,
    reserve_cache,
    select_cache_rows,
)
from textgym.errors import ModelError

# Model types whose decoder output is scaled by d_model ** -0.5 before the head when the embeddings are tied
# (transformers < 5 has no ``scale_decoder_outputs`` config field; the head check at build time covers the rest).
_T5_TYPES = ("t5", "mt5", "umt5", "longt5", "switch_transformers")


def encode_once(encoder: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, W, H) encoder states of left-padded prompts, running the encoder once per distinct prompt
    (rows with the same prompt get the same, differentiably shared, states)."""
    groups = prompt_groups(ids, mask)
    if groups is None:
        return encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    first, inverse = groups
    return encoder(input_ids=ids[first], attention_mask=mask[first]).last_hidden_state[inverse]


def run_seq2seq_decoder(
    decoder: nn.Module,
    ids: torch.Tensor,
    encoder_states: torch.Tensor,
    encoder_mask: torch.Tensor,
    past: Any = None,
    use_cache: bool = False,
) -> tuple[torch.Tensor, Any]:
    """Last hidden states (and, with ``use_cache``, the self- and cross-attention cache) of a transformers
    encoder-decoder's decoder over ``ids`` (every column attended, causally)."""
    kwargs: dict[str, Any] = {"input_ids": ids, "encoder_hidden_states": encoder_states,
                              "encoder_attention_mask": encoder_mask, "use_cache": use_cache}  # fmt: skip
    if use_cache:
        kwargs[cache_kwarg(type(decoder))] = past
    out = decoder(**kwargs)
    cache = getattr(out, "cache", None) if use_cache else None
    if use_cache and cache is None:
        cache = getattr(out, "past_key_values", None)
    return out.last_hidden_state, cache


@dataclass
class _DecodeState:
    """What :meth:`Seq2SeqLMPolicy.decode_step` carries between steps."""

    cache: Any
    encoder_states: torch.Tensor
    encoder_mask: torch.Tensor


class Seq2SeqMethods:
    """The encoder-decoder half of :class:`~agents.common.policies.Seq2SeqLMPolicy`: mixed in before
    ``LMPolicy``, whose methods its ``super()`` calls reach (see the module docstring)."""

    encoder_decoder = True
    lora_task_type = "SEQ_2_SEQ_LM"

    def _build(self, lr_schedule: Callable[[float], float]) -> None:
        super()._build(lr_schedule)
        start = getattr(self.base_lm.config, "decoder_start_token_id", None)
        if start is None:
            raise ModelError(
                f"encoder-decoder {model_name(self.base_lm)!r} has no config.decoder_start_token_id: the decoder "
                "does not know which token starts an answer; set it in the model's config"
            )
        self.decoder_start = int(start)
        self._check_head()

    def critic_trunk(self, base: nn.Module) -> nn.Module:
        """``separate_critic=True`` copies the whole encoder-decoder (the critic reads its decoder's states)."""
        return base

    # -- the head ---------------------------------------------------------------------------------
    def head_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Raw choice logits of decoder hidden states, as the model's forward makes them: T5 scales the
        states by ``d_model ** -0.5`` first, BART adds ``final_logits_bias`` after."""
        lm = self.base_lm
        scale = _output_scale(lm.config)
        logits = super().head_logits(hidden if scale == 1.0 else hidden * scale)
        bias = getattr(lm, "final_logits_bias", None)
        if isinstance(bias, torch.Tensor):
            logits = logits + (bias[0] if self.allowed_ids is None else bias[0, self.allowed_ids]).to(logits.dtype)
        return logits

    @torch.no_grad()
    def _check_head(self) -> None:
        """The head above must give the model's own logits (an architecture that maps decoder states to logits
        some other way fails here, not with silently wrong log-probs)."""
        lm = self.base_lm
        ids = torch.tensor([[self.decoder_start, self.decoder_start]], device=self.device)
        mask = torch.ones_like(ids)
        expected = lm(input_ids=ids, attention_mask=mask, decoder_input_ids=ids[:, :1], use_cache=False).logits[:, -1]
        hidden = self.answer_hidden(torch.cat([ids, ids[:, :1]], dim=1), torch.ones(1, 3, dtype=torch.long, device=ids.device), 2)
        mine = Seq2SeqMethods.head_logits(self, hidden[:, 0])  # not a subclass' restriction (NLPO)
        if self.allowed_ids is not None:
            expected = expected[:, self.allowed_ids]
        if not torch.allclose(mine, expected, rtol=1e-4, atol=1e-4):
            raise ModelError(
                f"Seq2SeqLMPolicy does not know how model type {lm.config.model_type!r} turns decoder states "
                "into logits (its own logits differ from the LM head's); supported: T5-style and BART-style models"
            )

    # -- the engine's interface ----------------------------------------------------------------
    def answer_hidden(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int, trunk: nn.Module | None = None
    ) -> torch.Tensor:
        """(B, T, H) decoder states before each answer token: the prompt (columns ``[0, P)``) encoded once per
        distinct prompt, the decoder teacher-forced on ``[decoder_start] + answer[:-1]``; ``trunk`` is another
        encoder-decoder to run (the critic's copy)."""
        model = self.base_lm if trunk is None else trunk
        prompt, prompt_mask = input_ids[:, :prompt_len], attention_mask[:, :prompt_len]
        start = first_real_column(prompt_mask)  # drop padding columns every row shares
        prompt, prompt_mask = prompt[:, start:], prompt_mask[:, start:]
        states = encode_once(model.get_encoder(), prompt, prompt_mask)
        answer = input_ids[:, prompt_len:]
        first = answer.new_full((answer.shape[0], 1), self.decoder_start)
        decoder_ids = torch.cat([first, answer[:, :-1]], dim=1)
        hidden, _ = run_seq2seq_decoder(model.get_decoder(), decoder_ids, states, prompt_mask)
        return hidden

    def decode_step(
        self, ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor, past: Any = None,
        take: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, Any, torch.Tensor]:
        """The KV-cached step of :func:`~agents.common.decoding.decode`.

        First call (``past=None``): ``ids``/``attention_mask`` are the left-padded prompts; they are encoded
        (once per distinct prompt) and the decoder start token is fed.  Later calls: ``ids`` is the column of
        the tokens just sampled.  ``positions`` (the causal layout's) are not needed: the decoder's cache
        knows its length.  Returns the choice logits of the next token, the state, the last hidden state.
        ``take`` (a column per row, for multi-turn rollouts) is refused: an encoder-decoder answers one turn.
        """
        if take is not None:
            raise ValueError("Seq2SeqLMPolicy decodes one turn: multi-turn conversations need a causal LM (LMPolicy)")
        model = self.base_lm
        if past is None:
            states = encode_once(model.get_encoder(), ids, attention_mask)
            past = _DecodeState(None, states, attention_mask)
            ids = ids.new_full((ids.shape[0], 1), self.decoder_start)
        hidden, past.cache = run_seq2seq_decoder(model.get_decoder(), ids, past.encoder_states, past.encoder_mask,
                                                 past.cache, use_cache=True)  # fmt: skip
        last = hidden[:, -1]
        return self.head_logits(last), past, last

    def select_decode_rows(self, past: _DecodeState, index: torch.Tensor) -> _DecodeState:
        """The decoding state of rows ``index``: the decoder's cache and the encoder's outputs."""
        return _DecodeState(select_cache_rows(past.cache, index), past.encoder_states[index], past.encoder_mask[index])

    def reserve_decode_room(self, past: _DecodeState, columns: int) -> _DecodeState:
        """The decoding state with room for ``columns`` more tokens in the decoder's cache."""
        past.cache = reserve_cache(past.cache, columns)
        return past

    def _obs(self, obs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError(
            "Seq2SeqLMPolicy has no stock-SB3 per-step interface (forward/evaluate_actions/predict on flat "
            "observations); use the agents' algorithms, agent.generate() or agents.evaluation with an "
            "encoder-decoder, or a causal LM with LMPolicy for stable_baselines3.PPO / MaskablePPO"
        )


def _output_scale(config: Any) -> float:
    """The factor T5-style models apply to the decoder's output before the LM head (1.0 for others)."""
    scale = getattr(config, "scale_decoder_outputs", None)
    if scale is None:  # transformers < 5
        scale = config.model_type in _T5_TYPES and getattr(config, "tie_word_embeddings", False)
    return float(config.d_model) ** -0.5 if scale else 1.0
