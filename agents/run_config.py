"""A training run's settings from the command line and from a ``--config`` YAML file.

Every field of an algorithm's config dataclass becomes a flag (``learning_rate`` ->
``--learning-rate``) whose type comes from the annotation and whose help is the
field's documentation; the YAML file uses the same names.  Nothing here imports
torch, so ``textgym list`` stays fast.
"""

from __future__ import annotations

import argparse
import typing
from pathlib import Path
from typing import Any

from agents import ALGORITHMS

RUN_KEYS = ("algo", "model", "timesteps", "num_envs", "seed", "env", "verbose")
"""The ``--config`` keys that are not config fields (the fields of the algorithm's config class are keys too)."""
DEFAULT_ALGO = "ppo"
DEFAULT_TIMESTEPS = 40_000
DEFAULT_NUM_ENVS = 8
DEFAULT_SEED = 0
DEFAULT_VERBOSE = 0  # as SB3: the progress bar; the per-update table (1) is in progress.csv anyway
FIELD_DEST = "field."  # namespace attribute prefix of the config-field flags (they default to "not given")


def algorithm_config(algo: str) -> type:
    """The config class (``PPOConfig``, ...) of an algorithm name in :data:`agents.ALGORITHMS`."""
    from agents import algorithm

    return algorithm(algo).config_class


# -- config fields as flags and YAML keys -------------------------------------------------------
def _field_kinds(annotation: Any) -> tuple[list[Any], list[Any], bool]:
    """(plain types, Literal choices, None allowed) of a config field's annotation; Callable and other
    types that a command line cannot give are left out of the plain types (``Any`` gives ``[Any]``)."""
    from agents.common.config import annotation_kinds

    plain, choices, optional = annotation_kinds(annotation)
    given = [Any if kind is object else kind for kind in plain if kind in (object, bool, int, float, str, tuple, list, dict)]
    return given, choices, optional


class FieldValue:
    """argparse ``type=`` of a config field: text -> the field's type, checked with ``check_field``.

    Tries, in order: ``none`` (optional fields), a Literal choice, a bool word, an int, a float, a YAML
    list/mapping, any text (``str`` fields).  Every failure is an ``ArgumentTypeError`` naming the value
    and what is allowed (argparse adds the flag).
    """

    BOOL_WORDS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}

    def __init__(self, config_class: type, name: str) -> None:
        self.config_class, self.name = config_class, name
        self.plain, self.choices, self.optional = _field_kinds(typing.get_type_hints(config_class)[name])
        self.__name__ = name  # argparse names the type in some messages

    def convert(self, value: Any) -> Any:
        """A YAML value or flag text -> the field's value (text is parsed only where the field wants no text)."""
        if isinstance(value, str) and str not in self.plain and value not in self.choices:
            value = self.parse(value)
        elif isinstance(value, list) and tuple in self.plain and list not in self.plain:
            value = tuple(value)
        return value

    def parse(self, text: str) -> Any:
        word = text.strip()
        if self.optional and word.lower() in ("none", "null"):
            return None
        for choice in self.choices:
            if str(choice) == word:
                return choice
        if bool in self.plain and word.lower() in self.BOOL_WORDS:
            return self.BOOL_WORDS[word.lower()]
        for kind in (int, float):
            if kind in self.plain:
                try:
                    return kind(word)
                except ValueError:
                    pass
        if any(k in self.plain for k in (tuple, list, dict)):
            import yaml

            try:
                value = yaml.safe_load(word)
            except yaml.YAMLError:
                value = None
            if isinstance(value, list) and tuple in self.plain:
                return tuple(value)
            if isinstance(value, (list, dict)):
                return value
        if str in self.plain:
            return text
        raise argparse.ArgumentTypeError(f"invalid value {text!r}; expected {self.expected()}")

    def expected(self) -> str:
        words = {int: "an integer", float: "a number", bool: "true or false", str: "text", tuple: "a list [a, b]",
                 list: "a list [a, b]", dict: "a mapping {k: v}"}  # fmt: skip
        parts = [words[k] for k in self.plain if k in words]
        if self.choices:
            parts.append("one of " + ", ".join(str(c) for c in self.choices))
        if self.optional:
            parts.append("none")
        return " or ".join(dict.fromkeys(parts))

    def metavar(self) -> str:
        names = {int: "INT", float: "FLOAT", bool: "BOOL", str: "TEXT", tuple: "[A,B]", list: "[A,..]", dict: "{K:V}"}
        parts = [names[k] for k in self.plain if k in names]
        if self.choices:
            parts.insert(0, "{" + ",".join(str(c) for c in self.choices) + "}")
        return "|".join(dict.fromkeys(parts + (["none"] if self.optional else [])))

    def __call__(self, text: str) -> Any:
        from agents.common.config import check_field
        from textgym.errors import ConfigError

        value = self.parse(text)
        try:
            check_field(self.config_class, self.name, value)
        except ConfigError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
        return value


def add_config_arguments(parser: argparse.ArgumentParser, config_class: type, title: str | None = None) -> None:
    """One flag per field of ``config_class`` (``kl_coef`` -> ``--kl-coef``), in an argument group.

    Help is the field's documentation plus its default.  A flag that is not given leaves no attribute
    (``default=SUPPRESS``), so :func:`config_flags` returns only what the command line set.  ``bool`` fields
    are ``--x/--no-x``; an ``Any`` field (``lora``) is a switch (``--lora`` = True; richer values go in the
    YAML); a field whose type a command line cannot give at all is left to the YAML.
    """
    from agents.common.config import field_default, field_docs

    docs = field_docs(config_class)
    group = parser.add_argument_group(
        f"{title or config_class.__name__} ({config_class.__name__}; the same names with underscores in --config)"
    )
    for name in config_class.names():
        flag = "--" + name.replace("_", "-")
        default = field_default(config_class, name)
        shown = default.__name__ if callable(default) and hasattr(default, "__name__") else default
        kind = FieldValue(config_class, name)
        doc = docs.get(name, "")
        if kind.plain == [Any]:
            doc += f" On the command line a switch ({flag} = True); other values go in --config."
        doc = " ".join(f"{doc} (default: {shown})".split()).replace("%", "%%")
        common: dict[str, Any] = {"dest": FIELD_DEST + name, "default": argparse.SUPPRESS, "help": doc}
        if kind.plain == [Any]:
            group.add_argument(flag, action="store_const", const=True, **common)
        elif kind.plain == [bool] and not kind.choices:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **common)
        elif kind.plain or kind.choices:
            group.add_argument(flag, type=kind, metavar=kind.metavar(), **common)


def config_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The config fields given on the command line, by field name."""
    return {k[len(FIELD_DEST):]: v for k, v in vars(args).items() if k.startswith(FIELD_DEST)}


def load_run_config(path: str | None, algo: str | None = None) -> dict[str, Any]:
    """The ``--config`` YAML as a flat dict of checked values: :data:`RUN_KEYS` and the fields of the config
    class of ``algo`` (else the file's ``algo``, else ``ppo``); an unknown key or a bad value is a ConfigError
    naming it and what is allowed.  Text values are parsed as on the command line (``1e-3``, ``none``)."""
    if path is None:
        return {}
    import yaml

    from agents.common.config import check_field
    from textgym.errors import ConfigError

    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"--config {path!r} is not a file")
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with keys {list(RUN_KEYS)} and config fields")
    if "algo" in data and data["algo"] not in ALGORITHMS:
        raise ConfigError(f"{path}: algo={data['algo']!r} is not allowed; expected one of {sorted(ALGORITHMS)}")
    name = algo or data.get("algo") or DEFAULT_ALGO
    config_class = algorithm_config(name)
    allowed = [*RUN_KEYS, *config_class.names()]
    unknown = sorted(set(data) - set(allowed), key=str)
    if unknown:
        hint = " (the old 'ppo:' mapping is gone: write its fields at the top level)" if "ppo" in unknown else ""
        raise ConfigError(f"{path}: unknown key(s) {unknown} for {name}; allowed: {allowed}{hint}")
    out: dict[str, Any] = {}
    for key, value in data.items():
        try:
            if key in RUN_KEYS:
                out[key] = _check_run_key(key, value)
            else:
                out[key] = FieldValue(config_class, key).convert(value)
                check_field(config_class, key, out[key])
        except (ConfigError, argparse.ArgumentTypeError) as err:
            raise ConfigError(f"{path}: {key}: {err}" if isinstance(err, argparse.ArgumentTypeError) else f"{path}: {err}") from None
    return out


def _check_run_key(key: str, value: Any) -> Any:
    from textgym.errors import ConfigError

    if key == "env":
        if not isinstance(value, dict):
            raise ConfigError(f"env must be a mapping of gym.make_vec keyword arguments, got {value!r}")
    elif key in ("timesteps", "num_envs", "seed", "verbose"):
        low = 0 if key in ("seed", "verbose") else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{key}={value!r} is not allowed; expected an integer >= {low}")
    elif key in ("model", "algo") and not isinstance(value, str):
        raise ConfigError(f"{key}={value!r} is not allowed; expected text")
    return value


def init_model(path: str, env_id: str) -> str:
    """The model dir that ``--init PATH`` starts RL from: a warm-start run (``textgym sft``: its newest checkpoint),
    an RL run or checkpoint, or a Hugging Face model dir; a warm start of another env is refused."""
    from agents.common.checkpoints import resolve_checkpoint
    from agents.sft import sft_meta
    from textgym.errors import ConfigError

    found = resolve_checkpoint(path, allow_model=True)
    if not (found / "config.json").is_file():
        raise ConfigError(f"--init {path!r}: {str(found)!r} holds no Hugging Face model (config.json)")
    meta = sft_meta(found)
    if meta is not None and meta.get("env") != env_id:
        raise ConfigError(f"--init {path!r} is a warm start on {meta.get('env')!r}, not {env_id!r}")
    return str(found)


def run_settings(args: argparse.Namespace) -> dict[str, Any]:
    """A new run's settings from the ``--config`` YAML and the flags (flags win), all checked before anything
    loads: ``algo``, ``config`` (the algorithm's config object), ``model``, ``num_envs``, ``seed``,
    ``timesteps`` and ``env`` (``gym.make_vec`` keyword arguments, with the model)."""
    from agents import algorithm
    from textgym.errors import ConfigError

    run = load_run_config(args.config, args.algo)
    algo = args.algo or run.get("algo") or DEFAULT_ALGO
    fields = {k: v for k, v in run.items() if k not in RUN_KEYS}
    config = algorithm(algo).config_class.build(fields, **config_flags(args))

    def pick(key: str, default: Any) -> Any:
        flag = getattr(args, key)
        return flag if flag is not None else run.get(key, default)

    settings = {"algo": algo, "config": config, "model": pick("model", None), "num_envs": pick("num_envs", DEFAULT_NUM_ENVS),
                "seed": pick("seed", DEFAULT_SEED), "timesteps": pick("timesteps", DEFAULT_TIMESTEPS),
                "verbose": pick("verbose", DEFAULT_VERBOSE), "env": dict(run.get("env", {}))}  # fmt: skip
    init = getattr(args, "init", None)
    if init is not None:
        if settings["model"] is not None:
            raise ConfigError(f"--init {init!r} is the model to start from (and the KL reference); drop --model "
                              f"{settings['model']!r}")  # fmt: skip
        settings["model"] = init_model(init, args.id)
    if settings["model"] is not None:
        settings["env"]["model"] = settings["model"]
    if settings["num_envs"] % config.group_size:
        raise ConfigError(f"group_size={config.group_size} must divide num_envs={settings['num_envs']}")
    return settings
