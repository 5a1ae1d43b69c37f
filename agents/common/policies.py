"""LMPolicy: a Hugging Face causal LM as a Stable-Baselines3 actor-critic policy.

The actor is the LM itself: its LM head gives the logits of the next token
(SB3's default ``action_net``, a fresh ``Linear(latent, vocab)``, is never
built).  The critic is a value head on the last hidden state, initialised to
zero, on the shared trunk or, with ``separate_critic=True``, on a copy of the
transformer.  Observations are the env's ``input_ids`` / ``attention_mask``
(SB3 hands them over as floats; they are cast back to ``long``).

Two ways to use it:

* the algorithms of :mod:`agents` (fast path): batched rollouts with a KV cache, one
  forward per sequence in the update (:meth:`LMPolicy.sequence_forward`);
* stock ``stable_baselines3.PPO`` (slow, for compatibility), through
  :class:`agents.sb3_adapter.SB3VecEnv` (the README shows how).

An encoder-decoder (T5-style) model gets :class:`Seq2SeqLMPolicy`, the same interface over an
encoder and a decoder (:mod:`agents.common.seq2seq`); ``policy="auto"`` picks the class by the
model's config.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.distributions import CategoricalDistribution
from stable_baselines3.common.policies import ActorCriticPolicy
from torch import nn

from agents.common.lm import (
    apply_lora,
    check_vocab,
    disable_dropout,
    first_real_column,
    is_encoder_decoder,
    load_causal_lm,
    model_name,
    positions_from_mask,
    reserve_cache,
    run_decoder,
    select_cache_rows,
    shared_prefix_forward,
    sparse_embedding_gradient,
)
from agents.common.sampling import filter_logits, log_probs_and_entropy
from agents.common.seq2seq import Seq2SeqMethods
from textgym.errors import ModelError


@dataclass
class _CacheState:
    """KV cache of the last no-grad call (stock-SB3 path): reused when every row grew by one token."""

    ids: torch.Tensor
    mask: torch.Tensor
    cache_mask: torch.Tensor
    past: Any



POLICIES: dict[str, type[LMPolicy]] = {}  # by name (filled below the classes)
AUTO = "auto"


def resolve_policy(policy: str | type[LMPolicy], lm: nn.Module | None = None) -> type[LMPolicy] | None:
    """The policy class of ``policy``: ``"LMPolicy"`` (causal LMs), ``"Seq2SeqLMPolicy"`` (encoder-decoders),
    ``"auto"`` (the one that fits ``lm``'s config; None while ``lm`` is not known) or an LMPolicy subclass.
    Anything else raises with the allowed names.

    >>> resolve_policy("auto") is None, resolve_policy("LMPolicy").__name__
    (True, 'LMPolicy')
    """
    names = [*sorted(POLICIES), AUTO]
    if isinstance(policy, str):
        if policy == AUTO:
            if lm is None:
                return None
            return POLICIES["Seq2SeqLMPolicy" if is_encoder_decoder(lm) else "LMPolicy"]
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; allowed: {names} or an LMPolicy subclass")
        return POLICIES[policy]
    if isinstance(policy, type) and issubclass(policy, LMPolicy):
        return policy
    raise TypeError(f"policy must be one of {names} or an LMPolicy subclass, got {policy!r}")


def policy_for(model: Any, vocab_size: int, action_mask: np.ndarray | None = None, obs_length: int = 1,
               **kwargs: Any) -> LMPolicy:  # fmt: skip
    """An inference policy for ``model`` over ``vocab_size`` token ids (no env needed), of the class that fits
    the model (``"auto"``); ``obs_length`` is the observation width that SB3's ``predict`` checks."""
    lm = load_causal_lm(model)
    cls = resolve_policy(AUTO, lm)
    obs = spaces.Dict({"input_ids": spaces.Box(0, vocab_size - 1, (obs_length,), np.int64),
                       "attention_mask": spaces.Box(0, 1, (obs_length,), np.int64)})  # fmt: skip
    return cls(obs, spaces.Discrete(vocab_size), lambda _: 0.0, lm, action_mask=action_mask, **kwargs)


class LMPolicy(ActorCriticPolicy):
    """Causal LM + value head as an SB3 ``ActorCriticPolicy`` (see the module docstring).

    Args:
        observation_space, action_space, lr_schedule: as for any SB3 policy.
        model: textgym model spec (``"tiny-random"``, ``"smollm2-135m-instruct"``, a path or hub id)
            or a ready ``PreTrainedModel``.
        separate_critic: value head on its own copy of the transformer instead of the shared trunk.
        temperature, top_k, top_p: the sampling distribution (applied to every log-prob).
        action_mask: bool array ``(vocab,)`` of allowed tokens (e.g. ``env.action_masks()[0]``).
        lora: LoRA adapters via peft (True, dict of ``LoraConfig`` kwargs or ``LoraConfig``).
        gradient_checkpointing: trade compute for activation memory in the update.
        optimizer_class, optimizer_kwargs: the optimizer of the trainable parameters.
    """

    encoder_decoder: ClassVar[bool] = False  # the kind of model this class runs (config.is_encoder_decoder)
    lora_task_type: ClassVar[str] = "CAUSAL_LM"  # peft's task type of its adapters

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Callable[[float], float],
        model: Any = "tiny-random",
        *,
        separate_critic: bool = False,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        action_mask: np.ndarray | None = None,
        lora: Any = None,
        gradient_checkpointing: bool = False,
        optimizer_class: type[torch.optim.Optimizer] = torch.optim.Adam,
        optimizer_kwargs: dict[str, Any] | None = None,
        use_sde: bool = False,
        **kwargs: Any,
    ) -> None:
        if not isinstance(action_space, spaces.Discrete):
            raise TypeError(f"LMPolicy needs a Discrete action space (one token id per step), got {action_space}")
        if use_sde:
            raise ValueError("LMPolicy samples tokens from a categorical distribution; use_sde=True is not supported")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        if not (isinstance(top_k, int) and top_k >= 0):
            raise ValueError(f"top_k must be an int >= 0 (0 = off), got {top_k!r}")
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
        self._model_source = (model,)  # a tuple: nn.Module attributes cannot be set before Module.__init__
        self.separate_critic = bool(separate_critic)
        self.temperature = float(temperature)
        self.top_k = int(top_k)
        self.top_p = float(top_p)
        self._action_mask_init = None if action_mask is None else np.asarray(action_mask, dtype=bool)
        self.lora = lora
        self.gradient_checkpointing = bool(gradient_checkpointing)
        self._cache: _CacheState | None = None
        super().__init__(
            observation_space,
            action_space,
            lr_schedule,
            ortho_init=False,
            optimizer_class=optimizer_class,
            optimizer_kwargs=optimizer_kwargs,
            **kwargs,
        )

    # -- construction -----------------------------------------------------------
    def _build(self, lr_schedule: Callable[[float], float]) -> None:
        source = self._model_source[0]
        lm = load_causal_lm(source)
        self._model_source = (None,)  # drop the reference: the module now lives in self.lm
        vocab = int(self.action_space.n)
        if is_encoder_decoder(lm) != self.encoder_decoder:
            kind = "an encoder-decoder" if is_encoder_decoder(lm) else "a causal LM"
            raise ModelError(
                f"{type(self).__name__} cannot run model {model_name(source)!r}: it is {kind} "
                f"(config.is_encoder_decoder={is_encoder_decoder(lm)}); use policy='auto', which picks "
                "LMPolicy for a causal LM and Seq2SeqLMPolicy for an encoder-decoder"
            )
        check_vocab(lm, vocab, "of the action space", model_name(source))
        disable_dropout(lm)
        if self.separate_critic:
            base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
            self.critic: nn.Module | None = copy.deepcopy(self.critic_trunk(base))
        else:
            self.critic = None
        if self.lora and not hasattr(lm, "disable_adapter"):  # a PeftModel (from a checkpoint) is kept as is
            lm = apply_lora(lm, self.lora, self.lora_task_type)
        if self.gradient_checkpointing:
            lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if self.lora:
                lm.enable_input_require_grads()
        sparse_embedding_gradient(lm)
        self.lm = lm
        hidden = int(self.base_lm.get_output_embeddings().weight.shape[1])
        self.value_head = nn.Linear(hidden, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)
        mask = self._action_mask_init
        if mask is not None and mask.shape != (vocab,):
            raise ValueError(f"action_mask must have shape ({vocab},), got {mask.shape}")
        self.register_buffer("action_mask", None if mask is None else torch.tensor(mask), persistent=False)
        # With a mask, the LM head is evaluated on the allowed rows only ("choices"): the
        # log-softmax over them equals the masked full-vocabulary log-softmax, at a fraction of the cost.
        # A head padded past the tokenizer (T5) is evaluated on the tokenizer's rows only, the same way.
        padded = int(self.base_lm.get_output_embeddings().weight.shape[0]) != vocab
        if (mask is None or mask.all()) and not padded:
            allowed = None
        else:
            allowed = torch.as_tensor(np.flatnonzero(np.ones(vocab, bool) if mask is None else mask), dtype=torch.long)
        slots = None
        if allowed is not None:
            slots = torch.full((vocab,), -1, dtype=torch.long)
            slots[allowed] = torch.arange(len(allowed))
        self.register_buffer("allowed_ids", allowed, persistent=False)
        self.register_buffer("token_slot", slots, persistent=False)
        params = [p for p in self.parameters() if p.requires_grad]
        kwargs = dict(self.optimizer_kwargs)
        if self.optimizer_class in (torch.optim.Adam, torch.optim.AdamW) and not {"foreach", "fused"} & set(kwargs):
            # One fused kernel for all parameters: on the CPU the per-tensor default step is ~5x slower.
            kwargs["fused"] = True
        self.optimizer = self.optimizer_class(params, lr=lr_schedule(1), **kwargs)

    @property
    def base_lm(self) -> nn.Module:
        """The transformers model (inside the peft wrapper when LoRA is on)."""
        return self.lm.get_base_model() if hasattr(self.lm, "get_base_model") else self.lm

    @property
    def decoder(self) -> nn.Module:
        return self.base_lm.get_decoder()

    def critic_trunk(self, base: nn.Module) -> nn.Module:
        """What ``separate_critic=True`` copies for the critic: the transformer of the causal LM ``base``."""
        return base.get_decoder()

    @property
    def vocab_size(self) -> int:
        return int(self.action_space.n)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            separate_critic=self.separate_critic,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            action_mask=self._action_mask_init,
        )
        return data

    def set_training_mode(self, mode: bool) -> None:
        """Train/eval mode (dropout is off either way); forgets the rollout KV cache."""
        self._cache = None
        super().set_training_mode(mode)

    # -- distribution ---------------------------------------------------------------
    def filtered_logits(self, logits: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Temperature, action mask, top-k and top-p applied to choice logits (float32).

        ``logits`` are over the policy's choices (:meth:`head_logits`); ``keep`` are choice indices.
        """
        return filter_logits(logits, keep=keep, **self.sampling_filters())

    def sampling_filters(self) -> dict[str, Any]:
        """:func:`~agents.common.sampling.filter_logits`'s keywords for this policy's sampling distribution."""
        return {
            "temperature": self.temperature,
            "top_k": self.top_k,
            "top_p": self.top_p,
            "action_mask": self.action_mask if self.allowed_ids is None else None,
        }

    def head_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Raw logits over the choices: the allowed tokens when there is an action mask, else the vocabulary."""
        head = self.base_lm.get_output_embeddings()
        if self.allowed_ids is None:
            return head(hidden)
        bias = None if head.bias is None else head.bias[self.allowed_ids]
        return torch.nn.functional.linear(hidden, head.weight[self.allowed_ids], bias)

    def to_choice(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids -> choice indices (disallowed tokens -> 0; their log-prob is set to -inf by callers)."""
        return tokens if self.token_slot is None else self.token_slot[tokens].clamp(min=0)

    def to_token(self, choices: torch.Tensor) -> torch.Tensor:
        return choices if self.allowed_ids is None else self.allowed_ids[choices]

    def allowed(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(tokens, dtype=torch.bool) if self.token_slot is None else self.token_slot[tokens] >= 0

    def full_vocab(self, choice_logits: torch.Tensor) -> torch.Tensor:
        """Choice logits scattered into the full vocabulary (-inf elsewhere), for SB3's distribution."""
        if self.allowed_ids is None:
            return choice_logits
        full = choice_logits.new_full((*choice_logits.shape[:-1], self.vocab_size), float("-inf"))
        full[..., self.allowed_ids] = choice_logits
        return full

    @contextlib.contextmanager
    def swapped_lm(self, other: nn.Module | None) -> Iterator[None]:
        """Run the same filters and forward path with ``other``'s weights (the frozen reference);
        ``None`` = this LM with its LoRA adapters disabled (the base model is then the reference)."""
        if other is None:
            with self.lm.disable_adapter():
                yield
            return
        own, self.lm = self.lm, other
        try:
            yield
        finally:
            self.lm = own

    def value_of(self, hidden: torch.Tensor) -> torch.Tensor:
        """The value head on ``hidden``, in float32 also under bf16 autocast."""
        with torch.autocast(hidden.device.type, enabled=False):
            return self.value_head(hidden.float()).squeeze(-1)

    # -- the fast path (TextPPO) -----------------------------------------------------------
    def decode_step(
        self, ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor, past: Any = None,
        take: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, Any, torch.Tensor]:
        """Run the LM on new tokens with a KV cache.

        Returns the raw choice logits, the cache and the hidden state (the critic's input on the shared
        trunk) of one column per row: the last one, or ``take[row]`` (columns after it are padding, as when
        a multi-turn rollout feeds the environment's reply to some rows).  The first call (``past=None``)
        on a left-padded prompt batch encodes each distinct prompt once.
        """
        if past is None:
            hidden, cache = shared_prefix_forward(self.decoder, ids, attention_mask, ids.shape[1], use_cache=True)
        else:
            hidden, cache = run_decoder(self.decoder, ids, attention_mask, positions, past, use_cache=True)
        last = hidden[:, -1] if take is None else hidden[torch.arange(hidden.shape[0], device=hidden.device), take]
        return self.head_logits(last), cache, last

    def select_decode_rows(self, past: Any, index: torch.Tensor) -> Any:
        """The :meth:`decode_step` state of rows ``index`` only (the decoding loop drops finished rows)."""
        return select_cache_rows(past, index)

    def reserve_decode_room(self, past: Any, columns: int) -> Any:
        """The :meth:`decode_step` state with room for ``columns`` more tokens (written in place, not copied per
        token: :func:`~agents.common.lm.reserve_cache`)."""
        return reserve_cache(past, columns)

    def sequence_forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int, with_values: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Log-probs, entropies and values of every generated token, in ONE forward pass.

        ``input_ids``/``attention_mask`` (B, P+T) hold the left-padded prompt in
        columns [0, P) and the generated tokens after (mask 0 past each sequence's end).
        Returns ``(logp, entropy, values)``, each (B, T) float32; the value of token t
        is V(prompt + tokens[:t]), read at column P-1+t.  Rows with the same prompt (several
        completions per prompt) share one encoding of it (:func:`shared_prefix_forward`).
        """
        h_gen = self.answer_hidden(input_ids, attention_mask, prompt_len)
        tokens = input_ids[:, prompt_len:]
        choices = self.to_choice(tokens)
        logp, entropy = log_probs_and_entropy(self.head_logits(h_gen), choices, **self.sampling_filters())
        logp = logp.masked_fill(~self.allowed(tokens), float("-inf"))
        values = None
        if with_values:
            if self.critic is not None:
                h_gen = self.answer_hidden(input_ids, attention_mask, prompt_len, self.critic)
            values = self.value_of(h_gen)
        return logp, entropy, values

    def answer_hidden(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int, trunk: nn.Module | None = None
    ) -> torch.Tensor:
        """(B, T, H) hidden states of the states each generated token was drawn in (the inputs of
        :meth:`head_logits` and of the value head), from the policy's transformer or ``trunk`` (the
        critic's copy).  Here: the causal LM over prompt + answer, read at columns P-1 .. P+T-2."""
        start = first_real_column(attention_mask[:, :prompt_len])  # drop padding columns every row shares
        input_ids, attention_mask, prompt_len = input_ids[:, start:], attention_mask[:, start:], prompt_len - start
        hidden, _ = shared_prefix_forward(self.decoder if trunk is None else trunk, input_ids, attention_mask, prompt_len)
        return hidden[:, prompt_len - 1 : -1]

    # -- the SB3 interface ----------------------------------------------------------------
    def _obs(self, obs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = obs["input_ids"].long()
        mask = obs["attention_mask"].long()
        if ids.dim() == 1:
            ids, mask = ids.unsqueeze(0), mask.unsqueeze(0)
        return ids, mask

    def _last_hidden(self, ids: torch.Tensor, mask: torch.Tensor, use_cache: bool) -> torch.Tensor:
        """Hidden state at each row's last real token (where the next token is predicted)."""
        use_cache = use_cache and not torch.is_grad_enabled()
        state = self._cache
        if use_cache and state is not None and state.ids.shape == ids.shape:
            diff = mask - state.mask
            grew = bool(((diff == 0) | (diff == 1)).all() and (diff.sum(1) == 1).all())
            if grew and bool((ids[state.mask.bool()] == state.ids[state.mask.bool()]).all()):
                col = diff.argmax(1, keepdim=True)
                cache_mask = torch.cat([state.cache_mask, torch.ones_like(col)], dim=1)
                hidden, past = run_decoder(
                    self.decoder, ids.gather(1, col), cache_mask, mask.sum(1, keepdim=True) - 1, state.past, True
                )
                if cache_mask.shape[1] <= 2 * ids.shape[1]:
                    self._cache = _CacheState(ids, mask, cache_mask, past)
                else:
                    self._cache = None  # compact: the next call starts a fresh cache
                return hidden[:, -1]
        hidden, past = run_decoder(self.decoder, ids, mask, positions_from_mask(mask), use_cache=use_cache)
        self._cache = _CacheState(ids, mask, mask, past) if use_cache else None
        last = ids.shape[1] - 1 - mask.flip(1).argmax(1)
        return hidden[torch.arange(ids.shape[0]), last]

    def _critic_value(self, ids: torch.Tensor, mask: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        if self.critic is None:
            return self.value_of(hidden)
        hidden, _ = run_decoder(self.critic, ids, mask, positions_from_mask(mask))
        last = ids.shape[1] - 1 - mask.flip(1).argmax(1)
        return self.value_of(hidden[torch.arange(ids.shape[0]), last])

    def _distribution(self, hidden: torch.Tensor, keep: torch.Tensor | None = None) -> CategoricalDistribution:
        dist = CategoricalDistribution(self.vocab_size)
        keep = None if keep is None else self.to_choice(keep)
        filtered = self.filtered_logits(self.head_logits(hidden), keep=keep)
        return dist.proba_distribution(action_logits=self.full_vocab(filtered))

    def forward(
        self, obs: dict[str, torch.Tensor], deterministic: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Actions, values and log-probs for a batch of observations (SB3's rollout call)."""
        ids, mask = self._obs(obs)
        hidden = self._last_hidden(ids, mask, use_cache=True)
        dist = self._distribution(hidden)
        actions = dist.get_actions(deterministic=deterministic)
        return actions, self._critic_value(ids, mask, hidden).unsqueeze(-1), dist.log_prob(actions)

    def evaluate_actions(
        self, obs: dict[str, torch.Tensor], actions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Values, log-probs and entropies of ``actions`` (SB3's update call)."""
        ids, mask = self._obs(obs)
        hidden = self._last_hidden(ids, mask, use_cache=False)
        actions = actions.reshape(-1).long()
        dist = self._distribution(hidden, keep=actions)
        return self._critic_value(ids, mask, hidden).unsqueeze(-1), dist.log_prob(actions), dist.entropy()

    def get_distribution(self, obs: dict[str, torch.Tensor]) -> CategoricalDistribution:
        ids, mask = self._obs(obs)
        return self._distribution(self._last_hidden(ids, mask, use_cache=False))

    def predict_values(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        ids, mask = self._obs(obs)
        hidden = self._last_hidden(ids, mask, use_cache=False)
        return self._critic_value(ids, mask, hidden).unsqueeze(-1)

    def _predict(self, observation: dict[str, torch.Tensor], deterministic: bool = False) -> torch.Tensor:
        ids, mask = self._obs(observation)
        return self._distribution(self._last_hidden(ids, mask, use_cache=True)).get_actions(deterministic=deterministic)


class Seq2SeqLMPolicy(Seq2SeqMethods, LMPolicy):
    """An encoder-decoder LM (``AutoModelForSeq2SeqLM``, e.g. T5) + value head on its decoder, with
    :class:`LMPolicy`'s arguments: the prompt goes to the encoder (once per distinct prompt), the answer
    is decoded from the model's decoder start token (:mod:`agents.common.seq2seq`).

    Example:
        >>> import torch
        >>> from transformers import T5Config, T5ForConditionalGeneration
        >>> t5 = T5ForConditionalGeneration(T5Config(vocab_size=64, d_model=16, d_ff=32, num_layers=1,
        ...                                          num_heads=2, d_kv=8, decoder_start_token_id=0))
        >>> policy = policy_for(t5, 64)  # "auto": this class for an encoder-decoder
        >>> type(policy).__name__
        'Seq2SeqLMPolicy'
        >>> ids, mask = torch.tensor([[5, 6, 7, 8]]), torch.ones(1, 4, dtype=torch.long)
        >>> logp, entropy, values = policy.sequence_forward(ids, mask, prompt_len=2)  # prompt [5, 6], answer [7, 8]
        >>> logp.shape, values.shape
        (torch.Size([1, 2]), torch.Size([1, 2]))
    """


POLICIES["LMPolicy"] = LMPolicy
POLICIES["Seq2SeqLMPolicy"] = Seq2SeqLMPolicy
