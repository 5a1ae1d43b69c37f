"""Writing a new task without subclassing: data + prompt + reward, one call.

>>> import gymnasium as gym, textgym
>>> def exact(texts, samples):
...     return [float(t.strip() == s.references[0]) for t, s in zip(texts, samples)]
>>> entry = textgym.register_task(
...     "doc/Capitals-v0",
...     samples=[{"prompt": "France", "references": ["Paris"]}, {"prompt": "Peru", "references": ["Lima"]}],
...     prompt="What is the capital of {prompt}? Answer with one word.",
...     reward=exact,
...     max_new_tokens=8,
... )
>>> env = gym.make("doc/Capitals-v0", model="tiny-random", split="train")

For full control subclass :class:`textgym.Task` instead (see ``textgym new-task``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from textgym.data.base import Sample, SplitSizes, as_samples, check_split, check_split_sizes, split_samples
from textgym.data.hf import describe_dataset
from textgym.data.source import UserData
from textgym.errors import ConfigError
from textgym.integrations.trl import TRLRewardAdapter
from textgym.registry import EnvEntry, register_env
from textgym.rewards.base import RewardSpec, reward_style
from textgym.tasks.base import Task

SampleSource = (
    Sequence[Sample | Mapping[str, Any]]
    | Mapping[str, Sequence[Sample | Mapping[str, Any]]]
    | Callable[[str], Sequence[Sample | Mapping[str, Any]]]
)
PromptSpec = str | Callable[[Sample], str | list[dict[str, str]]]


class SimpleTask(Task):
    """A task assembled from plain objects (what :func:`register_task` registers).

    Args:
        samples: a list of samples (``Sample`` or dicts with ``prompt``,
            ``references``, optional ``id`` and extra keys), split 80/10/10
            by a stable hash of the id (or ``split_sizes``); or
            ``{"train": [...], "test": [...]}``; or a function ``split -> samples``.
        data_files / fields / dataset / dataset_config: the built-in loaders instead of
            ``samples``; ``dataset`` may be a ``datasets.Dataset`` or ``DatasetDict`` object.
        split_sizes: how a list of samples, one data file or one Dataset is split:
            fractions ``(0.8, 0.1, 0.1)`` (default) or row counts ``(8, 1, 1)``.
            With at least 3 rows no split is empty.
        prompt: a format string over the sample (``{prompt}`` and any extra
            key of the sample) or a function ``sample -> str | messages``.
        chat: wrap the prompt in the tokenizer's chat template.
        on_bad_row: ``"raise"`` (default) or ``"skip"`` bad rows of data files/datasets (with a warning).
        allowed_tokens: strings whose tokens (plus EOS) are the only sensible
            actions; exposed as the env's action mask.
        name: the name errors use (``register_task`` passes the env id).
    """

    def __init__(
        self,
        samples: SampleSource | None = None,
        *,
        data_files: Any = None,
        fields: Mapping[str, str] | None = None,
        dataset: Any = None,
        dataset_config: str | None = None,
        prompt: PromptSpec = "{prompt}",
        chat: bool = True,
        allowed_tokens: Sequence[str] | None = None,
        main_metric: str = "reward",
        on_bad_row: str = "raise",
        split_sizes: SplitSizes | None = None,
        name: str = "SimpleTask",
    ) -> None:
        super().__init__()
        self.user_data = UserData(data_files, dataset, dataset_config, fields or {}, on_bad_row, split_sizes)
        if (samples is not None) + self.user_data.given != 1:
            raise ConfigError(f"task {name!r}: give exactly one of samples=, data_files= and dataset=")
        check_split_sizes(split_sizes)
        if split_sizes is not None and (callable(samples) or isinstance(samples, Mapping)):
            raise ConfigError(f"task {name!r}: split_sizes= splits one list of samples; this source names its splits")
        self.split_sizes = split_sizes
        if not (isinstance(prompt, str) or callable(prompt)):
            raise ConfigError(f"task {name!r}: prompt must be a format string or a function, got {prompt!r}")
        self.name = name
        self.source = samples
        self.prompt = prompt
        self.chat = chat
        self.allowed_tokens = None if allowed_tokens is None else tuple(allowed_tokens)
        self.main_metric = main_metric

    def load(self, split: str) -> list[Sample]:
        split = check_split(split)
        if self.user_data.given:
            return self.user_data.load(split)
        source = self.source
        if callable(source):
            return as_samples(source(split), f"{self.name} samples({split!r})")
        if isinstance(source, Mapping):
            named = {check_split(k): v for k, v in source.items()}
            return as_samples(named.get(split, []), f"{self.name} samples[{split!r}]")
        return split_samples(as_samples(source, f"{self.name} samples"), split, sizes=self.split_sizes)

    def messages(self, sample: Sample) -> list[dict[str, str]]:
        if callable(self.prompt):
            result = self.prompt(sample)
            if isinstance(result, list):
                return result
            if not isinstance(result, str):
                raise ConfigError(
                    f"task {self.name!r}: the prompt function returned {type(result).__name__} for sample "
                    f"{sample.id!r}; expected a string or a list of chat messages"
                )
            return [{"role": "user", "content": result}]
        try:
            text = self.prompt.format(prompt=sample.prompt, **{k: v for k, v in sample.meta.items() if k != "prompt"})
        except (KeyError, IndexError) as err:
            raise ConfigError(
                f"task {self.name!r}: prompt template {self.prompt!r} uses {err} which sample {sample.id!r} "
                f"does not have; available: ['prompt', *{sorted(sample.meta)}]"
            ) from None
        return [{"role": "user", "content": text}]

    def format_prompt(self, sample: Sample, tokenizer: Any) -> str:
        messages = self.messages(sample)
        if not any(str(m.get("content", "")).strip() for m in messages):
            raise ConfigError(f"task {self.name!r}: the prompt formatter returned an empty prompt for sample {sample.id!r}")
        return super().format_prompt(sample, tokenizer)

    def resolve_reward(self, spec: RewardSpec) -> RewardSpec:
        """A TRL reward function (``f(prompts, completions, **columns)``) is called the TRL way."""
        if callable(spec) and reward_style(spec, f"task {self.name!r}") == "trl":
            return TRLRewardAdapter(spec, self, f"task {self.name!r}")
        return spec

    def action_mask(self, tokenizer: Any) -> np.ndarray | None:
        if self.allowed_tokens is None:
            return None
        mask = np.zeros(len(tokenizer), dtype=bool)
        for text in self.allowed_tokens:
            mask[tokenizer.encode(text, add_special_tokens=False)] = True
        mask[tokenizer.eos_token_id] = True
        return mask


def register_task(
    id: str,
    samples: SampleSource | None = None,
    *,
    prompt: PromptSpec = "{prompt}",
    reward: RewardSpec = "chrf",
    description: str = "",
    chat: bool = True,
    allowed_tokens: Sequence[str] | None = None,
    data_files: Any = None,
    fields: Mapping[str, str] | None = None,
    dataset: Any = None,
    dataset_config: str | None = None,
    main_metric: str = "reward",
    on_bad_row: str = "raise",
    split_sizes: SplitSizes | None = None,
    **env_defaults: Any,
) -> EnvEntry:
    """Register data + prompt + reward as a Gymnasium id (with a vector entry point).

    ``reward`` is a metric name, ``{name: weight}``, a callable
    ``(texts, samples) -> scores`` or a TRL reward function
    ``(prompts, completions, **columns) -> scores`` (recognised by its
    ``completions`` parameter or marked with :func:`textgym.trl_reward`; see
    :class:`~textgym.integrations.trl.TRLRewardAdapter` for what it gets);
    a callable of neither shape is refused here. ``env_defaults`` are env keyword
    arguments (``max_new_tokens``, ``max_prompt_tokens``, ``reward_mode`` ...)
    that ``gym.make`` keyword arguments override. ``split_sizes`` (fractions
    or row counts for train/validation/test) splits a list of samples, one
    data file or one ``datasets.Dataset``; ``dataset`` takes a hub id, a
    ``save_to_disk`` folder or a ``Dataset``/``DatasetDict`` object.
    """
    task_kwargs = {
        "samples": samples,
        "data_files": data_files,
        "fields": fields,
        "dataset": dataset,
        "dataset_config": dataset_config,
        "prompt": prompt,
        "chat": chat,
        "allowed_tokens": allowed_tokens,
        "main_metric": main_metric,
        "on_bad_row": on_bad_row,
        "split_sizes": split_sizes,
        "name": id,
    }
    SimpleTask(**task_kwargs)  # argument errors now, not at the first gym.make
    if callable(reward):
        reward_style(reward, f"task {id!r}")
    kwargs = {k: v for k, v in task_kwargs.items() if v is not None}
    return register_env(
        id,
        SimpleTask,
        description=description,
        data="user samples" if samples is not None else str(data_files) if data_files is not None
        else describe_dataset(dataset),
        kwargs={**kwargs, "reward": reward, **env_defaults},
    )
