"""Baseline agents for benchmarks: random tokens, a zero-shot LM, a saved PPO policy, any text function.

Every agent has two interfaces:

* ``predict(obs, state=None, episode_start=None, deterministic=False)`` --
  Stable-Baselines3's per-step interface (one action per env slot), as TextPPO;
* ``respond(obs, infos, spec)`` -- the whole answer of every slot at once, shape
  ``(num_envs, <= max_new_tokens)``; :func:`textgym.rollout.play_episodes`
  feeds it to the env token by token, so the rewards are exactly the
  token-level env's.  Benchmarks use this fast path (one batched
  ``generate`` with KV cache instead of one forward per token).

Example:
    >>> import gymnasium as gym, textgym
    >>> from agents.baselines import RandomAgent
    >>> from textgym.rollout import play_episodes
    >>> envs = gym.make_vec("textgym/Copy-v0", num_envs=2, model="tiny-random")
    >>> len(play_episodes(envs, RandomAgent(seed=0).respond, seed=0))
    2
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from textgym.errors import ConfigError
from textgym.spec import TextSpec


class RandomAgent:
    """Uniform over the allowed tokens (the env's action mask; EOS included).

    ``env`` is needed only for :meth:`predict` (it supplies the action mask).
    """

    name = "random"

    def __init__(self, seed: int = 0, env: Any = None) -> None:
        self.set_random_seed(seed)
        self.env = env

    def set_random_seed(self, seed: int) -> None:
        """Restart the token stream from ``seed`` (the benchmark does this before every cell)."""
        self.rng = np.random.default_rng(seed)

    def respond(self, obs: dict[str, np.ndarray], infos: dict[str, Any], spec: TextSpec) -> np.ndarray:
        n = obs["input_ids"].shape[0]
        return self.rng.choice(spec.allowed_tokens, size=(n, spec.max_new_tokens))

    def predict(
        self, obs: dict[str, np.ndarray], state: Any = None, episode_start: Any = None, deterministic: bool = False
    ) -> tuple[np.ndarray, Any]:
        _check_batched(obs)
        if self.env is None:
            raise ConfigError("RandomAgent.predict needs the env: RandomAgent(seed, env=envs)")
        masks = np.asarray(self.env.unwrapped.action_masks())
        return np.array([self.rng.choice(np.flatnonzero(m)) for m in masks]), state


def _check_batched(obs: dict[str, np.ndarray]) -> None:
    if np.ndim(obs["input_ids"]) != 2:
        raise ConfigError(f"predict expects batched observations (num_envs, length), got shape {np.shape(obs['input_ids'])}")


class LMAgent:
    """A causal LM answering zero-shot: greedy by default, or sampling with a temperature.

    ``model`` is a model spec (alias, local path, hub id) or a loaded model; ``device``: ``auto``, ``cpu``,
    ``cuda`` (checked by :func:`agents.common.launch.checked_device`; default: where the model is).
    """

    def __init__(self, model: Any = None, *, name: str = "zero-shot", greedy: bool = True, temperature: float = 0.7,
                 seed: int = 0, device: Any = None) -> None:  # fmt: skip
        from textgym.models import load_model

        self.name = name
        self.spec = model
        self.model = load_model(model) if model is None or isinstance(model, (str, Path)) else model
        if device is not None:
            from agents.common.launch import checked_device

            self.model = self.model.to(checked_device(device))
        self.greedy = greedy
        self.temperature = temperature
        self.set_random_seed(seed)

    def set_random_seed(self, seed: int) -> None:
        """Restart sampling from ``seed`` (the benchmark does this before every cell)."""
        import torch

        self.seed = seed
        self._sampling = torch.Generator().manual_seed(seed)  # respond's sampling stream
        self._predict_rng = torch.Generator().manual_seed(seed).get_state()  # predict's
        self._policies: dict[Any, Any] = {}

    def respond(self, obs: dict[str, np.ndarray], infos: dict[str, Any], spec: TextSpec) -> np.ndarray:
        """Every slot's answer from the agents' KV-cached decoding loop (the env's action mask applied).

        The context is each slot's real tokens: the prompt, and in a multi-turn episode the conversation so far.
        """
        import torch

        from agents.common.decoding import complete
        from textgym.rollout import left_packed

        ids, mask = (torch.as_tensor(a) for a in left_packed(obs, spec.pad_id))
        rows = complete(self._policy(spec.vocab_size, spec.action_mask), ids, mask, spec.max_new_tokens, spec.eos_id,
                        generator=self._sampling, deterministic=self.greedy)  # fmt: skip
        out = np.full((len(rows), spec.max_new_tokens), spec.eos_id, dtype=np.int64)
        for i, row in enumerate(rows):
            out[i, : len(row)] = row
        return out

    def _policy(self, vocab_size: int, action_mask: np.ndarray | None, obs_length: int = 1) -> Any:
        """The LMPolicy that samples for this agent (one per vocabulary, action mask and observation width)."""
        from agents.common.policies import policy_for

        key = (vocab_size, None if action_mask is None else action_mask.tobytes(), obs_length)
        if key not in self._policies:
            policy = policy_for(self.model, vocab_size, action_mask, obs_length,
                                temperature=1.0 if self.greedy else self.temperature)  # fmt: skip
            self._policies = {key: policy.to(self.model.device)}
        return self._policies[key]

    def predict(
        self, obs: dict[str, np.ndarray], state: Any = None, episode_start: Any = None, deterministic: bool = False
    ) -> tuple[np.ndarray, Any]:
        """Next token of every slot (SB3's per-step interface; a sampling stream of the agent's own, seeded
        by ``seed``; the LMPolicy reuses its KV cache across calls)."""
        import torch

        _check_batched(obs)
        vocab = int(self.model.get_output_embeddings().weight.shape[0])
        policy = self._policy(vocab, None, int(np.shape(obs["input_ids"])[1]))
        with torch.random.fork_rng(devices=[]):  # SB3's sampler draws from the global generator: give it ours
            torch.set_rng_state(self._predict_rng)
            out = policy.predict(obs, state, episode_start, deterministic or self.greedy)
            self._predict_rng = torch.get_rng_state()
        return out


class ZeroShotAgent(LMAgent):
    """The pretrained model as is (default: SmolLM2-135M-Instruct)."""


class PPOCheckpointAgent(LMAgent):
    """A trained agent's policy, evaluated greedily by default: any algorithm's run directory (its newest
    valid ``checkpoint-*``), one checkpoint, or a plain Hugging Face model dir, found by
    :func:`agents.common.checkpoints.resolve_checkpoint`.  ``algo``: refuse a checkpoint of another algorithm.

    ``description`` is the one line saying what was loaded:
    ``runs/copy/checkpoint-000012 (ppo, 12 updates, 9,984 tokens)``.
    """

    def __init__(self, path: str | Path, algo: str | None = None, **kwargs: Any) -> None:
        from agents.common.checkpoints import META, describe_checkpoint, resolve_checkpoint

        self.given = Path(path)
        self.path = resolve_checkpoint(path, allow_model=True)
        meta = json.loads((self.path / META).read_text(encoding="utf-8")) if (self.path / META).is_file() else {}
        if algo is not None and meta and meta.get("algo", "ppo") != algo:
            raise ConfigError(f"{path} holds a {meta.get('algo')!r} agent, not {algo!r}: name it "
                              f"{meta.get('algo')}:{path} or checkpoint:{path}")  # fmt: skip
        self.description = describe_checkpoint(self.path)
        super().__init__(str(self.path), name=kwargs.pop("name", f"{algo or 'checkpoint'}:{path}"), **kwargs)

    def training_curve(self) -> tuple[list[float], list[float], str] | None:
        """(timesteps, mean reward, column) from the SB3 ``progress.csv`` that ``textgym train`` writes into
        the run directory: found next to the checkpoint, in its run directory, or in the folder given."""
        for candidate in (self.path / "progress.csv", self.path.parent / "progress.csv", self.given / "progress.csv"):
            if candidate.is_file():
                return read_training_curve(candidate)
        return None

    def settings(self) -> dict[str, Any]:
        meta = self.path / "textppo.json"
        return json.loads(meta.read_text()) if meta.is_file() else {}


def read_training_curve(path: Path) -> tuple[list[float], list[float], str] | None:
    """(timesteps, mean reward, reward column) of an SB3 ``progress.csv``; rows without a reward are left out."""
    import csv

    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    columns = list(rows[0]) if rows else []
    reward = next((c for c in columns if c == "rollout/ep_rew_mean"), None) or next(
        (c for c in columns if c.endswith("ep_rew_mean") or c.endswith("reward_mean")), None)  # fmt: skip
    if reward is None:
        return None
    steps = next((c for c in columns if c.endswith("total_timesteps")), None)
    xs, ys = [], []
    for i, row in enumerate(rows):
        try:
            y = float(row[reward])
            x = float(row[steps]) if steps and row.get(steps) else float(i)
        except (TypeError, ValueError):
            continue
        xs.append(x)
        ys.append(y)
    return (xs, ys, reward) if xs else None


class SequenceAgent:
    """Benchmarks a function that answers prompts with whole strings (an API model, a rule system).

    ``fn(prompts) -> responses`` gets each slot's ``info["prompt"]`` (the task
    input; ``use_prompt_text=True`` gives the full formatted prompt instead)
    and returns one string per prompt; each is played exactly as
    :class:`textgym.wrappers.SequenceLevel` plays it.
    """

    def __init__(self, fn: Callable[[Sequence[str]], Sequence[str]], name: str = "sequence", use_prompt_text: bool = False) -> None:
        self.fn = fn
        self.name = name
        self.key = "prompt_text" if use_prompt_text else "prompt"

    def respond(self, obs: dict[str, np.ndarray], infos: dict[str, Any], spec: TextSpec) -> np.ndarray:
        from textgym.wrappers import response_tokens

        prompts = [str(p) for p in infos[self.key]]
        answers = list(self.fn(prompts))
        if len(answers) != len(prompts) or not all(isinstance(a, str) for a in answers):
            raise ConfigError(f"{self.name}: expected {len(prompts)} response strings, got {answers!r:.200}")
        out = np.full((len(answers), spec.max_new_tokens), spec.eos_id, dtype=np.int64)
        for i, answer in enumerate(answers):
            row = response_tokens(spec, answer)
            out[i, : len(row)] = row
        return out
