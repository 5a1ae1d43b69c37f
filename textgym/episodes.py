"""The batched episode engine behind both TextEnv (one slot) and TextVectorEnv.

State of N episodes lives in arrays; a step writes one column, compares with
EOS and the length limit in numpy, and decodes and scores only the episodes
whose turn finished (all of them together, in one reward call).

Observation layout, fixed for every env of one configuration::

    input_ids:      [ pad ... pad  prompt tokens | answer 1 | reply 1 | answer 2 | ... pad ... ]
                    <------ max_prompt_tokens ----><-------- conversation_tokens -------------->
    attention_mask:   0 ...  0      1 ...   1    |  1 ...   |  1 ...  |  1 ...   | 0 ...

The prompt is left-padded so the conversation of every slot starts in column
``max_prompt_tokens``: a batched policy can keep one KV cache.  A single-turn
episode has one answer (``conversation_tokens = max_new_tokens``).  In a
multi-turn episode the conversation grows: each answer exactly as the agent
emitted it (at most ``max_new_tokens``), then the env's reply (the tokens of
:meth:`~textgym.envsetup.EnvSetup.reply_ids`, at most ``max_reply_tokens``),
then the next answer; ``conversation_tokens = max_turns * max_new_tokens +
(max_turns - 1) * max_reply_tokens`` holds the longest episode.

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
        self.C = setup.conversation_tokens
        self.ids = np.full((n, self.P + self.C), setup.pad_id, dtype=np.int64)
        self.mask = np.zeros((n, self.P + self.C), dtype=np.int64)
        self.gen_len = np.zeros(n, dtype=np.int64)  # conversation columns in use (answers and replies)
        self.turn_start = np.zeros(n, dtype=np.int64)  # conversation column where the current answer began
        self.steps = np.zeros(n, dtype=np.int64)  # steps of the episode so far, every turn
        self.step_limit: int | None = None
        self.running = np.zeros(n, dtype=bool)  # inside an episode (reset, not yet ended)
        self.started = np.zeros(n, dtype=bool)  # reset at least once
        self.index = np.zeros(n, dtype=np.int64)  # sample index per slot
        # the score already paid out in rewards: of the text so far (dense), or of the previous turn ("final")
        self.score = np.zeros(n, dtype=np.float64)
        self.final_text: list[str | None] = [None] * n
        # multi-turn: the current turn's sample, and the finished turns' texts and results (score, metrics, details)
        self.turn_sample: list[Sample | None] = [None] * n
        self.responses: list[list[str]] = [[] for _ in range(n)]
        self.results: list[list[dict[str, Any]]] = [[] for _ in range(n)]
        self.replies: list[list[str]] = [[] for _ in range(n)]  # the messages sent between answers

    # -- reset ----------------------------------------------------------------
    def reset_slot(self, slot: int, index: int, with_mask: bool = True) -> dict[str, Any]:
        prompt, text = self.setup.encoded_prompt(index)
        self.ids[slot] = self.setup.pad_id
        self.mask[slot] = 0
        self.ids[slot, self.P - len(prompt) : self.P] = prompt
        self.mask[slot, self.P - len(prompt) : self.P] = 1
        self.gen_len[slot] = self.turn_start[slot] = 0
        self.score[slot] = 0.0
        self.steps[slot] = 0
        self.running[slot] = True
        self.started[slot] = True
        self.index[slot] = index
        self.final_text[slot] = None
        sample = self.setup.samples[index]
        self.turn_sample[slot] = sample
        self.responses[slot] = []
        self.results[slot] = []
        self.replies[slot] = []
        info: dict[str, Any] = {
            "sample_id": sample.id,
            "prompt": sample.prompt,
            "prompt_text": text,
            "references": self.setup.task.public_references(sample),
        }
        if with_mask and self.setup.action_mask is not None:
            info["action_mask"] = self.setup.action_mask.copy()
        return info

    def _end_turn(self, slot: int, text: str, score: float, metrics: dict[str, float], details: dict[str, Any],
                  eos: bool, cut: bool) -> tuple[dict[str, Any] | None, bool]:
        """Record a finished turn of a multi-turn episode and start the next one.

        Returns (the info of a turn that goes on, None when the episode is over; whether turns
        were left, i.e. the step limit or the room cut the episode short).
        """
        self.responses[slot].append(text)
        self.results[slot].append({"score": score, "metrics": metrics, **details})
        if self.setup.turn_rewards == "sum":
            self.score[slot] = 0.0  # the next turn is paid from zero; "final": from this turn's score
        if len(self.responses[slot]) >= self.setup.max_turns:
            return None, False
        task = self.setup.task
        following = task.next_turn(self.turn_sample[slot], list(self.responses[slot]), list(self.results[slot]))
        if following is None:
            return None, False
        if cut:
            return None, True
        following, reply, reply_text = self.setup.fit_reply(following, eos)
        start = self.P + self.gen_len[slot]
        if self.gen_len[slot] + len(reply) >= self.C:  # no room for the reply and one answer token
            return None, True
        self.ids[slot, start : start + len(reply)] = reply
        self.mask[slot, start : start + len(reply)] = 1
        self.gen_len[slot] += len(reply)
        self.turn_start[slot] = self.gen_len[slot]
        self.turn_sample[slot] = following
        self.replies[slot].append(following.prompt)
        return {
            "turn": len(self.responses[slot]),
            "turn_text": text,
            "turn_metrics": metrics,
            "turn_score": score,
            "reply_ids": reply.tolist(),
            "reply_text": reply_text,
            "prompt": following.prompt,
            "references": task.public_references(following),
            **details,
        }, False

    # -- observations -----------------------------------------------------------
    def obs(self, rows: Any = slice(None)) -> dict[str, np.ndarray]:
        return {"input_ids": self.ids[rows].copy(), "attention_mask": self.mask[rows].copy()}

    def texts(self, rows: np.ndarray) -> list[str]:
        """Text of each row's current answer, without the EOS that ended it."""
        seqs = []
        for r in rows:
            toks = self.ids[r, self.P + self.turn_start[r] : self.P + self.gen_len[r]]
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

        Returns rewards, terminated and truncated for ``rows`` and the info of
        every row whose turn ended, keyed by slot: the final info when the
        episode ended, the next turn's info when it goes on.
        """
        cols = self.P + self.gen_len[rows]
        self.ids[rows, cols] = actions
        self.mask[rows, cols] = 1
        self.gen_len[rows] += 1
        self.steps[rows] += 1
        terminated = actions == self.setup.eos_id
        cut = np.zeros(len(rows), dtype=bool) if self.step_limit is None else self.steps[rows] >= self.step_limit
        full = (self.gen_len[rows] - self.turn_start[rows] >= self.T) | (self.gen_len[rows] >= self.C)
        truncated = (full | cut) & ~terminated
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
            rewards[scored] = out.scores - self.score[slots]
            self.score[slots] = out.scores
            multi_turn = self.setup.max_turns > 1
            for k, (j, slot) in enumerate(zip(scored, slots)):
                if not done[j]:
                    continue
                metrics = {name: float(v[k]) for name, v in out.metrics.items()}
                details = out.details[k] if out.details is not None else {}
                if multi_turn:
                    score = float(out.scores[k])
                    turn_info, short = self._end_turn(int(slot), texts[k], score, metrics, details,
                                                      bool(terminated[j]), bool(cut[j]))
                    if turn_info is not None:  # the episode goes on with the next turn
                        terminated[j] = truncated[j] = False
                        finals[int(slot)] = turn_info
                        continue
                    if short:
                        terminated[j], truncated[j] = False, True  # turns were left: cut by the step limit or room
                    if self.setup.turn_rewards == "sum":  # "final": the last turn's metrics, as they are
                        results = self.results[slot]
                        metrics = {name: float(np.mean([r["metrics"][name] for r in results])) for name in metrics}
                self.running[slot] = False
                self.final_text[slot] = texts[k]
                first = self.setup.samples[self.index[slot]]
                finals[int(slot)] = {
                    "sample_id": first.id,
                    "prompt": samples[k].prompt,
                    "references": self.setup.task.public_references(samples[k]),
                    "generated_text": texts[k],
                    "generated_tokens": int(self.gen_len[slot] - self.turn_start[slot]),
                    "metrics": metrics,
                    **(self._turns_info(int(slot)) if multi_turn else {}),
                    **details,
                }
        return rewards, terminated, truncated, finals

    def _turns_info(self, slot: int) -> dict[str, Any]:
        return {
            "turns": len(self.responses[slot]),
            "turn_texts": list(self.responses[slot]),
            "turn_scores": [r["score"] for r in self.results[slot]],
        }

    def render(self, slot: int) -> str:
        first = self.setup.samples[self.index[slot]]
        sample = self.turn_sample[slot]
        text = self.final_text[slot]
        if text is None:
            text = self.texts(np.array([slot]))[0]
        lines = [f"[{first.id}] prompt: {first.prompt}"]
        for k, (answer, reply) in enumerate(zip(self.responses[slot], self.replies[slot]), start=1):
            lines += [f"answer {k}: {answer}", f"reply {k}: {reply}"]
        length = self.gen_len[slot] - self.turn_start[slot]
        lines.append(f"output ({length}/{self.T} tokens): {text}")
        lines += [f"reference: {ref}" for ref in sample.references[:3]]
        return "\n".join(lines) + "\n"
