"""Saving and loading an on-policy agent: a Hugging Face checkpoint plus the state to resume exactly.

Persistence knows agents only through their public surface (``config``,
``policy``, ``reference``, ``state_dict()`` / ``load_state_dict()``); it never
imports an algorithm: :func:`load_agent` is given the class to build.

Layout of a save directory::

    config.json, model.safetensors, generation_config.json, tokenizer files
                          the policy LM (LoRA merged in): AutoModelForCausalLM.from_pretrained(dir) loads it
                          (AutoModelForSeq2SeqLM for an encoder-decoder)
    textppo.json          algorithm, hyperparameters, model spec, env id/kwargs, counters
    value_head.safetensors  value head (and the critic trunk with separate_critic=True)
    adapter/              LoRA adapters (peft format), when LoRA is on
    reference/            the frozen reference model, only when it cannot be reloaded from a model spec
    optimizer.pt          optimizer state
    training_state.pt     the agent's state_dict(): RNG states, counters, history, the algorithm's own state
    manifest.json         every other file and its size, written last: loading checks it

Writes are atomic: everything goes to a temporary sibling directory that
replaces the target by rename, so a crash mid-save leaves the previous
checkpoint intact, and weights that are not finite are never written.

A *run directory* (``learn(save_dir=...)``, ``textgym train --out``) holds
numbered checkpoints ``checkpoint-<updates>``; :func:`newest_checkpoint` picks
the newest one that passes validation, reporting and skipping broken ones.
Which directory a path means (a run directory, a checkpoint, ``x.zip``) is
decided by :func:`agents.common.checkpoints.resolve_checkpoint`, re-exported here.
``save("x.zip")`` writes the directory ``x``: a folder is never named like a zip file.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import shutil
import tempfile
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from agents.common.checkpoints import (
    CHECKPOINT_PREFIX,
    FORMAT_VERSION,
    MANIFEST,
    META,
    WEIGHTS,
    CheckpointError,
    check_checkpoint,
    checkpoint_algorithm,
    describe_checkpoint,
    first_valid,
    list_checkpoints,
    newest_checkpoint,
    resolve_checkpoint,
    update_count,
)
from textgym.errors import TextGymError

__all__ = ["CHECKPOINT_PREFIX", "FORMAT_VERSION", "MANIFEST", "META", "WEIGHTS", "CheckpointError", "NonFiniteError",
           "check_checkpoint", "checkpoint_algorithm", "describe_checkpoint", "list_checkpoints", "load_agent",
           "newest_checkpoint", "resolve_checkpoint", "save_agent", "save_checkpoint", "stop_nonfinite"]  # fmt: skip


class Agent(Protocol):
    """What persistence reads and writes of an agent (its algorithm class is never imported here)."""

    name: str
    config: Any
    policy: Any
    reference: Any
    spec: Any
    env: Any
    model_spec: Any
    policy_kwargs: dict[str, Any]
    seed: int | None
    verbose: int
    num_timesteps: int
    n_updates: int
    nonfinite_streak: int
    nonfinite_reason: str

    def state_dict(self) -> dict[str, Any]: ...

    def save_checkpoint(self, save_dir: str | os.PathLike[str], keep: int = 2) -> Path | None: ...


class NonFiniteError(TextGymError, FloatingPointError):
    """Training produced NaN/inf values (weights, losses or rewards) it cannot recover from."""


def _json_safe(kwargs: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in kwargs.items():
        try:
            json.dumps(value)
        except TypeError:
            continue
        out[key] = value
    return out


def _env_meta(agent: Agent) -> dict[str, Any]:
    spec = getattr(agent.env, "spec", None)
    if spec is None:
        return {"id": None, "kwargs": {}, "num_envs": agent.env.num_envs}
    kwargs = {k: v for k, v in spec.kwargs.items() if k not in ("task", "num_envs", "vectorization_mode")}
    return {"id": spec.id, "kwargs": _json_safe(kwargs), "num_envs": agent.env.num_envs}


def save_agent(agent: Agent, path: str | os.PathLike[str]) -> None:
    """See :meth:`agents.Agent.save`; ``x.zip`` saves the directory ``x`` (SB3's ``CheckpointCallback`` adds ``.zip``)."""
    target = Path(path)
    if target.suffix == ".zip":
        target = target.with_suffix("")
    bad = [name for name, p in agent.policy.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        raise NonFiniteError(
            f"refusing to save {str(target)!r}: {len(bad)} parameter tensor(s) hold NaN/inf (first: {bad[0]}); "
            "the previous checkpoint is left as it is"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        _write(agent, tmp)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, old / "previous")
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write(agent: Agent, out: Path) -> None:
    policy = agent.policy
    lora = hasattr(policy.lm, "disable_adapter")
    if lora:
        policy.lm.save_pretrained(str(out / "adapter"))
        merged = copy.deepcopy(policy.lm).merge_and_unload()
        merged.save_pretrained(str(out), safe_serialization=True)
        del merged
    else:
        policy.lm.save_pretrained(str(out), safe_serialization=True)
    agent.spec.tokenizer.save_pretrained(str(out))
    heads = {f"value_head.{k}": v for k, v in policy.value_head.state_dict().items()}
    if policy.critic is not None:
        heads.update({f"critic.{k}": v for k, v in policy.critic.state_dict().items()})
    save_file({k: v.detach().cpu().contiguous() for k, v in heads.items()}, str(out / "value_head.safetensors"))
    spec = agent.model_spec if isinstance(agent.model_spec, (str, os.PathLike)) else None
    if spec is None and agent.reference is not None:
        agent.reference.save_pretrained(str(out / "reference"), safe_serialization=True)
    config = agent.config.to_dict()
    if lora:
        config["lora"] = True  # the adapter config itself is in adapter/
    meta = {
        "format": FORMAT_VERSION,
        "algo": agent.name,
        "policy_class": type(policy).__name__,
        "model_spec": None if spec is None else os.fspath(spec),
        "lora": lora,
        "config": config,
        "callable_learning_rate": callable(agent.config.learning_rate),
        "policy_kwargs": _json_safe(agent.policy_kwargs),
        "env": _env_meta(agent),
        "seed": agent.seed,
        "num_timesteps": agent.num_timesteps,
        "n_updates": agent.n_updates,
        "verbose": agent.verbose,
    }
    (out / META).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    torch.save(policy.optimizer.state_dict(), out / "optimizer.pt")
    torch.save(agent.state_dict(), out / "training_state.pt")
    sizes = {f.relative_to(out).as_posix(): f.stat().st_size for f in sorted(out.rglob("*")) if f.is_file()}
    (out / MANIFEST).write_text(json.dumps(sizes, indent=1), encoding="utf-8")  # last: its presence = complete


def load_agent(cls: Any, path: str | os.PathLike[str], env: Any, device: Any, **overrides: Any) -> Agent:
    """See :meth:`agents.Agent.load`: the checkpoint :func:`resolve_checkpoint` picks (a run directory's newest
    valid one; one that fails to read gives way to the next).  With ``verbose >= 1`` it prints
    ``loaded <checkpoint> (<algo>, <updates> updates, <tokens> tokens)``."""
    from agents.common.launch import is_main_process

    agent = first_valid(path, lambda candidate: _load_checkpoint(cls, candidate, env, device, **overrides))
    if agent.verbose >= 1 and is_main_process():
        print(f"loaded {describe_checkpoint(agent.loaded_from)}", flush=True)
    return agent


# what a truncated or corrupted file raises while torch / safetensors / transformers read it
_READ_ERRORS = (OSError, RuntimeError, EOFError, KeyError, ValueError, pickle.UnpicklingError, SafetensorError)


def _load_checkpoint(cls: Any, root: Path, env: Any, device: Any, **overrides: Any) -> Agent:
    import gymnasium as gym

    from textgym.models import load_model

    meta = check_checkpoint(root)
    if env is None:
        env_meta = meta["env"]
        if env_meta["id"] is None:
            raise CheckpointError(f"checkpoint {str(root)!r} does not record its env id; pass env=")
        env = gym.make_vec(env_meta["id"], num_envs=env_meta["num_envs"], **env_meta["kwargs"])
    algo = meta.get("algo", "ppo")
    if cls.name and algo != cls.name:
        raise CheckpointError(f"checkpoint {str(root)!r} is a {algo!r} agent, not {cls.name!r}; load it with its own class")
    names = cls.config_class.names()
    config = {k: v for k, v in meta["config"].items() if k in names}
    if meta.get("callable_learning_rate") and "learning_rate" not in overrides:
        raise CheckpointError("the agent was trained with a learning-rate schedule function; pass learning_rate= to load()")
    config.update({k: v for k, v in overrides.items() if k in names})
    other = {k: v for k, v in overrides.items() if k not in names}
    spec = meta["model_spec"]
    agent = cls(
        meta["policy_class"],
        env,
        model=spec,
        policy_kwargs=meta.get("policy_kwargs") or None,
        seed=meta["seed"],
        verbose=other.pop("verbose", meta.get("verbose", 0)),
        device=device,
        config=config,
        init_model=False,
        **other,
    )
    try:
        if meta["lora"]:
            from peft import PeftModel

            lm = PeftModel.from_pretrained(load_model(spec), str(root / "adapter"), is_trainable=True)
            reference = None
        else:
            lm = load_model(str(root))
            reference = load_model(spec if spec is not None else str(root / "reference"))
        heads = load_file(str(root / "value_head.safetensors"))
        optimizer = torch.load(root / "optimizer.pt", map_location="cpu")
        state = torch.load(root / "training_state.pt", weights_only=False)
    except _READ_ERRORS as err:
        raise CheckpointError(f"checkpoint {str(root)!r} could not be read: {type(err).__name__}: {err}") from err
    agent.setup_model(lm, reference=reference)
    agent.policy.value_head.load_state_dict({k[11:]: v for k, v in heads.items() if k.startswith("value_head.")})
    if agent.policy.critic is not None:
        agent.policy.critic.load_state_dict({k[7:]: v for k, v in heads.items() if k.startswith("critic.")})
    agent.policy.optimizer.load_state_dict(optimizer)  # moves the state to the parameters' device
    agent.load_state_dict(state)
    agent.loaded_from = root
    return agent


# -- run directories ---------------------------------------------------------------------------
def save_checkpoint(agent: Agent, run_dir: str | os.PathLike[str], keep: int = 2) -> Path:
    """Save ``run_dir/checkpoint-<n_updates>`` atomically, then delete all but the ``keep`` newest.

    Temp folders left by a save that was killed are removed; a valid checkpoint
    of the same update count is kept as it is (nothing new to write).
    """
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ValueError(f"keep must be a positive integer (checkpoints kept), got {keep!r}")
    root = Path(run_dir)
    target = root / f"{CHECKPOINT_PREFIX}{agent.n_updates:06d}"
    try:
        check_checkpoint(target)
    except CheckpointError:
        save_agent(agent, target)  # replaces a broken folder of that name
    for stale in root.glob(f".{CHECKPOINT_PREFIX}*"):  # .checkpoint-N.tmp-* / .old-* of an interrupted save
        shutil.rmtree(stale, ignore_errors=True)
    upto = [p for p in list_checkpoints(root) if update_count(p) <= agent.n_updates]  # never a newer one
    for old in upto[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def stop_nonfinite(agent: Agent, save_dir: str | os.PathLike[str] | None, keep: int) -> None:
    """K updates in a row were non-finite: save the (never-updated-with-NaN) weights and raise."""
    where = "no save_dir was given; the agent's weights were never updated with non-finite values"
    if save_dir is not None:
        try:
            agent.save_checkpoint(save_dir, keep)
        except NonFiniteError:  # weights went bad some other way: the older checkpoints stay
            pass
        good = list_checkpoints(save_dir)
        where = f"last good checkpoint: {good[-1]}" if good else f"no checkpoint in {str(save_dir)!r}"
    raise NonFiniteError(
        f"{agent.nonfinite_streak} updates in a row had non-finite rewards or losses (last: {agent.nonfinite_reason}); "
        f"training stopped at update {agent.n_updates}, {agent.num_timesteps} tokens ({where}). Lower learning_rate, "
        "check the reward function, or raise max_nonfinite_updates."
    )
