"""The batched episode engine behind both TextEnv (one slot) and TextVectorEnv.

State of N episodes lives in arrays; a step writes one column, compares with
EOS and the length limit in numpy, and decodes and scores only the episodes
that finished (all of them together, in one reward call).

Observation layout, fixed for every env of one configuration::

    input_ids:      [ pad ... pad  prompt tokens | gen_0 gen_1 ... pad ... ]
                    <------ max_prompt_tokens ----><--- max_new_tokens --->
    attention_mask:   0 ...  0      1 ...   1    |  1     1   ...  0 ...

The prompt is left-padded so generated token ``t`` of every slot sits in
column ``max_prompt_tokens + t``: a batched policy can keep one KV cache.

``step_limit`` (None: off) ends an episode after that many steps in all (over
every turn of a multi-turn episode), scored and ``truncated``, like the end at
``max_new_tokens``: :class:`~textgym.env.TextEnv` sets it to the
``max_episode_steps`` of a Gymnasium ``TimeLimit`` around it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from textgym.data.base import Sample
from textgym.envsetup import EnvSetup
from textgym.errors import InvalidAction, ResetNeeded


def check_actions(actions: Any, n: int, vocab_size: int) -> np.ndarray:
    """Validate a batch of token-id actions; errors show the value and the range."""
    arr = np.asarray(actions)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise InvalidAction(
            f"actions must be integer token ids in [0, {vocab_size}), got {arr.dtype} value {actions!r}"
        )
    if arr.shape != (n,):
        arr = arr.reshape(-1) if arr.size == n else arr
        if arr.shape != (n,):
            raise InvalidAction(f"expected {n} action(s), got shape {np.shape(actions)}")
    bad = np.flatnonzero((arr < 0) | (arr >= vocab_size))
    if bad.size:
        raise InvalidAction(f"action {int(arr[bad[0]])} is out of range; allowed token ids: 0..{vocab_size - 1}")
    return arr.astype(np.int64, copy=False)


class Episodes:
    """N episode slots over one :class:`EnvSetup`."""

    def __init__(self, setup: EnvSetup, n: int) -> None:
        self.setup = setup
        self.n = n
        self.P = setup.max_prompt_tokens
        self.T = setup.max_new_tokens
        self.ids = np.full((n, self.P + self.T), setup.pad_id, dtype=np.int64)
        self.mask = np.zeros((n, self.P + self.T), dtype=np.int64)
        self.gen_len = np.zeros(n, dtype=np.int64)
        self.steps = np.zeros(n, dtype=np.int64)  # steps of the episode so far, every turn
        self.step_limit: int | None = None
        self.running = np.zeros(n, dtype=bool)  # inside an episode (reset, not yet ended)
        self.started = np.zeros(n, dtype=bool)  # reset at least once
        self.index = np.zeros(n, dtype=np.int64)  # sample index per slot
        self.score = np.zeros(n, dtype=np.float64)  # running score (dense mode)
        self.final_text: list[str | None] = [None] * n
        # multi-turn: the current turn's sample, and the finished turns' texts and metrics
        self.turn_sample: list[Sample | None] = [None] * n
        self.responses: list[list[str]] = [[] for _ in range(n)]
        self.turn_metrics: list[list[dict[str, float]]] = [[] for _ in range(n)]

    # -- reset ----------------------------------------------------------------
    def _write_prompt(self, slot: int, prompt: np.ndarray) -> None:
        self.ids[slot] = self.setup.pad_id
        self.mask[slot] = 0
        self.ids[slot, self.P - len(prompt) : self.P] = prompt
        self.mask[slot, self.P - len(prompt) : self.P] = 1
        self.gen_len[slot] = 0
        self.score[slot] = 0.0

    def reset_slot(self, slot: int, index: int, with_mask: bool = True) -> dict[str, Any]:
        prompt, text = self.setup.encoded_prompt(index)
        self._write_prompt(slot, prompt)
        self.steps[slot] = 0
        self.running[slot] = True
        self.started[slot] = True
        self.index[slot] = index
        self.final_text[slot] = None
        sample = self.setup.samples[index]
        self.turn_sample[slot] = sample
        self.responses[slot] = []
        self.turn_metrics[slot] = []
        info: dict[str, Any] = {
            "sample_id": sample.id,
            "prompt": sample.prompt,
            "prompt_text": text,
            "references": self.setup.task.public_references(sample),
        }
        if with_mask and self.setup.action_mask is not None:
            info["action_mask"] = self.setup.action_mask.copy()
        return info

    def _next_turn(self, slot: int, text: str, metrics: dict[str, float], cut: bool) -> dict[str, Any] | None:
        """Start the next turn of a multi-turn episode; None when the episode is over.

        ``cut``: the step limit was reached, so no turn follows.
        """
        self.responses[slot].append(text)
        self.turn_metrics[slot].append(metrics)
        if cut:
            return None
        following = self.setup.task.followup(self.turn_sample[slot], list(self.responses[slot]))
        if following is None:
            return None
        prompt, prompt_text = self.setup.encode_sample(following)
        self._write_prompt(slot, prompt)
        self.turn_sample[slot] = following
        return {
            "turn": len(self.responses[slot]),
            "turn_text": text,
            "turn_metrics": metrics,
            "prompt": following.prompt,
            "prompt_text": prompt_text,
            "references": self.setup.task.public_references(following),
        }

    def _more_turns(self, slot: int) -> bool:
        """Whether the task would have gone on after the turn just finished (the step limit cut it)."""
        return self.setup.task.followup(self.turn_sample[slot], list(self.responses[slot])) is not None

    # -- observations -----------------------------------------------------------
    def obs(self, rows: Any = slice(None)) -> dict[str, np.ndarray]:
        return {"input_ids": self.ids[rows].copy(), "attention_mask": self.mask[rows].copy()}

    def texts(self, rows: np.ndarray) -> list[str]:
        """Generated text of each row, without the EOS that ended it."""
        seqs = []
        for r in rows:
            toks = self.ids[r, self.P : self.P + self.gen_len[r]]
            if len(toks) and toks[-1] == self.setup.eos_id:
                toks = toks[:-1]
            seqs.append(toks.tolist())
        return self.setup.tokenizer.batch_decode(seqs, skip_special_tokens=True)

    # -- step ---------------------------------------------------------------------
    def check_running(self, rows: np.ndarray) -> None:
        if self.running[rows].all():
            return
        if not self.started[rows].all():
            raise ResetNeeded("call reset() before step()")
        slot = int(rows[np.flatnonzero(~self.running[rows])[0]])
        where = f" (slot {slot})" if self.n > 1 else ""
        raise ResetNeeded(f"the episode has ended (terminated or truncated){where}; call reset() before step()")

    def step(
        self, actions: np.ndarray, rows: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[int, dict[str, Any]]]:
        """Advance ``rows`` by one token each.

        Returns rewards, terminated and truncated for ``rows`` and the final
        info of every row that ended, keyed by slot.
        """
        cols = self.P + self.gen_len[rows]
        self.ids[rows, cols] = actions
        self.mask[rows, cols] = 1
        self.gen_len[rows] += 1
        self.steps[rows] += 1
        terminated = actions == self.setup.eos_id
        cut = np.zeros(len(rows), dtype=bool) if self.step_limit is None else self.steps[rows] >= self.step_limit
        truncated = ((self.gen_len[rows] >= self.T) | cut) & ~terminated
        done = terminated | truncated
        rewards = np.zeros(len(rows), dtype=np.float64)
        finals: dict[int, dict[str, Any]] = {}
        dense = self.setup.reward_mode == "dense"
        scored = np.arange(len(rows)) if dense else np.flatnonzero(done)
        if scored.size:
            slots = rows[scored]
            texts = self.texts(slots)
            samples = [self.turn_sample[slot] for slot in slots]
            out = self.setup.reward(texts, samples)
            if dense:
                rewards[scored] = out.scores - self.score[slots]
                self.score[slots] = out.scores
            else:
                rewards[scored] = out.scores
            multi_turn = self.setup.task.multi_turn
            for k, (j, slot) in enumerate(zip(scored, slots)):
                if not done[j]:
                    continue
                metrics = {name: float(v[k]) for name, v in out.metrics.items()}
                details = out.details[k] if out.details is not None else {}
                if multi_turn:
                    turn_info = self._next_turn(int(slot), texts[k], metrics, bool(cut[j]))
                    if turn_info is not None:  # the episode goes on with the next turn
                        terminated[j] = truncated[j] = False
                        finals[int(slot)] = {**turn_info, **details}
                        continue
                    if cut[j] and self._more_turns(int(slot)):
                        terminated[j], truncated[j] = False, True  # cut short by the step limit
                    turns = self.turn_metrics[slot]
                    metrics = {name: float(np.mean([m[name] for m in turns])) for name in metrics}
                self.running[slot] = False
                self.final_text[slot] = texts[k]
                first = self.setup.samples[self.index[slot]]
                finals[int(slot)] = {
                    "sample_id": first.id,
                    "prompt": samples[k].prompt,
                    "references": self.setup.task.public_references(samples[k]),
                    "generated_text": texts[k],
                    "generated_tokens": int(self.gen_len[slot]),
                    "metrics": metrics,
                    **({"turns": len(self.turn_metrics[slot]), "turn_texts": list(self.responses[slot])} if multi_turn else {}),
                    **details,
                }
        return rewards, terminated, truncated, finals

    def render(self, slot: int) -> str:
        sample = self.turn_sample[slot]
        text = self.final_text[slot]
        if text is None:
            text = self.texts(np.array([slot]))[0]
        lines = [
            f"[{sample.id}] prompt: {sample.prompt}",
            f"output ({self.gen_len[slot]}/{self.T} tokens): {text}",
        ]
        lines += [f"reference: {ref}" for ref in sample.references[:3]]
        return "\n".join(lines) + "\n"
