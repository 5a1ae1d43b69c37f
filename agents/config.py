"""TextPPO's hyperparameters: one typed dataclass, checked on construction."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from agents.kl import KL_ESTIMATORS


@dataclass
class TextPPOConfig:
    """Every knob of :class:`agents.TextPPO` (keyword arguments of its constructor).

    Defaults follow RLHF practice for small language models (see DESIGN.md, "The agent").
    """

    learning_rate: float | Callable[[float], float] = 1e-5
    """Adam step size, or a schedule ``f(progress_remaining)`` (1 at the start, 0 at the end)."""
    n_rollouts: int = 1
    """Lockstep rollout batches (of ``num_envs`` episodes each) collected per update."""
    group_size: int = 1
    """Completions sampled per prompt: a rollout's ``num_envs`` slots hold ``num_envs // group_size``
    drawn prompts, each ``group_size`` times (``num_envs`` must be a multiple).  With more than one,
    each episode's score is centred on the mean score of the other completions of its prompt (the
    leave-one-out baseline: the advantages then compare answers to the same prompt, not easy prompts to
    hard ones), and every forward pass encodes each prompt once for its group (mini-batches shuffle
    whole groups: make ``batch_size`` and ``micro_batch_size`` multiples of ``group_size``)."""
    batch_size: int | None = None
    """Sequences per optimizer step (mini-batch); None = the whole rollout (one step per epoch)."""
    micro_batch_size: int | None = None
    """Sequences per forward/backward; gradients are accumulated up to ``batch_size``. None = batch_size."""
    n_epochs: int = 4
    """PPO epochs over each rollout."""
    gamma: float = 1.0
    """Discount per token (1.0: the score at the end counts fully for every token)."""
    gae_lambda: float = 0.95
    """GAE lambda."""
    clip_range: float = 0.2
    """PPO ratio clip epsilon."""
    clip_range_vf: float | None = 0.2
    """Value clip around the rollout values (None = no value clipping)."""
    ent_coef: float = 0.0
    """Entropy bonus coefficient."""
    vf_coef: float = 0.1
    """Value loss coefficient."""
    max_grad_norm: float = 1.0
    """Gradient clipping (global L2 norm)."""
    target_kl: float | None = None
    """Stop the epoch loop when the approx-KL of the update to the rollout policy exceeds 1.5 * target_kl."""
    kl_coef: float = 0.05
    """Per-token KL penalty coefficient against the frozen reference model."""
    kl_target: float | None = None
    """Adaptive KL control: sequence-level KL target (None = fixed ``kl_coef``)."""
    kl_horizon: int = 10_000
    """Adaptive KL control horizon in sequences."""
    kl_estimator: Literal["k1", "k2", "k3"] = "k1"
    """Per-token KL estimator of the penalty (k1 = logp - ref_logp)."""
    whiten_advantages: bool = True
    """Normalise advantages over the generated tokens of the rollout."""
    missing_eos_penalty: float | None = None
    """Subtracted from the score of episodes that hit max_new_tokens without emitting EOS."""
    ratio_threshold: float = 10.0
    """Skip a mini-batch whose mean importance ratio exceeds this (or is not finite), and log it."""
    history_size: int = 1000
    """Per-update statistics kept in ``agent.history``; when full, every other older entry is dropped, so
    memory stays bounded and the history still spans the whole run (the full log goes to the SB3 logger)."""
    max_nonfinite_updates: int = 3
    """Updates in a row with NaN/inf rewards or losses (each skipped) before training stops with an error."""
    temperature: float = 1.0
    """Sampling temperature, applied to every log-prob (rollout, reference, update)."""
    top_k: int = 0
    """Top-k sampling filter (0 = off), applied identically in rollout and update."""
    top_p: float = 1.0
    """Nucleus sampling filter (1.0 = off), applied identically in rollout and update."""
    separate_critic: bool = False
    """Value head on its own copy of the transformer instead of the shared trunk."""
    lora: Any = None
    """LoRA via peft: True, a dict of LoraConfig arguments or a LoraConfig (reference = adapters disabled)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (less memory, ~30% slower)."""
    bf16: bool | None = None
    """bf16 autocast; None = on when the device is CUDA. Log-softmax stays float32."""

    def __post_init__(self) -> None:
        def positive_int(name: str, allow_none: bool = False) -> None:
            value = getattr(self, name)
            if value is None and allow_none:
                return
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer{' or None' if allow_none else ''}, got {value!r}")

        for name in ("n_rollouts", "group_size", "n_epochs", "kl_horizon", "max_nonfinite_updates", "history_size"):
            positive_int(name)
        for name in ("batch_size", "micro_batch_size"):
            positive_int(name, allow_none=True)
        if not callable(self.learning_rate) and not (
            isinstance(self.learning_rate, (int, float)) and self.learning_rate > 0
        ):
            raise ValueError(f"learning_rate must be > 0 or a schedule callable, got {self.learning_rate!r}")
        for name, lo, hi in (("gamma", 0.0, 1.0), ("gae_lambda", 0.0, 1.0), ("top_p", 1e-9, 1.0)):
            value = getattr(self, name)
            if not lo <= value <= hi:
                raise ValueError(f"{name} must be in [{lo}, {hi}], got {value!r}")
        for name in ("clip_range", "temperature", "max_grad_norm", "ratio_threshold"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("clip_range_vf", "target_kl", "kl_target"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0 or None, got {value!r}")
        for name in ("ent_coef", "vf_coef", "kl_coef"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ValueError(f"kl_estimator must be one of {list(KL_ESTIMATORS)}, got {self.kl_estimator!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k must be an int >= 0 (0 = off), got {self.top_k!r}")
        if self.micro_batch_size and self.batch_size and self.micro_batch_size > self.batch_size:
            raise ValueError(
                f"micro_batch_size ({self.micro_batch_size}) must not exceed batch_size ({self.batch_size})"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly values (a callable learning rate or a LoraConfig is stored as its repr)."""
        data = asdict(self)
        for key, value in data.items():
            if callable(value) or not isinstance(value, (int, float, str, bool, dict, list, type(None))):
                data[key] = repr(value)
        return data

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]
