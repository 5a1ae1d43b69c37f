"""Finding and checking checkpoints on disk: the one rule every entry point uses (no torch here).

:func:`resolve_checkpoint` turns what a user typed into one checkpoint directory;
``textgym eval``/``bench``, ``Algo.load`` and ``agents.load_agent`` all go
through it (loading walks the same candidates, see
:func:`checkpoint_candidates`).  The rule, in order:

1. ``x.zip`` that does not exist but ``x`` does: ``x`` (``agent.save("x.zip")`` writes ``x``, as
   SB3's ``CheckpointCallback`` and ``PPO.load("x.zip")`` habits expect).
2. A *run directory* (it holds ``checkpoint-<updates>/`` folders): its newest checkpoint that passes
   :func:`check_checkpoint`; broken ones are reported (a warning) and skipped.  A save at the folder's
   root (``agent.save(run_dir)``) comes only after every ``checkpoint-*``: the newest checkpoint wins.
3. A *checkpoint* (it holds ``textppo.json``): itself, checked.
4. Only where a plain model will do (``allow_model=True``: eval, bench): a Hugging Face model directory
   (``config.json``, no ``textppo.json``) is itself.
5. Anything else: :class:`CheckpointError` naming what was looked for.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from textgym.errors import TextGymError

T = TypeVar("T")

FORMAT_VERSION = 1
META = "textppo.json"
MANIFEST = "manifest.json"
WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
CHECKPOINT_PREFIX = "checkpoint-"
_CHECKPOINT_NAME = re.compile(rf"{CHECKPOINT_PREFIX}(\d+)")


class CheckpointError(TextGymError, ValueError):
    """A checkpoint directory is missing, incomplete or unreadable, or a path holds none."""


def _read_json(path: Path, name: str) -> dict[str, Any]:
    try:
        data = json.loads((path / name).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"checkpoint {str(path)!r}: {name} is unreadable ({err})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"checkpoint {str(path)!r}: {name} holds {type(data).__name__}, expected an object")
    return data


def check_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint's metadata; raises :class:`CheckpointError` naming every missing file."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory {str(path)!r} does not exist")
    required = ("config.json", META, "value_head.safetensors", "optimizer.pt", "training_state.pt", MANIFEST)
    missing = [n for n in required if not (path / n).is_file()]
    if not any((path / w).is_file() for w in WEIGHTS):
        missing.append(" or ".join(WEIGHTS))
    meta: dict[str, Any] = {}
    if (path / META).is_file():
        meta = _read_json(path, META)
        if meta.get("lora") and not (path / "adapter" / "adapter_config.json").is_file():
            missing.append("adapter/adapter_config.json")
        if meta.get("model_spec") is None and not meta.get("lora") and not (path / "reference" / "config.json").is_file():
            missing.append("reference/config.json")
    wrong_size = []
    if (path / MANIFEST).is_file():
        for name, size in _read_json(path, MANIFEST).items():
            file = path / name
            if not file.is_file():
                if name not in missing:
                    missing.append(name)
            elif file.stat().st_size != size:
                wrong_size.append(f"{name} ({file.stat().st_size} bytes, written with {size})")
    if missing:
        raise CheckpointError(f"checkpoint {str(path)!r} is incomplete; missing: {', '.join(missing)}")
    if wrong_size:
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupted; wrong size: {', '.join(wrong_size)}")
    if meta.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {str(path)!r} has format {meta.get('format')!r}; expected {FORMAT_VERSION}")
    return meta


# -- run directories ---------------------------------------------------------------------------
def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """The ``checkpoint-<updates>`` folders of a run directory, oldest first (temp folders excluded)."""
    root = Path(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _CHECKPOINT_NAME.fullmatch(p.name)]
    return sorted(found, key=update_count)


def update_count(checkpoint: Path) -> int:
    """The ``<updates>`` of a ``checkpoint-<updates>`` folder name."""
    match = _CHECKPOINT_NAME.fullmatch(checkpoint.name)
    assert match is not None, checkpoint
    return int(match.group(1))


def newest_checkpoint(run_dir: str | Path) -> Path:
    """The newest checkpoint of a run directory that passes :func:`check_checkpoint` (broken ones are reported)."""
    return _try_each(Path(run_dir), list(reversed(list_checkpoints(run_dir))), _checked)


def _checked(candidate: Path) -> Path:
    check_checkpoint(candidate)
    return candidate


def _try_each(root: Path, candidates: list[Path], attempt: Callable[[Path], T]) -> T:
    if candidates == [root]:  # a lone checkpoint: its own error
        return attempt(root)
    failures = []
    for candidate in candidates:
        try:
            return attempt(candidate)
        except CheckpointError as err:
            failures.append(str(err))
            warnings.warn(f"skipping a checkpoint that failed validation: {err}; trying the previous one", stacklevel=4)
    raise CheckpointError(f"run directory {str(root)!r} has no valid checkpoint:\n  " + "\n  ".join(failures or ["(none)"]))


# -- the resolver ---------------------------------------------------------------------------------
def _unzipped(path: Path) -> Path:
    if path.suffix == ".zip" and not path.exists() and path.with_suffix("").is_dir():
        return path.with_suffix("")
    return path


def checkpoint_candidates(path: str | Path, *, allow_model: bool = False) -> list[Path]:
    """The checkpoints ``path`` may mean, best first (see the module docstring); never empty.

    A plain Hugging Face model dir (``allow_model=True``) is one candidate: itself.  Raises
    :class:`CheckpointError` when ``path`` holds nothing to load, naming what was looked for.
    """
    root = _unzipped(Path(path))
    if not root.exists():
        raise CheckpointError(f"checkpoint directory {str(root)!r} does not exist")
    candidates = list(reversed(list_checkpoints(root)))
    if (root / META).is_file():
        candidates.append(root)  # a save at the root: after every checkpoint-* of the folder
    if candidates:
        return candidates
    if allow_model and (root / "config.json").is_file():
        return [root]
    looked = "checkpoint-<updates>/ folders (a run directory), textppo.json (a checkpoint)"
    if allow_model:
        looked += " or config.json (a Hugging Face model)"
    hint = ""
    sb3 = sorted(p.name for p in root.glob("*_steps*") if (p / META).is_file()) if root.is_dir() else []
    if sb3:
        hint = (f"; it holds saves of SB3's CheckpointCallback ({sb3[-1]}, ...): pass one of them, or save with "
                "agents.common.checkpoint_callback.CheckpointCallback (checkpoint-<updates> folders)")
    raise CheckpointError(f"{str(root)!r} holds no checkpoint: looked for {looked}{hint}")


def first_valid(path: str | Path, attempt: Callable[[Path], T], *, allow_model: bool = False) -> T:
    """``attempt(candidate)`` on :func:`checkpoint_candidates` in turn until one raises no :class:`CheckpointError`
    (a run directory's failures are warned and skipped; a lone checkpoint's error is raised as it is)."""
    return _try_each(_unzipped(Path(path)), checkpoint_candidates(path, allow_model=allow_model), attempt)


def resolve_checkpoint(path: str | Path, *, allow_model: bool = False) -> Path:
    """The one checkpoint directory ``path`` means (see the module docstring for the rule)."""
    return first_valid(path, lambda c: c if not (c / META).is_file() else _checked(c), allow_model=allow_model)


def checkpoint_algorithm(path: str | Path) -> str:
    """The algorithm name (``"ppo"``, ...) of the checkpoint :func:`resolve_checkpoint` picks (quietly:
    loading it reports the checkpoints it skips)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return str(check_checkpoint(resolve_checkpoint(path)).get("algo", "ppo"))


def describe_checkpoint(path: str | Path) -> str:
    """One line: ``runs/copy/checkpoint-000012 (ppo, 12 updates, 9,984 tokens)``; a Hugging Face model dir
    without training state says so."""
    path = Path(path)
    if not (path / META).is_file():
        return f"{path} (a Hugging Face model, no training state)"
    meta = _read_json(path, META)
    updates, tokens = int(meta.get("n_updates", 0)), int(meta.get("num_timesteps", 0))
    return f"{path} ({meta.get('algo', 'ppo')}, {updates:,} update{'s' * (updates != 1)}, {tokens:,} tokens)"
