"""Registering text envs with Gymnasium: from Python, from YAML, from plugins.

Every id gets ``TextEnv`` as entry point and ``TextVectorEnv`` as vector
entry point, so ``gym.make(id)`` and ``gym.make_vec(id, num_envs=N)`` both
work; keyword arguments given to them override the registered defaults.

A YAML file maps ids to entries with these keys::

    textgym/Copy-v0:
      task: textgym.tasks.copy:CopyTask      # required: "module:Class"
      description: one line for `textgym list`
      data: where the default data comes from
      kwargs: {max_new_tokens: 6}            # defaults, overridden by gym.make kwargs
      nondeterministic: false

Third-party packages add envs through the ``textgym.envs`` entry-point
group: the entry point is a function that registers envs (it may instead
return the path of a YAML file in this format).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata, resources
from pathlib import Path
from typing import Any

import gymnasium as gym
import yaml

from textgym.errors import ConfigError

ENTRY_POINT = "textgym.env:TextEnv"
VECTOR_ENTRY_POINT = "textgym.vector:TextVectorEnv"
PLUGIN_GROUP = "textgym.envs"
YAML_KEYS = ("task", "description", "data", "kwargs", "nondeterministic")


@dataclass(frozen=True)
class EnvEntry:
    """What textgym knows about a registered id (for ``textgym list``/``info``)."""

    id: str
    task: Any
    description: str = ""
    data: str = ""
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    source: str = "textgym"


ENVS: dict[str, EnvEntry] = {}


def register_env(
    id: str,
    task: Any,
    *,
    description: str = "",
    data: str = "",
    kwargs: Mapping[str, Any] | None = None,
    nondeterministic: bool = False,
    source: str = "user",
) -> EnvEntry:
    """Register a task as a Gymnasium id with a vector entry point.

    ``task`` is a :class:`~textgym.tasks.base.Task` subclass or a
    ``"module:Class"`` string; ``kwargs`` are defaults (env and task keyword
    arguments) that ``gym.make``/``gym.make_vec`` keyword arguments override.

    Example:
        >>> from textgym.tasks.copy import CopyTask
        >>> entry = register_env("my/Copy-v0", CopyTask, kwargs={"max_words": 3}, source="doctest")
        >>> entry.id
        'my/Copy-v0'
    """
    if not isinstance(id, str) or not id:
        raise ConfigError(f"env id must be a non-empty string, got {id!r}")
    defaults = dict(kwargs or {})
    if "task" in defaults:
        raise ConfigError(f"{id}: pass the task as task=, not inside kwargs")
    entry = EnvEntry(id, task, description, data, defaults, source)
    if id in gym.registry:
        known = ENVS.get(id)
        if known is not None and (known.task, dict(known.kwargs)) == (task, defaults):
            return known  # the same definition again (re-import): nothing to do
        owner = known.source if known is not None else "another package"
        raise ConfigError(f"env id {id!r} is already registered (by {owner}); choose another id or version")
    gym.register(
        id=id,
        entry_point=ENTRY_POINT,
        vector_entry_point=VECTOR_ENTRY_POINT,
        kwargs={"task": task, **defaults},
        nondeterministic=bool(nondeterministic),
    )
    ENVS[id] = entry
    return entry


def _check_yaml_entry(env_id: str, entry: Any, where: str) -> dict[str, Any]:
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{where}: entry {env_id!r} must be a mapping with keys {list(YAML_KEYS)}")
    unknown = sorted(set(entry) - set(YAML_KEYS))
    if unknown:
        raise ConfigError(f"{where}: entry {env_id!r} has unknown key(s) {unknown}; valid keys: {list(YAML_KEYS)}")
    if "task" not in entry:
        raise ConfigError(f"{where}: entry {env_id!r} needs a 'task: module:Class' key")
    if not isinstance(entry.get("kwargs", {}), Mapping):
        raise ConfigError(f"{where}: entry {env_id!r}: kwargs must be a mapping")
    return dict(entry)


def register_from_yaml(path: str | os.PathLike[str], source: str = "user") -> list[str]:
    """Register every id in a YAML file in the ``envs_registry.yaml`` format."""
    text = Path(path).read_text(encoding="utf-8")
    return _register_yaml_text(text, str(path), source)


def _register_yaml_text(text: str, where: str, source: str) -> list[str]:
    try:
        document = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{where}: invalid YAML ({err})") from None
    if not isinstance(document, Mapping):
        raise ConfigError(f"{where}: expected a mapping of env ids to entries")
    ids = []
    for env_id, raw in document.items():
        entry = _check_yaml_entry(env_id, raw, where)
        register_env(
            env_id,
            entry["task"],
            description=entry.get("description", ""),
            data=entry.get("data", ""),
            kwargs=entry.get("kwargs") or {},
            nondeterministic=entry.get("nondeterministic", False),
            source=source,
        )
        ids.append(env_id)
    return ids


def builtin_registry_text() -> str:
    """The packaged ``envs_registry.yaml`` (the file at the repository root)."""
    return resources.files("textgym").joinpath("envs_registry.yaml").read_text(encoding="utf-8")


def register_builtin() -> list[str]:
    return _register_yaml_text(builtin_registry_text(), "envs_registry.yaml", "textgym")


def load_plugins() -> list[str]:
    """Run every ``textgym.envs`` entry point; a broken plugin warns, never breaks import."""
    ids: list[str] = []
    for ep in metadata.entry_points(group=PLUGIN_GROUP):
        source = ep.dist.name if ep.dist is not None else ep.value
        before = set(ENVS)
        try:
            result = ep.load()
            result = result() if callable(result) else result
            if isinstance(result, (str, os.PathLike)):
                register_from_yaml(result, source=source)
        except Exception as err:  # noqa: BLE001 - a plugin must not break `import textgym`
            warnings.warn(f"textgym plugin {ep.name!r} ({ep.value}) failed to load: {err}", stacklevel=2)
            continue
        for env_id in set(ENVS) - before:
            ENVS[env_id] = EnvEntry(**{**ENVS[env_id].__dict__, "source": source})
            ids.append(env_id)
    return ids
