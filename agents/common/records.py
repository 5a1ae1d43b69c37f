"""What a training run leaves behind, and evaluation during training.

``learn(..., save_dir=RUN)`` (``textgym train --out RUN``) writes, besides its checkpoints:

* ``RUN/progress.csv``: one row per update in SB3's CSV format (``time/total_timesteps``,
  ``rollout/ep_rew_mean``, ``rollout/kl_ref``, ``train/n_updates``, ..., and ``eval/*`` on the updates
  that were evaluated);
* TensorBoard event files in ``RUN`` itself (``tensorboard --logdir RUN``), the x axis in tokens;
* ``RUN/learning_curve.png``: reward (and evaluation reward) and KL to the reference against tokens,
  rewritten at every checkpoint and at the end;
* with ``report_to`` naming ``trackio``: a local trackio run (project ``textgym``; ``trackio show``).

``report_to`` picks the targets (default ``csv,tensorboard``; ``none``: neither, and the curve is drawn
from this call's rows only); a logger set with ``set_logger`` replaces them all, curve included.
``learn()`` without ``save_dir`` logs as before (stdout with ``verbose=1``, TensorBoard under the agent's
``tensorboard_log``).

**Resume.**  A resumed run (``Algo.load(RUN)`` then ``learn(..., reset_num_timesteps=False,
save_dir=RUN)``, or ``textgym train --resume RUN``) appends to the same files.  First it drops what a
killed run wrote after the checkpoint it resumes from, keyed by ``time/total_timesteps`` (rows above the
checkpoint's token count, and a last line cut mid-write): those updates are redone, so each update has
exactly one row and the header is written once.  TensorBoard hides the same events (``purge_step``).
trackio's store only appends: after a kill its dashboard may show the redone updates twice (same step).

**Evaluation** during training: :class:`agents.common.eval_callback.TextEvalCallback`.
"""

from __future__ import annotations

import csv
import json
import math
import os
import secrets
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.logger import (
    HumanOutputFormat,
    KVWriter,
    Logger,
    TensorBoardOutputFormat,
    filter_excluded_keys,
)

from textgym.errors import ConfigError, DependencyNotInstalled

REPORT_TARGETS = ("csv", "tensorboard", "trackio")
DEFAULT_REPORT_TO = ("csv", "tensorboard")
PROGRESS = "progress.csv"  # read by `textgym bench --agents ppo:RUN` (time/total_timesteps, rollout/ep_rew_mean)
CURVE = "learning_curve.png"
STEP = "time/total_timesteps"  # the key that orders rows: generated tokens, strictly rising from update to update
TRACKIO_PROJECT = "textgym"


def parse_report_to(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"csv,tensorboard"`` (or a list of names) as a tuple; None is the default, ``"none"`` nothing."""
    if value is None:
        return DEFAULT_REPORT_TO
    if not isinstance(value, str) and len(value) == 0:
        return ()  # already parsed "none" (e.g. ``--report-to none`` handed on to ``learn``)
    names = value.split(",") if isinstance(value, str) else list(value)
    names = [str(n).strip().lower() for n in names if str(n).strip()]
    if names == ["none"]:
        return ()
    unknown = [n for n in names if n not in REPORT_TARGETS]
    if unknown or not names:
        raise ValueError(f"report_to: unknown target(s) {', '.join(map(repr, unknown)) or repr(value)}; "
                         f"expected a comma-separated list of {', '.join(REPORT_TARGETS)}, or none")  # fmt: skip
    return tuple(dict.fromkeys(names))


def _positive_int(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, np.integer)) and value > 0


def check_learn_args(total_timesteps: Any, updates: Any, save_dir: Any, save_every: Any, report_to: Any) -> None:
    """``learn()``'s argument checks (ValueError)."""
    if (total_timesteps is None) == (updates is None):
        raise ValueError(f"learn() takes one budget: total_timesteps (generated tokens) or updates, got "
                         f"total_timesteps={total_timesteps!r}, updates={updates!r}")  # fmt: skip
    if total_timesteps is not None and not _positive_int(total_timesteps):
        raise ValueError(f"total_timesteps must be a positive integer (generated tokens), got {total_timesteps!r}")
    if updates is not None and not _positive_int(updates):
        raise ValueError(f"updates must be a positive integer, got {updates!r}")
    if save_every is not None and (isinstance(save_every, bool) or not isinstance(save_every, int) or save_every < 1):
        raise ValueError(f"save_every must be a positive integer (updates) or None, got {save_every!r}")
    if save_every is not None and save_dir is None:
        raise ValueError("save_every needs save_dir= (the run directory the checkpoints go to)")
    if report_to is not None:
        parse_report_to(report_to)
        if save_dir is None:
            raise ValueError("report_to needs save_dir= (the run directory the records go to)")


# -- the logger's outputs ---------------------------------------------------------------------------------
class ProgressCSV(KVWriter):
    """SB3's CSV output (one row per ``dump``) that a resumed run appends to.

    Opening an existing file drops the rows whose ``time/total_timesteps`` is above ``keep_upto`` and a
    last line cut mid-write (the file is rewritten atomically when anything is dropped).  A new column
    rewrites the file with the longer header, as SB3's writer does.  ``path=None`` keeps the rows in
    memory only (they draw the learning curve).
    """

    def __init__(self, path: Path | None, keep_upto: float) -> None:
        self.path, self.keys, self.rows = path, [], []
        self._file: Any = None
        if path is None:
            return
        if path.is_file():
            self.keys, self.rows, dropped = read_progress(path, keep_upto)
            if dropped:
                self._rewrite()
        self._file = open(path, "a", newline="", encoding="utf-8")

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, tuple[str, ...]], step: int = 0) -> None:
        values = filter_excluded_keys(key_values, key_excluded, "csv")
        row = {k: _text(v) for k, v in values.items() if isinstance(v, (int, float, str, np.number, np.bool_))}
        self.rows.append(row)
        new = [k for k in row if k not in self.keys]
        self.keys += new
        if self.path is None:
            return
        if new:
            self._rewrite()
        else:
            csv.writer(self._file).writerow([row.get(k, "") for k in self.keys])
            self._file.flush()

    def _rewrite(self) -> None:
        assert self.path is not None
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(self.keys)
            writer.writerows([row.get(k, "") for k in self.keys] for row in self.rows)
        if self._file is not None:
            self._file.close()
        os.replace(tmp, self.path)
        self._file = open(self.path, "a", newline="", encoding="utf-8")

    def numbers(self) -> list[dict[str, float]]:
        """The rows as floats (empty and non-numeric cells left out)."""
        out = []
        for row in self.rows:
            parsed = {k: _float(v) for k, v in row.items()}
            out.append({k: v for k, v in parsed.items() if v is not None})
        return out

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_progress(path: Path, keep_upto: float = math.inf) -> tuple[list[str], list[dict[str, str]], bool]:
    """(header, rows, whether any row was dropped) of a ``progress.csv``: rows above ``keep_upto`` tokens,
    rows with the wrong number of cells and a last line without its newline are dropped."""
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    dropped = bool(lines) and not lines[-1].endswith(("\n", "\r"))
    if dropped:
        lines.pop()
    reader = csv.reader(lines)
    header = next(reader, [])
    rows = []
    for cells in reader:
        row = dict(zip(header, cells))
        step = _float(row.get(STEP, ""))
        if len(cells) != len(header) or (step is not None and step > keep_upto):
            dropped = True
            continue
        rows.append(row)
    return header, rows, dropped


def _text(value: Any) -> str:
    return str(value.item() if isinstance(value, np.generic) else value)


def _float(text: Any) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def run_tensorboard(folder: Path, purge_step: int) -> TensorBoardOutputFormat:
    """SB3's TensorBoard output on ``folder``; events from ``purge_step`` on in older files are hidden."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise DependencyNotInstalled(f"report_to 'tensorboard' needs the tensorboard package: pip install tensorboard ({err})") from None
    output = TensorBoardOutputFormat.__new__(TensorBoardOutputFormat)
    output.writer = SummaryWriter(log_dir=str(folder), purge_step=purge_step)
    output._is_closed = False
    return output


class TrackioOutput(KVWriter):
    """A local trackio run (project ``textgym``), named after the run directory; a resume continues it."""

    def __init__(self, run_dir: Path, config: dict[str, Any]) -> None:
        try:
            import trackio
        except ImportError as err:
            raise DependencyNotInstalled(f"report_to 'trackio' needs the trackio package: pip install 'textgym[trackio]' ({err})") from None
        ids = run_dir / "trackio.json"  # the run's trackio name, kept so that a resume continues the same run
        try:
            name = json.loads(ids.read_text(encoding="utf-8"))["name"]
        except (OSError, ValueError, KeyError, TypeError):
            name = f"{run_dir.resolve().name}-{secrets.token_hex(3)}"
            ids.write_text(json.dumps({"project": TRACKIO_PROJECT, "name": name}), encoding="utf-8")
        try:
            self.run = trackio.init(project=TRACKIO_PROJECT, name=name, config=config, resume="allow", embed=False,
                                    auto_log_gpu=False, auto_log_cpu=False)  # fmt: skip
        except Exception as err:  # trackio logs locally; only a configured Space or dataset needs the network
            raise ConfigError(f"report_to 'trackio': trackio could not start a run ({type(err).__name__}: {err}); "
                              "it logs to the local folder TRACKIO_DIR and needs no network") from err  # fmt: skip

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, tuple[str, ...]], step: int = 0) -> None:
        values = filter_excluded_keys(key_values, key_excluded, "trackio")
        metrics = {k: float(v) for k, v in values.items() if isinstance(v, (int, float, np.number)) and not isinstance(v, bool)}
        self.run.log({k: v for k, v in metrics.items() if math.isfinite(v)}, step=int(step))

    def close(self) -> None:
        self.run.finish()


# -- one learn() call's records --------------------------------------------------------------------------
class RunRecords:
    """What one ``learn()`` call writes on rank 0: the run directory's logger outputs (unless the agent has a
    custom logger), the progress bar and the learning curve.  :meth:`close` restores the agent's logger."""

    def __init__(self, agent: Any, save_dir: Any, report_to: Any, progress_bar: bool) -> None:
        self.agent, self.bar, self.csv = agent, None, None
        self.dir = Path(save_dir) if save_dir is not None else None
        self._logger: Logger | None = None
        self._previous = agent._logger
        main = agent.dist.is_main
        if main and self.dir is not None and not agent._custom_logger:
            targets = parse_report_to(report_to)
            self.dir.mkdir(parents=True, exist_ok=True)
            formats: list[Any] = [HumanOutputFormat(sys.stdout)] if agent.verbose >= 1 else []
            try:
                self.csv = ProgressCSV(self.dir / PROGRESS if "csv" in targets else None, keep_upto=agent.num_timesteps)
                formats.append(self.csv)
                if "tensorboard" in targets:
                    formats.append(run_tensorboard(self.dir, purge_step=agent.num_timesteps + 1))
                if "trackio" in targets:
                    formats.append(TrackioOutput(self.dir, self._config()))
            except BaseException:
                for output in formats:
                    output.close()
                raise
            self._logger = agent._logger = Logger(folder=str(self.dir), output_formats=formats)
        if main and progress_bar:
            from tqdm.auto import tqdm

            by_update = agent.total_updates is not None  # learn(updates=N): the bar counts updates, not tokens
            self.bar = tqdm(total=agent.total_updates if by_update else agent.total_timesteps,
                            initial=agent.n_updates if by_update else agent.num_timesteps,
                            unit="update" if by_update else "tok", unit_scale=not by_update, dynamic_ncols=True,
                            file=sys.stderr, desc=type(agent).__name__)  # fmt: skip

    def _config(self) -> dict[str, Any]:
        spec = getattr(self.agent.env, "spec", None)
        config = {"algo": self.agent.name, "env": getattr(spec, "id", None), "model": str(self.agent.model_spec),
                  "num_envs": self.agent.env.num_envs, "seed": self.agent.seed, **self.agent.config.to_dict()}  # fmt: skip
        return json.loads(json.dumps(config, default=str))

    def progress(self, tokens: int, stats: dict[str, float]) -> None:
        """Advance the bar by an update (its tokens, or one where the budget is in updates); its postfix shows
        the update's reward and KL."""
        if self.bar is not None:
            shown = {"reward": stats.get("rollout/ep_rew_mean"), "kl": stats.get("rollout/kl_ref")}
            self.bar.set_postfix({k: f"{v:.3g}" for k, v in shown.items() if v is not None}, refresh=False)
            step = 1 if self.agent.total_updates is not None else tokens
            if self.bar.n + step > self.bar.total:  # the last update overshoots the token target: end at 100%
                self.bar.total = self.bar.n + step
            self.bar.update(step)

    def saved(self) -> None:
        """A checkpoint was saved: redraw the learning curve."""
        if self.csv is not None and self.dir is not None and self.csv.rows:
            spec = getattr(self.agent.env, "spec", None)
            title = f"{self.agent.name} on {getattr(spec, 'id', '?')}, model {self.agent.model_spec}"
            try:
                plot_learning_curve(self.csv.numbers(), self.dir / CURVE, title)
            except Exception as err:  # a plot never stops training
                warnings.warn(f"could not draw {self.dir / CURVE}: {type(err).__name__}: {err}", RuntimeWarning, stacklevel=2)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self._logger is not None:
            self.saved()
            self._logger.close()
            if self.agent._logger is self._logger:
                self.agent._logger = self._previous


def plot_learning_curve(rows: list[dict[str, float]], path: Path, title: str = "") -> None:
    """Reward (training rollouts and greedy evaluation) and KL to the reference against tokens, as a PNG
    (matplotlib's Agg canvas, no pyplot: the caller's backend is left alone); written atomically."""
    from matplotlib.figure import Figure

    def series(key: str) -> tuple[list[float], list[float]]:
        points = [(r[STEP], r[key]) for r in rows if STEP in r and key in r and math.isfinite(r[key])]
        return [p[0] for p in points], [p[1] for p in points]

    fig = Figure(figsize=(7.5, 6), layout="constrained")
    reward, kl = fig.subplots(2, 1, sharex=True)
    reward.plot(*series("rollout/ep_rew_mean"), label="training rollouts (rollout/ep_rew_mean)")
    xs, ys = series("eval/mean_reward")
    if xs:
        reward.plot(xs, ys, "o-", label="greedy evaluation (eval/mean_reward)")
    reward.set_ylabel("mean episode reward")
    reward.legend(loc="best", fontsize=8)
    kl.plot(*series("rollout/kl_ref"), color="tab:red")
    kl.set_ylabel("KL to reference (per sequence)")
    kl.set_xlabel("generated tokens")
    for axes in (reward, kl):
        axes.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=100)
    os.replace(tmp, path)
