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
TURN_REWARDS = ("sum", "final")
#: The assistant answer rendered into the chat template to find what the template puts around it.
ANSWER_SENTINEL = "TEXTGYM_ANSWER_7f3a"
ENV_KWARGS = (
    "model",
    "split",
    "max_new_tokens",
    "max_prompt_tokens",
    "max_reply_tokens",
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
    ``split``, ``max_new_tokens``, ``max_prompt_tokens``, ``max_reply_tokens``
    (multi-turn tasks only: the longest message the env appends between two
    answers), ``reward``, ``reward_mode``, ``scoring_workers``; the rest go to
    the task.  The task's ``reward_guards`` multiply whatever reward is chosen.
    """

    def __init__(
        self,
        task: Any,
        *,
        model: str | None = None,
        split: str = "train",
        max_new_tokens: int = 64,
        max_prompt_tokens: int = 256,
        max_reply_tokens: int = 64,
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
        reply_tokens = _positive_int("max_reply_tokens", max_reply_tokens)
        if reward_mode not in REWARD_MODES:
            raise ConfigError(f"reward_mode must be one of {list(REWARD_MODES)}, got {reward_mode!r}")
        self.reward_mode = reward_mode
        self.task = make_task(task, task_kwargs, owner)
        self.max_turns, self.turn_rewards = self._check_turns()
        #: the longest reply between two answers (0 for a single-turn task, which has none)
        self.max_reply_tokens = reply_tokens if self.max_turns > 1 else 0
        #: observation columns after the prompt: every answer and every reply
        self.conversation_tokens = self.max_turns * self.max_new_tokens + (self.max_turns - 1) * self.max_reply_tokens
        self.tokenizer = load_tokenizer(model)
        self.model = model
        self.reward = Reward(
            self.task.resolve_reward(self.task.default_reward if reward is None else reward),
            extra_metrics=self.task.info_metrics,
            owner=f"task {getattr(self.task, 'name', type(self.task).__name__)!r}",
            workers=0 if scoring_workers == 0 else _positive_int("scoring_workers", scoring_workers),
            guards=self.task.reward_guards,
        )
        self.samples: list[Sample] = self.task.samples(self.split)
        self.eos_id = int(self.tokenizer.eos_token_id)
        pad = self.tokenizer.pad_token_id
        self.pad_id = self.eos_id if pad is None else int(pad)
        self.vocab_size = len(self.tokenizer)
        self.action_mask = self._check_mask(self.task.action_mask(self.tokenizer))
        self._prompts: dict[int, tuple[np.ndarray, str]] = {}
        self.shard_of: tuple[int, int] | None = None
        length = self.max_prompt_tokens + self.conversation_tokens
        self.observation_space = spaces.Dict(
            {
                "input_ids": spaces.Box(0, self.vocab_size - 1, (length,), np.int64),
                "attention_mask": spaces.Box(0, 1, (length,), np.int64),
            }
        )
        self.action_space = spaces.Discrete(self.vocab_size)
        self.encoded_prompt(0)  # an instruction that cannot fit fails here, not mid-training
        self._reply_template: tuple[list[dict[str, str]], str, str] | None = None
        if self.max_turns > 1:
            self._reply_template = self._chat_turn_change()
            empty = dataclasses.replace(self.samples[0], prompt="")
            need = len(self._reply_text_ids(empty, False)[0])
            if need > self.max_reply_tokens:
                raise ConfigError(f"{self.owner}: max_reply_tokens={self.max_reply_tokens} is too small: the turn change "
                                  f"alone (an empty message) needs {need} tokens; raise max_reply_tokens")

    def _check_turns(self) -> tuple[int, str]:
        name = type(self.task).__name__
        turns = self.task.max_turns
        if isinstance(turns, bool) or not isinstance(turns, (int, np.integer)) or turns < 1:
            raise ConfigError(f"{name}.max_turns must be a positive integer (answers per episode), got {turns!r}")
        if self.task.multi_turn and turns < 2:
            raise ConfigError(f"{name} says multi_turn = True but max_turns = {turns}: set max_turns, the most "
                              "answers one episode holds (multi_turn follows from it)")
        if self.task.turn_rewards not in TURN_REWARDS:
            raise ConfigError(f"{name}.turn_rewards must be one of {list(TURN_REWARDS)}, got {self.task.turn_rewards!r}")
        return int(turns), self.task.turn_rewards

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
            max_turns=self.max_turns,
            max_reply_tokens=self.max_reply_tokens,
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

    # -- replies (multi-turn) ---------------------------------------------------------------
    def _uses_chat(self) -> bool:
        return bool(self.task.chat and getattr(self.tokenizer, "chat_template", None))

    def _render(self, messages: list[dict[str, str]], generation_prompt: bool) -> str:
        try:
            return self.tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=False)
        except Exception as err:  # jinja raises its own errors for conversations a template refuses
            raise ConfigError(f"{self.owner}: the chat template cannot render a multi-turn conversation "
                              f"({type(err).__name__}: {err}); use a single-turn task or a model whose template can") from None

    def _chat_turn_change(self) -> tuple[list[dict[str, str]], str, str] | None:
        """(messages, text up to the answer, that text + the closed answer): the fixed parts of the chat
        continuation after an answer (None without a chat template).

        The template is rendered with a sentinel answer: the first prompt plus the answer must be a
        prefix of the prompt closed after the answer, itself a prefix of the prompt with one more
        user message; a template that rewrites earlier turns (e.g. drops them) is refused.
        """
        if not self._uses_chat():
            return None
        messages = self.task.messages(self.samples[0])
        head = self._render(messages, True) + ANSWER_SENTINEL
        closed = self._render([*messages, {"role": "assistant", "content": ANSWER_SENTINEL}], False)
        if not closed.startswith(head):
            raise ConfigError(
                f"{self.owner}: the chat template is not prefix-stable: the prompt followed by an answer is not how "
                f"it renders that answer ({closed[-200:]!r}); multi-turn episodes need a template that only appends"
            )
        return messages, head, closed

    def _reply_text_ids(self, sample: Sample, answer_ended_with_eos: bool) -> tuple[list[int], str]:
        if self._reply_template is None:
            text = self.task.format_reply(sample)
        else:
            messages, head, closed = self._reply_template
            full = self._render([*messages, {"role": "assistant", "content": ANSWER_SENTINEL},
                                 {"role": "user", "content": sample.prompt}], True)
            if not full.startswith(closed):
                raise ConfigError(
                    f"{self.owner}: the chat template is not prefix-stable: adding a user message after an answer "
                    f"changes what came before ({full[len(head) - 100:len(closed) + 100]!r})"
                )
            text = full[len(head):]
            eos = self.tokenizer.eos_token
            if answer_ended_with_eos and eos and text.startswith(eos):
                text = text[len(eos):]  # the agent's EOS already closed its turn
        return self.tokenizer(text, add_special_tokens=False)["input_ids"], text

    def fit_reply(self, sample: Sample, answer_ended_with_eos: bool) -> tuple[Sample, np.ndarray, str]:
        """(the message as sent, its tokens, their text): :meth:`reply_ids` and the sample whose
        ``prompt`` is the message, cut on the right until the reply fits ``max_reply_tokens``."""
        ids, text = self._reply_text_ids(sample, answer_ended_with_eos)
        budget = self.max_reply_tokens
        data = self.tokenizer(sample.prompt, add_special_tokens=False)["input_ids"] if len(ids) > budget else []
        while len(ids) > budget:
            if not data:
                raise ConfigError(f"{self.owner}: max_reply_tokens={budget} is too small for the turn change of "
                                  f"sample {sample.id!r} ({len(ids)} tokens with an empty message)")
            data = data[: max(0, len(data) - (len(ids) - budget) - 1)]
            sample = dataclasses.replace(sample, prompt=self.tokenizer.decode(data))
            ids, text = self._reply_text_ids(sample, answer_ended_with_eos)
        return sample, np.asarray(ids, dtype=np.int64), text

    def reply_ids(self, sample: Sample, answer_ended_with_eos: bool) -> tuple[np.ndarray, str]:
        """The tokens the env appends after an answer to say ``sample.prompt``, and their text.

        With a chat template: the template's continuation after the assistant's answer, i.e. the
        end of the assistant's turn (left out when the answer ended with the EOS token and the
        template closes a turn with it, as SmolLM2's ``<|im_end|>``; kept when the answer was cut
        at ``max_new_tokens``), the user turn holding the message, and the generation prompt.
        Without one: :meth:`~textgym.tasks.base.Task.format_reply`.  The message (never the
        template) is cut on the right so that the whole fits ``max_reply_tokens``.

        Example:
            >>> import gymnasium as gym, textgym
            >>> from textgym import Sample
            >>> setup = gym.make("textgym/Dialogue-v0", model="tiny-random", turns=2, split="test").unwrapped.setup
            >>> ids, text = setup.reply_ids(Sample("s", "higher", ("7",)), answer_ended_with_eos=False)
            >>> text
            '<|im_end|>\\n<|im_start|>user\\nhigher<|im_end|>\\n<|im_start|>assistant\\n'
            >>> setup.reply_ids(Sample("s", "higher", ("7",)), answer_ended_with_eos=True)[1][:3]
            '\\n<|'
        """
        _, ids, text = self.fit_reply(sample, answer_ended_with_eos)
        return ids, text

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
