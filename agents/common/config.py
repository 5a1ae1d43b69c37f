"""Hyperparameters shared by every on-policy algorithm, and the machinery every config uses.

Each algorithm's config (``PPOConfig``, ``GRPOConfig``, ...) is a dataclass that
extends :class:`OnPolicyConfig`.  A field's documentation is the string literal
under it; :func:`field_docs` reads those, so the command line
(``textgym train --algo X --help``) shows the same text as the code.  Values are
checked on construction: a wrong one raises :class:`~textgym.errors.ConfigError`
naming the field, the value given and what is allowed.
"""

from __future__ import annotations

import ast
import functools
import inspect
import math
import textwrap
import typing
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any, ClassVar, Literal

from textgym.errors import ConfigError

AUTO_LR_SMALL, AUTO_LR_LARGE, SMALL_MODEL_PARAMS = 1e-3, 1e-5, 10_000_000


@dataclass
class OnPolicyConfig:
    """Every knob the on-policy engine itself reads (each algorithm adds its own)."""

    min_group_size: ClassVar[int] = 1  # algorithms whose advantages compare completions of a prompt need 2

    learning_rate: float | Callable[[float], float] | None = None
    """Adam step size, or a schedule f(progress_remaining) (1 at the start, 0 at the end); None picks by model
    size: 1e-3 under 10M parameters (test-size random models), 1e-5 for pretrained language models."""
    n_rollouts: int | None = None
    """Lockstep rollout batches (of num_envs episodes each) per update; None = enough for min_episodes."""
    min_episodes: int = 64
    """Episodes per update that n_rollouts=None aims for (over all ranks): with fewer, the gradient of a
    sparse end-of-episode reward is mostly sampling noise."""
    group_size: int = 1
    """Completions sampled per prompt: num_envs // group_size drawn prompts fill group_size consecutive slots
    each (num_envs must be a multiple); each forward pass encodes a prompt once for its group."""
    batch_size: int | None = None
    """Sequences per optimizer step (mini-batch); None = the whole update's episodes (one step per epoch)."""
    micro_batch_size: int | None = None
    """Sequences per forward/backward; gradients are accumulated up to batch_size. None = batch_size."""
    n_epochs: int = 4
    """Passes over each update's episodes."""
    max_grad_norm: float = 1.0
    """Gradient clipping (global L2 norm)."""
    kl_coef: float = 0.05
    """Weight of the KL penalty against the frozen reference model (the original model); relative to the
    reward's scale when reward_scaling is on."""
    reward_scaling: bool = True
    """Divide rewards by the running standard deviation of all episode scores seen, so that kl_coef and the
    learning dynamics do not depend on the metric's scale (a copy score of std 0.1 and a reward model's
    unit-variance score train alike)."""
    missing_eos_penalty: float | None = None
    """Subtracted from the score of episodes that hit max_new_tokens without emitting EOS."""
    turn_discount: float = 1.0
    """Multi-turn episodes: the reward of turn k (0 = the first answer) counts turn_discount**k, so an
    episode's return is sum_k turn_discount**k * r_k (1.0: every turn's reward counts fully)."""
    kl_estimator: Literal["k1", "k2", "k3"] = "k1"
    """Per-token KL estimator (k1 = logp - ref_logp; k3 = exp(-k1) - 1 + k1, always >= 0)."""
    ratio_threshold: float = 10.0
    """Skip a mini-batch whose mean importance ratio exceeds this (or is not finite), and log it."""
    history_size: int = 1000
    """Per-update statistics kept in agent.history; when full every other older entry is dropped (the full log
    goes to the logger)."""
    max_nonfinite_updates: int = 3
    """Updates in a row with NaN/inf rewards or losses (each skipped) before training stops with an error."""
    temperature: float = 1.0
    """Sampling temperature, applied to every log-prob (rollout, reference, update)."""
    top_k: int = 0
    """Top-k sampling filter (0 = off), applied identically in rollout and update."""
    top_p: float = 1.0
    """Nucleus sampling filter (1.0 = off), applied identically in rollout and update."""
    lora: Any = None
    """LoRA via peft: True, a dict of LoraConfig arguments or a LoraConfig (reference = adapters disabled)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (less memory, ~30% slower)."""
    bf16: bool | Literal["auto"] = "auto"
    """bf16 autocast of the model forwards (rollout, old and reference log-probs, update); weights, optimizer
    state, log-softmax, values, losses and the KL stay float32. "auto": on only where measured faster with
    learning checked (agents.common.agent.auto_bf16: CPUs with AVX512-BF16/AMX, ~1.45x; off on GPUs, measured
    slower on an H200, and on CPUs without bf16 instructions, where it is emulated); True/False force it."""

    def __post_init__(self) -> None:
        if self.bf16 is None:  # checkpoints saved before "auto" existed stored None for the same rule (CUDA)
            self.bf16 = "auto"
        for f in fields(self):
            check_field(type(self), f.name, getattr(self, f.name))
        self.check()

    def check(self) -> None:
        """Checks that involve several fields (algorithms extend it)."""
        if self.group_size < self.min_group_size:
            raise ConfigError(f"{type(self).__name__}: the advantages compare completions of a prompt, so group_size "
                              f"must be >= {self.min_group_size}, got {self.group_size}")  # fmt: skip
        if self.micro_batch_size and self.batch_size and self.micro_batch_size > self.batch_size:
            raise ConfigError(f"micro_batch_size ({self.micro_batch_size}) must not exceed batch_size ({self.batch_size})")

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def build(cls, config: OnPolicyConfig | dict[str, Any] | None = None, **overrides: Any) -> OnPolicyConfig:
        """A config from another config or a dict, with keyword overrides; unknown names are refused."""
        if isinstance(config, OnPolicyConfig):
            base = {f.name: getattr(config, f.name) for f in fields(config) if f.name in cls.names()}
        elif isinstance(config, dict) or config is None:
            base = dict(config or {})
        else:
            raise ConfigError(f"config must be a {cls.__name__} or a dict, got {type(config).__name__}")
        values = {**base, **overrides}
        unknown = sorted(set(values) - set(cls.names()))
        if unknown:
            raise ConfigError(f"unknown {cls.__name__} field(s) {unknown}; allowed: {cls.names()}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly values (a callable learning rate or a LoraConfig is stored as its repr)."""
        data = asdict(self)
        for key, value in data.items():
            if callable(value) or not isinstance(value, (int, float, str, bool, dict, list, type(None))):
                data[key] = repr(value)
        return data


@dataclass
class GroupConfig(OnPolicyConfig):
    """Fields of the critic-free algorithms whose advantages compare the completions of a prompt (GRPO, RLOO);
    TRL's names in the docs."""

    min_group_size: ClassVar[int] = 2

    group_size: int = 4
    """Completions per prompt (TRL num_generations); the advantages compare them, so at least 2."""
    n_epochs: int = 4
    """Passes over each update's episodes (TRL num_iterations, 1 there): 4, clipped like PPO's, learn Copy-v0
    with a tiny model in a minute (test accuracy 0.07 -> 0.3-0.65 in 40k tokens; 1 epoch: 0.17-0.25)."""
    reward_scaling: bool = False
    """Off, as in TRL: the advantages are normalised by the algorithm itself."""
    epsilon_low: float = 0.2
    """Lower clip of the importance ratio, 1 - epsilon_low (TRL epsilon)."""
    epsilon_high: float | None = None
    """Upper clip of the ratio, 1 + epsilon_high (TRL epsilon_high; None = epsilon_low; DAPO's clip-higher: 0.28)."""


# -- per-field checks, from the type annotation and a few declared bounds --------------------------------
BOUNDS: dict[str, tuple[float, float, bool]] = {  # name: (low, high, low inclusive)
    "gamma": (0.0, 1.0, True),
    "gae_lambda": (0.0, 1.0, True),
    "turn_discount": (0.0, 1.0, True),
    "top_p": (0.0, 1.0, False),
    "mask_top_p": (0.0, 1.0, False),
}
POSITIVE = {"learning_rate", "max_grad_norm", "ratio_threshold", "temperature", "clip_range", "clip_range_vf",
            "target_kl", "kl_target", "epsilon_low", "epsilon_high"}  # fmt: skip
SIGNED = {"min_reward"}  # thresholds on a reward, which may be negative: any finite value


def annotation_kinds(annotation: Any) -> tuple[list[type], list[Any], bool]:
    """(plain types, Literal choices, None allowed) of a field annotation (``Any`` gives ``[object]``)."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return [], list(typing.get_args(annotation)), False
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        plain: list[type] = []
        choices: list[Any] = []
        optional = False
        for arg in typing.get_args(annotation):
            if arg is type(None):
                optional = True
                continue
            p, c, _ = annotation_kinds(arg)
            plain += p
            choices += c
        return plain, choices, optional
    if annotation is Any:
        return [object], [], True
    if typing.get_origin(annotation) is not None:  # Callable[...] etc.
        return [typing.get_origin(annotation)], [], False
    return [annotation], [], False


@functools.lru_cache(maxsize=64)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def check_field(cls: type, name: str, value: Any) -> None:
    """Raise ConfigError when ``value`` does not fit field ``name`` of config class ``cls``."""
    plain, choices, optional = annotation_kinds(_hints(cls)[name])
    if value is None:
        if optional:
            return
        raise ConfigError(f"{name} must not be None")
    if choices and value in choices:
        return
    ok = False
    for kind in plain:
        if kind is object:
            ok = True
        elif kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            ok = math.isfinite(value)
        elif kind is int and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        elif kind is bool and isinstance(value, bool):
            ok = True
        elif kind is str and isinstance(value, str):
            ok = True
        elif kind not in (float, int, bool, str) and callable(value):
            ok = True
    if not ok:
        allowed = [getattr(k, "__name__", str(k)) for k in plain] + [repr(c) for c in choices] + (["None"] if optional else [])
        raise ConfigError(f"{name}={value!r} is not allowed; expected {' | '.join(allowed)}")
    if isinstance(value, int) and not isinstance(value, bool) and int in plain and float not in plain and value < (0 if name == "top_k" else 1):
        raise ConfigError(f"{name} must be a {'non-negative' if name == 'top_k' else 'positive'} integer, got {value!r}")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and float in plain:
        if name in BOUNDS:
            low, high, inclusive = BOUNDS[name]
            if not ((low <= value if inclusive else low < value) and value <= high):
                raise ConfigError(f"{name} must be in {'[' if inclusive else '('}{low}, {high}], got {value!r}")
        elif name in POSITIVE and not value > 0:
            raise ConfigError(f"{name} must be > 0, got {value!r}")
        elif value < 0 and name not in SIGNED:
            raise ConfigError(f"{name} must be >= 0, got {value!r}")


# -- field documentation (the string under each field) ------------------------------------------------
@functools.lru_cache(maxsize=64)
def field_docs(cls: type) -> dict[str, str]:
    """``{field: its docstring}`` over the class and its dataclass parents (a child's doc wins)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is object or not hasattr(klass, "__dataclass_fields__"):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, after in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                    and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):  # fmt: skip
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def field_default(cls: type, name: str) -> Any:
    f = cls.__dataclass_fields__[name]
    if f.default is not MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not MISSING else None  # type: ignore[misc]
