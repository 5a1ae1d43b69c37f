"""textgym tasks in Hugging Face TRL, and TRL reward functions in textgym.

TRL's ``GRPOTrainer`` / ``RLOOTrainer`` train on a dataset of prompts with reward
functions ``f(prompts, completions, **columns) -> list[float]``.

* :func:`dataset` turns an env's split into such a dataset: one row per sample,
  ``prompt`` as the env shows it (chat messages, i.e. TRL's conversational
  format, for chat tasks; the plain prompt string for the others, e.g.
  ``Copy-v0``; shortened to ``max_prompt_tokens`` like the env does), plus the
  columns ``sample_id`` and ``split`` (which sample of the env it is) and
  ``references`` (its reference texts, a list of strings).
* :func:`reward_function` scores completions with the env's own reward object
  (same metrics, same code sandbox, same checks), finding each row's sample by
  its ``sample_id`` and ``split``.
* :class:`TRLRewardAdapter` goes the other way: a task made by
  :func:`textgym.register_task` with a TRL reward function calls it the TRL way.

Example:
    >>> from trl import GRPOConfig, GRPOTrainer
    >>> from textgym.integrations.trl import dataset, reward_function
    >>> trainer = GRPOTrainer(
    ...     model="HuggingFaceTB/SmolLM2-135M-Instruct", reward_funcs=reward_function("textgym/Translation-v0"),
    ...     train_dataset=dataset("textgym/Translation-v0", split="train"), args=GRPOConfig(output_dir="runs"),
    ... )

``datasets`` is needed for :func:`dataset` only: ``pip install 'textgym[hf]'``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym

from textgym.data.base import Sample, check_split
from textgym.envsetup import EnvSetup
from textgym.errors import ConfigError, DependencyNotInstalled, RewardError
from textgym.rewards.base import RewardOutput, reward_style, signature_of
from textgym.tasks.base import Task

Prompt = str | list[dict[str, str]]
Completion = str | list[dict[str, str]]


def trl_prompt(task: Task, sample: Sample, tokenizer: Any) -> Prompt:
    """A sample's prompt in TRL's format: the task's chat messages for a chat task, else the env's prompt string."""
    return task.messages(sample) if task.chat else task.format_prompt(sample, tokenizer)


def completion_text(completion: Completion) -> str:
    """The text of a TRL completion: a string, or conversational (``[{"role": "assistant", "content": ...}]``)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in completion):
        return "".join(m["content"] for m in completion if m.get("role", "assistant") == "assistant")
    raise RewardError(
        "a TRL completion must be a string or a list of messages {'role': 'assistant', 'content': str}, "
        f"got {type(completion).__name__} {completion!r:.200}"
    )


def _env_setup(env_id: str, env_kwargs: dict[str, Any], what: str, **fixed: Any) -> EnvSetup:
    """The EnvSetup of ``gym.make(env_id, **env_kwargs)``; multi-turn configurations are refused."""
    env = gym.make(env_id, disable_env_checker=True, **env_kwargs, **fixed).unwrapped
    setup = getattr(env, "setup", None)
    if not isinstance(setup, EnvSetup):
        raise ConfigError(f"{what}({env_id!r}): not a textgym env ({type(env).__name__})")
    if setup.task.multi_turn:
        raise ConfigError(
            f"{what}({env_id!r}): this configuration is multi-turn (its episodes go on after the first answer); "
            "TRL scores one completion per prompt, so use a single-turn one (e.g. Dialogue-v0 with turns=1)"
        )
    return setup


def dataset(env_id: str, split: str = "train", **env_kwargs: Any) -> Any:
    """A ``datasets.Dataset`` of an env's split for TRL, one row per sample.

    Columns: ``prompt`` (chat messages for a chat task, TRL's conversational
    format; the env's prompt string otherwise), ``sample_id`` and ``split``
    (what :func:`reward_function` needs to find the sample), ``references``
    (list of reference texts; empty for code tasks, which run tests). The data
    part of a prompt longer than ``max_prompt_tokens`` is cut as the env cuts it.
    ``env_kwargs`` are ``gym.make`` keyword arguments (``model=`` picks the
    tokenizer that measures prompts; give :func:`reward_function` the same ones).

    Example:
        >>> ds = dataset("textgym/Translation-v0", split="test", model="tiny-random")
        >>> ds.column_names
        ['prompt', 'sample_id', 'split', 'references']
    """
    try:
        import datasets
    except ImportError as err:
        raise DependencyNotInstalled(
            "textgym.integrations.trl.dataset() needs the Hugging Face 'datasets' package: pip install 'textgym[hf]'"
        ) from err
    split = check_split(split)
    setup = _env_setup(env_id, env_kwargs, "dataset", split=split)
    rows = [
        {
            "prompt": trl_prompt(setup.task, setup.fit_sample(sample), setup.tokenizer),
            "sample_id": sample.id,
            "split": split,
            "references": list(sample.references),
        }
        for sample in setup.samples
    ]
    return datasets.Dataset.from_list(rows)


class EnvReward:
    """A TRL reward function that scores completions with an env's reward (what :func:`reward_function` returns).

    Called by TRL as ``f(prompts=..., completions=..., sample_id=..., split=..., **other_columns)``;
    returns one float per completion. ``__name__`` (TRL logs ``rewards/<name>/mean``)
    is the id's name, e.g. ``Copy-v0``. When TRL passes ``log_metric`` (GRPO and RLOO
    do), the batch mean of every other metric of the env is logged as ``<name>/<metric>``.
    """

    def __init__(self, env_id: str, **env_kwargs: Any) -> None:
        self.env_id = env_id
        self.setup = _env_setup(env_id, env_kwargs, "reward_function")
        self.__name__ = env_id.rsplit("/", 1)[-1]
        self._by_id: dict[str, dict[str, Sample]] = {}

    def __repr__(self) -> str:
        return f"reward_function({self.env_id!r})"

    def sample(self, split: str, sample_id: str) -> Sample:
        """The env's sample ``sample_id`` of ``split``."""
        split = check_split(split)
        if split not in self._by_id:
            self._by_id[split] = {s.id: s for s in self.setup.task.samples(split)}
        found = self._by_id[split].get(sample_id)
        if found is None:
            raise ConfigError(
                f"reward_function({self.env_id!r}): no sample {sample_id!r} in split {split!r}; "
                "build the dataset with the same env_kwargs as the reward function"
            )
        return found

    def score(self, completions: Sequence[Completion], samples: Sequence[Sample]) -> RewardOutput:
        """The env's reward output (scores and every metric) for completions of ``samples``."""
        return self.setup.reward([completion_text(c) for c in completions], list(samples))

    def __call__(
        self,
        prompts: Sequence[Prompt] | None = None,
        completions: Sequence[Completion] | None = None,
        sample_id: Sequence[str] | None = None,
        split: Sequence[str] | None = None,
        log_metric: Callable[[str, float], None] | None = None,
        **columns: Any,
    ) -> list[float]:
        if completions is None or sample_id is None or split is None:
            given = sorted(k for k, v in {"completions": completions, "sample_id": sample_id, "split": split,
                                          **columns}.items() if v is not None)
            raise ConfigError(
                f"reward_function({self.env_id!r}) needs the completions and the columns sample_id and split "
                f"that textgym.integrations.trl.dataset() writes; got {given}"
            )
        out = self.score(completions, [self.sample(sp, i) for sp, i in zip(split, sample_id, strict=True)])
        if log_metric is not None and len(out.scores):
            for name, values in out.metrics.items():
                if name != "reward":
                    log_metric(f"{self.__name__}/{name}", float(values.mean()))
        return out.scores.tolist()


def reward_function(env_id: str, **env_kwargs: Any) -> EnvReward:
    """A TRL reward function ``f(prompts, completions, sample_id, split, **columns) -> list[float]`` for an env.

    It scores exactly as the env does at the end of an episode: the env's reward
    object (its metric or weighted metrics, the code sandbox for code tasks, the
    same checks on the scores), on the sample each dataset row names. Completions
    may be strings or conversational (``[{"role": "assistant", "content": ...}]``).
    ``env_kwargs`` are ``gym.make`` keyword arguments (``reward=``, ``strict=``, ...;
    the same as for :func:`dataset`). Unlike the env, it does not cut a text at
    ``max_new_tokens``: TRL's ``max_completion_length`` bounds completions.

    Example:
        >>> reward = reward_function("textgym/Copy-v0", model="tiny-random")
        >>> reward(prompts=["..."], completions=["dog dog"], sample_id=["copy-4"], split=["test"])  # "dog dog fish"
        [0.6666666666666666]
    """
    return EnvReward(env_id, **env_kwargs)


class TRLRewardAdapter:
    """textgym's reward contract ``f(texts, samples)`` over a TRL reward function, for one task.

    Calls ``function(prompts=..., completions=..., sample_id=..., references=..., **extra)``:
    prompts and completions in the task's TRL format (chat messages and
    ``[{"role": "assistant", "content": text}]`` for a chat task, strings
    otherwise), and as columns the sample ids, the references (lists of strings)
    and every extra key of the samples (``None`` where a sample lacks it), as
    TRL passes every dataset column. TRL's ``completion_ids``, ``trainer_state``
    and logging hooks are not passed.
    """

    def __init__(self, function: Callable[..., Any], task: Task, owner: str) -> None:
        if reward_style(function, owner) != "trl":
            raise ConfigError(f"reward of {owner}: {function!r} is not a TRL reward function")
        self.function = function
        self.task = task
        self.owner = owner
        self.__name__ = getattr(function, "__name__", type(function).__name__)

    def __call__(self, texts: Sequence[str], samples: Sequence[Sample]) -> Any:
        chat = self.task.chat
        extra = dict.fromkeys(k for s in samples for k in s.meta)
        kwargs: dict[str, Any] = {
            **{key: [s.meta.get(key) for s in samples] for key in extra},
            # a prompt string is the task's own text when chat is off: no tokenizer involved
            "prompts": [trl_prompt(self.task, s, None) for s in samples],
            "completions": [[{"role": "assistant", "content": t}] if chat else t for t in texts],
            "sample_id": [s.id for s in samples],
            "references": [list(s.references) for s in samples],
        }
        signature = signature_of(self.function)
        if signature is not None:
            try:
                signature.bind(**kwargs)
            except TypeError as err:
                raise RewardError(
                    f"reward of {self.owner}: TRL reward function {self.__name__}{signature} cannot take the "
                    f"columns {sorted(kwargs)} ({err}); TRL passes every column, so give it **kwargs"
                ) from None
        return self.function(**kwargs)
