"""Saving and loading TextPPO: a Hugging Face checkpoint plus the state needed to resume exactly.

Layout of a save directory::

    config.json, model.safetensors, generation_config.json, tokenizer files
                          the policy LM (LoRA merged in): AutoModelForCausalLM.from_pretrained(dir) loads it
    textppo.json          hyperparameters, model spec, env id/kwargs, counters
    value_head.safetensors  value head (and the critic trunk with separate_critic=True)
    adapter/              LoRA adapters (peft format), when LoRA is on
    reference/            the frozen reference model, only when it cannot be reloaded from a model spec
    optimizer.pt          optimizer state
    training_state.pt     KL controller, RNG states (torch, numpy, sampling generator), history

Writes are atomic: everything goes to a temporary sibling directory that
replaces the target by rename, so a crash mid-save leaves the previous
checkpoint intact.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from agents.config import TextPPOConfig
from textgym.errors import TextGymError

if TYPE_CHECKING:
    from agents.ppo import TextPPO

FORMAT_VERSION = 1
META = "textppo.json"
WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


class CheckpointError(TextGymError, ValueError):
    """A TextPPO checkpoint directory is missing or incomplete."""


def _json_safe(kwargs: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in kwargs.items():
        try:
            json.dumps(value)
        except TypeError:
            continue
        out[key] = value
    return out


def _env_meta(agent: TextPPO) -> dict[str, Any]:
    spec = getattr(agent.env, "spec", None)
    if spec is None:
        return {"id": None, "kwargs": {}, "num_envs": agent.env.num_envs}
    kwargs = {k: v for k, v in spec.kwargs.items() if k not in ("task", "num_envs", "vectorization_mode")}
    return {"id": spec.id, "kwargs": _json_safe(kwargs), "num_envs": agent.env.num_envs}


def save_agent(agent: TextPPO, path: str | os.PathLike[str]) -> None:
    """See :meth:`agents.TextPPO.save`."""
    target = Path(path)
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


def _write(agent: TextPPO, out: Path) -> None:
    policy = agent.policy
    lora = hasattr(policy.lm, "disable_adapter")
    if lora:
        policy.lm.save_pretrained(str(out / "adapter"))
        merged = copy.deepcopy(policy.lm).merge_and_unload()
        merged.save_pretrained(str(out), safe_serialization=True)
        del merged
    else:
        policy.lm.save_pretrained(str(out), safe_serialization=True)
    agent.env.setup.tokenizer.save_pretrained(str(out))
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
    state = {
        "kl_controller": agent.kl_ctl.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "sampling_rng": agent._torch_gen.get_state(),
        "numpy_rng": agent._np_rng.bit_generator.state,
        "history": agent.history,
    }
    torch.save(state, out / "training_state.pt")


def check_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint's metadata; raises :class:`CheckpointError` naming every missing file."""
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory {str(path)!r} does not exist")
    missing = [n for n in ("config.json", META, "value_head.safetensors", "optimizer.pt", "training_state.pt")
               if not (path / n).is_file()]  # fmt: skip
    if not any((path / w).is_file() for w in WEIGHTS):
        missing.append(" or ".join(WEIGHTS))
    meta: dict[str, Any] = {}
    if (path / META).is_file():
        meta = json.loads((path / META).read_text(encoding="utf-8"))
        if meta.get("lora") and not (path / "adapter" / "adapter_config.json").is_file():
            missing.append("adapter/adapter_config.json")
        if meta.get("model_spec") is None and not meta.get("lora") and not (path / "reference" / "config.json").is_file():
            missing.append("reference/config.json")
    if missing:
        raise CheckpointError(f"checkpoint {str(path)!r} is incomplete; missing: {', '.join(missing)}")
    if meta.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {str(path)!r} has format {meta.get('format')!r}; expected {FORMAT_VERSION}")
    return meta


def load_agent(cls: type[TextPPO], path: str | os.PathLike[str], env: Any, device: Any, **overrides: Any) -> TextPPO:
    """See :meth:`agents.TextPPO.load`."""
    import gymnasium as gym

    from textgym.models import load_model

    root = Path(path)
    meta = check_checkpoint(root)
    if env is None:
        env_meta = meta["env"]
        if env_meta["id"] is None:
            raise CheckpointError(f"checkpoint {str(root)!r} does not record its env id; pass env=")
        env = gym.make_vec(env_meta["id"], num_envs=env_meta["num_envs"], **env_meta["kwargs"])
    config = {k: v for k, v in meta["config"].items() if k in TextPPOConfig.names()}
    if meta.get("callable_learning_rate") and "learning_rate" not in overrides:
        raise CheckpointError("the agent was trained with a learning-rate schedule function; pass learning_rate= to load()")
    config.update({k: v for k, v in overrides.items() if k in TextPPOConfig.names()})
    other = {k: v for k, v in overrides.items() if k not in TextPPOConfig.names()}
    spec = meta["model_spec"]
    agent = cls(
        meta["policy_class"],
        env,
        model=spec,
        policy_kwargs=meta.get("policy_kwargs") or None,
        seed=meta["seed"],
        verbose=other.pop("verbose", meta.get("verbose", 1)),
        device=device,
        _init_setup=False,
        **other,
        **config,
    )
    if meta["lora"]:
        from peft import PeftModel

        lm = PeftModel.from_pretrained(load_model(spec), str(root / "adapter"), is_trainable=True)
        reference = None
    else:
        lm = load_model(str(root))
        reference = load_model(spec if spec is not None else str(root / "reference"))
    agent._setup_model(lm, reference=reference)
    heads = load_file(str(root / "value_head.safetensors"))
    agent.policy.value_head.load_state_dict({k[11:]: v for k, v in heads.items() if k.startswith("value_head.")})
    if agent.policy.critic is not None:
        agent.policy.critic.load_state_dict({k[7:]: v for k, v in heads.items() if k.startswith("critic.")})
    agent.policy.optimizer.load_state_dict(torch.load(root / "optimizer.pt", map_location=agent.device))
    state = torch.load(root / "training_state.pt", weights_only=False)
    agent.kl_ctl.load_state_dict(state["kl_controller"])
    torch.set_rng_state(state["torch_rng"])
    agent._torch_gen.set_state(state["sampling_rng"])
    agent._np_rng = np.random.default_rng()
    agent._np_rng.bit_generator.state = state["numpy_rng"]
    agent._np_rng = agent.dist.decorrelate(agent._torch_gen, agent._np_rng)  # ranks > 0: their own streams
    agent.history = list(state["history"])
    agent.num_timesteps = int(meta["num_timesteps"])
    agent.n_updates = int(meta["n_updates"])
    return agent
