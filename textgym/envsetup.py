"""What an env of one id needs before its first episode: task, tokenizer, spaces.

:class:`EnvSetup` is built once per env (and once per vector env, shared by
its slots).  It validates every constructor argument up front, so a bad
argument fails at ``gym.make`` and never in the middle of training.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from typing import Any, Literal

import numpy as np
from gymnasium import spaces

from textgym.data.base import Sample, check_split
from textgym.errors import ConfigError
from textgym.models import load_tokenizer
from textgym.rewards.base import Reward, RewardSpec
from textgym.spec import TextSpec
from textgym.tasks.base import Task

RewardMode = Literal["sparse", "dense"]
REWARD_MODES = ("sparse", "dense")
ENV_KWARGS = (
    "model",
    "split",
    "max_new_tokens",
    "max_prompt_tokens",
    "reward",
    "reward_mode",
    "render_mode",
    "scoring_workers",
)


def _resolve_task_class(task: Any) -> type[Task]:
    if isinstance(task, str):
        module, _, attr = task.partition(":")
        try:
            task = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as err:
            raise ConfigError(f"cannot import task {task!r} (expected 'module:Class'): {err}") from err
    if not (isinstance(task, type) and issubclass(task, Task)):
        raise ConfigError(f"task must be a Task subclass or 'module:Class' string, got {task!r}")
    return task


def task_parameters(cls: type[Task]) -> list[str]:
    """Keyword arguments a task class accepts, following ``**kwargs`` up to its parents."""
    names: list[str] = []
    for klass in cls.__mro__:
        if klass is Task or klass is object or "__init__" not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters.values()
        names += [p.name for p in params if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return sorted(set(names))


def make_task(task: Any, task_kwargs: dict[str, Any], owner: str) -> Task:
    """Instantiate a task; an unknown keyword lists every keyword the env accepts."""
    if isinstance(task, Task):
        if task_kwargs:
            raise ConfigError(f"{owner}: got a ready Task instance and task kwargs {sorted(task_kwargs)}")
        return task
    cls = _resolve_task_class(task)
    allowed = task_parameters(cls)
    unknown = sorted(set(task_kwargs) - set(allowed))
    if unknown:
        raise ConfigError(
            f"{owner}: unknown keyword argument(s) {unknown}; allowed: {sorted([*ENV_KWARGS, *allowed])}"
        )
    return cls(**task_kwargs)


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


class EnvSetup:
    """Task, tokenizer, samples, reward and spaces of one env configuration.

    Its keyword arguments are the env settings every TextEnv/TextVectorEnv
    takes: ``model`` (alias, path or hub id of the tokenizer's model),
    ``split``, ``max_new_tokens``, ``max_prompt_tokens``, ``reward``,
    ``reward_mode``, ``scoring_workers``; the rest go to the task.
    """

    def __init__(
        self,
        task: Any,
        *,
        model: str | None = None,
        split: str = "train",
        max_new_tokens: int = 64,
        max_prompt_tokens: int = 256,
        reward: RewardSpec | None = None,
        reward_mode: RewardMode = "sparse",
        scoring_workers: int = 0,
        owner: str = "TextEnv",
        **task_kwargs: Any,
    ) -> None:
        self.owner = owner
        self.split = check_split(split)
        self.max_new_tokens = _positive_int("max_new_tokens", max_new_tokens)
        self.max_prompt_tokens = _positive_int("max_prompt_tokens", max_prompt_tokens)
        if reward_mode not in REWARD_MODES:
            raise ConfigError(f"reward_mode must be one of {list(REWARD_MODES)}, got {reward_mode!r}")
        self.reward_mode = reward_mode
        self.task = make_task(task, task_kwargs, owner)
        self.tokenizer = load_tokenizer(model)
        self.model = model
        self.reward = Reward(
            self.task.resolve_reward(self.task.default_reward if reward is None else reward),
            extra_metrics=self.task.info_metrics,
            owner=f"task {getattr(self.task, 'name', type(self.task).__name__)!r}",
            workers=0 if scoring_workers == 0 else _positive_int("scoring_workers", scoring_workers),
        )
        self.samples: list[Sample] = self.task.samples(self.split)
        self.eos_id = int(self.tokenizer.eos_token_id)
        pad = self.tokenizer.pad_token_id
        self.pad_id = self.eos_id if pad is None else int(pad)
        self.vocab_size = len(self.tokenizer)
        self.action_mask = self._check_mask(self.task.action_mask(self.tokenizer))
        self._prompts: dict[int, tuple[np.ndarray, str]] = {}
        self.shard_of: tuple[int, int] | None = None
        length = self.max_prompt_tokens + self.max_new_tokens
        self.observation_space = spaces.Dict(
            {
                "input_ids": spaces.Box(0, self.vocab_size - 1, (length,), np.int64),
                "attention_mask": spaces.Box(0, 1, (length,), np.int64),
            }
        )
        self.action_space = spaces.Discrete(self.vocab_size)
        self.encoded_prompt(0)  # an instruction that cannot fit fails here, not mid-training

    def spec(self, env_id: str | None = None) -> TextSpec:
        """The public facts an agent needs (:class:`~textgym.spec.TextSpec`)."""
        return TextSpec(
            env_id=env_id,
            model=self.model,
            tokenizer=self.tokenizer,
            vocab_size=self.vocab_size,
            eos_id=self.eos_id,
            pad_id=self.pad_id,
            max_prompt_tokens=self.max_prompt_tokens,
            max_new_tokens=self.max_new_tokens,
            action_mask=self.action_mask,
            chat=bool(getattr(self.task, "chat", False)),
            multi_turn=bool(self.task.multi_turn),
            num_samples=len(self.samples),
            main_metric=self.task.main_metric,
        )

    def _check_mask(self, mask: np.ndarray | None) -> np.ndarray | None:
        if mask is None:
            return None
        mask = np.asarray(mask)
        if mask.shape != (self.vocab_size,) or mask.dtype != np.bool_:
            raise ConfigError(
                f"{type(self.task).__name__}.action_mask must be a bool array of shape "
                f"({self.vocab_size},), got {mask.dtype} {mask.shape}"
            )
        if not mask[self.eos_id]:
            raise ConfigError(f"{type(self.task).__name__}.action_mask must allow EOS ({self.eos_id})")
        mask = mask.copy()
        mask.setflags(write=False)
        return mask

    def _encode(self, sample: Sample) -> tuple[list[int], str]:
        text = self.task.format_prompt(sample, self.tokenizer)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"], text

    def shard(self, rank: int, world_size: int) -> None:
        """Keep samples ``rank, rank + world_size, ...`` of the split (one data-parallel rank's share).

        Calling it again with the same shard does nothing; ``reset(options={"index": i})``
        then indexes the shard.
        """
        if self.shard_of == (rank, world_size):
            return
        if self.shard_of is not None:
            raise ConfigError(f"{self.owner}: already sharded as rank {self.shard_of[0]} of {self.shard_of[1]}")
        if not (isinstance(rank, int) and isinstance(world_size, int) and 0 <= rank < world_size):
            raise ConfigError(f"need 0 <= rank < world_size, got rank={rank!r}, world_size={world_size!r}")
        if len(self.samples) < world_size:
            raise ConfigError(
                f"split {self.split!r} has {len(self.samples)} samples, fewer than the {world_size} ranks; "
                "use fewer processes or a larger split"
            )
        self.samples = self.samples[rank::world_size]
        self._prompts = {}  # keyed by sample index
        self.shard_of = (rank, world_size)

    def encoded_prompt(self, index: int) -> tuple[np.ndarray, str]:
        """Token ids and text of sample ``index``'s prompt (cached), see :meth:`encode_sample`."""
        cached = self._prompts.get(index)
        if cached is None:
            cached = self._prompts[index] = self.encode_sample(self.samples[index])
        return cached

    def encode_sample(self, sample: Sample) -> tuple[np.ndarray, str]:
        """Token ids and text of a sample's prompt, shortened to ``max_prompt_tokens`` (see :meth:`fit_sample`)."""
        _, ids, text = self._fit(sample)
        return np.asarray(ids, dtype=np.int64), text

    def fit_sample(self, sample: Sample) -> Sample:
        """The sample as this env shows it: ``sample`` itself, or, when its prompt exceeds ``max_prompt_tokens``,
        a copy whose data (``Sample.prompt``) is cut on the task's ``truncation_side`` until it fits.

        The instruction and chat template stay whole; only the data is cut.
        """
        return self._fit(sample)[0]

    def _fit(self, sample: Sample) -> tuple[Sample, list[int], str]:
        ids, text = self._encode(sample)
        budget = self.max_prompt_tokens
        if len(ids) > budget:
            data = self.tokenizer(sample.prompt, add_special_tokens=False)["input_ids"]
            while len(ids) > budget:
                keep = len(data) - (len(ids) - budget) - 1
                if keep <= 0:
                    raise ConfigError(
                        f"{self.owner}: max_prompt_tokens={budget} is too small: the instruction and "
                        f"template of sample {sample.id!r} alone need more; raise max_prompt_tokens"
                    )
                data = data[:keep] if self.task.truncation_side == "right" else data[-keep:]
                sample = dataclasses.replace(sample, prompt=self.tokenizer.decode(data))
                ids, text = self._encode(sample)
        return sample, ids, text

    def draw(self, rng: np.random.Generator, options: dict[str, Any] | None) -> int:
        """Index of the next sample: random from ``rng``, or chosen by ``options``.

        ``options={"index": i}`` picks sample ``i`` of the split;
        ``options={"sample_id": s}`` picks the sample whose id is ``s``.
        """
        options = options or {}
        unknown = set(options) - {"index", "sample_id", "reset_mask"}
        if unknown:
            raise ConfigError(f"unknown reset option(s) {sorted(unknown)}; allowed: ['index', 'sample_id']")
        if "index" in options:
            index = options["index"]
            if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < len(self.samples):
                raise ConfigError(
                    f"reset option index={index!r} is out of range; split {self.split!r} has "
                    f"{len(self.samples)} samples (0..{len(self.samples) - 1})"
                )
            return int(index)
        if "sample_id" in options:
            for i, sample in enumerate(self.samples):
                if sample.id == options["sample_id"]:
                    return i
            raise ConfigError(f"no sample with id {options['sample_id']!r} in split {self.split!r}")
        return int(rng.integers(len(self.samples)))
