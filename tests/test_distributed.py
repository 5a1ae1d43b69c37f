"""Data-parallel TextPPO (agents/distributed.py): 2 CPU processes on gloo, launched with torchrun.

The launched tests start ``python -m torch.distributed.run --standalone --nproc_per_node=2`` on a
worker script written to a temporary folder, on ``textgym/Copy-v0`` with ``model="tiny-random"``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

from agents.common.distributed import (
    DEFAULT_TIMEOUT_S,
    Distributed,
    LaunchInfo,
    _buckets,
    detect_launch,
    resolve_device,
    timeout_seconds,
)
from agents.common.losses import masked_mean, masked_whiten
from agents.common.persistence import newest_checkpoint
from textgym.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
needs_gloo = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed with gloo is not available"
)

# One worker script, three modes: "train" (a short run that records a parameter hash after every update),
# "update" (one update on this rank's half of a recorded rollout), "crash"/"hang" (rank 1 dies / stalls
# at its second update).
WORKER = textwrap.dedent(
    """
    import hashlib, json, os, signal, sys, time
    from pathlib import Path

    import gymnasium as gym
    import torch

    import textgym  # noqa: F401
    from agents import TextPPO, algorithm

    mode, out = sys.argv[1], Path(sys.argv[2])
    rank = int(os.environ["RANK"])

    def param_hash(agent):
        h = hashlib.sha256()
        for name, p in sorted(agent.policy.state_dict().items()):
            h.update(name.encode())
            h.update(p.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    class Probe(TextPPO):
        def checked_train(self, batch):
            if mode == "crash" and rank == 1 and self.n_updates == 1:
                os.kill(os.getpid(), signal.SIGKILL)
            if mode == "hang" and rank == 1 and self.n_updates == 1:
                time.sleep(600)
            stats = super().checked_train(batch)
            record = {"update": self.n_updates, "num_timesteps": self.num_timesteps,
                      "local_tokens": int(batch.gen_mask.sum()), "hash": param_hash(self),
                      "kl_coef": self.kl_ctl.value, "reward": stats["rollout/ep_rew_mean"],
                      "prompts": [info["prompt"] for info in batch.infos]}
            with open(out / "probe" / f"rank{rank}.jsonl", "a") as f:
                f.write(json.dumps(record) + "\\n")
            return stats

    env = gym.make_vec("textgym/Copy-v0", num_envs=2, model="tiny-random")
    if mode == "update":  # one update per algorithm, each on this rank's half of its recorded batch
        for kwargs in json.loads(sys.argv[3]):
            algo = kwargs.pop("algo")
            agent = algorithm(algo)("LMPolicy", env, model="tiny-random",
                                    policy_kwargs={"optimizer_class": torch.optim.SGD}, **kwargs)
            batch = torch.load(out / f"batch_{algo}.pt", weights_only=False)
            half = len(batch) // 2
            mine = batch.select(torch.arange(rank * half, (rank + 1) * half))
            agent.total_timesteps = 1
            stats = agent.checked_train(mine)
            torch.save({"params": agent.policy.state_dict(), "stats": stats,
                        "kl_coef": getattr(agent, "kl_ctl", None) and agent.kl_ctl.value},
                       out / f"update_{algo}_rank{rank}.pt")
    else:
        agent = Probe("LMPolicy", env, model="tiny-random", seed=0, learning_rate=1e-3, n_epochs=2,
                      kl_target=0.5, verbose=1, n_rollouts=1)
        # "stop": a callback on rank 0 (callbacks run there only) ends training during the second rollout
        callback = (lambda local_vars, global_vars: local_vars["self"].n_updates < 1) if mode == "stop" else None
        agent.learn(total_timesteps=int(sys.argv[3]), callback=callback, progress_bar=True)
        agent.save(out / f"checkpoint_rank{rank}")
    """
)


def _launch(tmp_path: Path, args: list[str], *, timeout: float = 120, redirect: bool = True,
            dist_timeout: int = 30) -> tuple[subprocess.CompletedProcess[str], float]:  # fmt: skip
    """Run ``torchrun --standalone --nproc_per_node=2 args`` in ``tmp_path``; per-rank logs under tmp_path/logs."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        "TEXTGYM_DIST_TIMEOUT_S": str(dist_timeout),
    }
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    if redirect:
        cmd += ["--redirects", "3", "--log-dir", str(tmp_path / "logs")]
    started = time.monotonic()
    proc = subprocess.run(cmd + args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)
    return proc, time.monotonic() - started


def _rank_logs(tmp_path: Path, rank: int) -> tuple[str, str]:
    """(stdout, stderr) of one rank from torchrun's ``--log-dir``."""
    (folder,) = list((tmp_path / "logs").glob(f"*/attempt_0/{rank}"))
    return (folder / "stdout.log").read_text(), (folder / "stderr.log").read_text()


def _worker(tmp_path: Path) -> Path:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    (tmp_path / "probe").mkdir()
    return script


def _records(tmp_path: Path, rank: int) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "probe" / f"rank{rank}.jsonl").read_text().splitlines()]


# -- launched runs ------------------------------------------------------------------------------
@needs_gloo
def test_two_ranks_train_in_lockstep_and_only_rank0_writes(tmp_path: Path) -> None:
    script = _worker(tmp_path)
    total = 40
    proc, elapsed = _launch(tmp_path, [str(script), "train", str(tmp_path), str(total)])
    assert proc.returncode == 0, proc.stderr[-4000:]
    r0, r1 = _records(tmp_path, 0), _records(tmp_path, 1)
    assert len(r0) == len(r1) >= 2, (r0, r1)
    for a, b in zip(r0, r1):
        # the same weights, KL coefficient and logged (global) reward on both ranks after every update
        assert a["hash"] == b["hash"], f"ranks diverged at update {a['update']}"
        assert a["kl_coef"] == b["kl_coef"] and a["reward"] == b["reward"]
        assert a["num_timesteps"] == b["num_timesteps"]
        assert not set(a["prompts"]) & set(b["prompts"]), "both ranks drew the same prompt"
    assert len({r["hash"] for r in r0}) == len(r0), "the weights did not change between updates"
    # total_timesteps is the global count: the tokens generated by both ranks, summed
    previous = 0
    for a, b in zip(r0, r1):
        assert a["num_timesteps"] == previous + a["local_tokens"] + b["local_tokens"]
        previous = a["num_timesteps"]
    assert r0[-2]["num_timesteps"] < total <= r0[-1]["num_timesteps"]
    # only rank 0 saved, logged and showed a progress bar
    assert (tmp_path / "checkpoint_rank0" / "model.safetensors").is_file()
    assert not (tmp_path / "checkpoint_rank1").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_rank0", "logs", "probe", "worker.py"]
    out0, err0 = _rank_logs(tmp_path, 0)
    out1, err1 = _rank_logs(tmp_path, 1)
    assert "ep_rew_mean" in out0 and "tok/s" in err0
    assert "ep_rew_mean" not in out1 and "tok/s" not in err1
    assert elapsed < 90


@needs_gloo
def test_cli_train_under_torchrun(tmp_path: Path) -> None:
    proc, _ = _launch(tmp_path, ["-m", "textgym", "train", "textgym/Copy-v0", "--model", "tiny-random",
                                 "--timesteps", "30", "--num-envs", "2", "--out", "run"])  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    out0, _ = _rank_logs(tmp_path, 0)
    out1, _ = _rank_logs(tmp_path, 1)
    assert out0.count("saved run") == 1 and "saved" not in out1
    meta = json.loads((newest_checkpoint(tmp_path / "run") / "textppo.json").read_text())
    assert meta["num_timesteps"] >= 30
    assert meta["num_timesteps"] > 12 * meta["n_updates"], "one process makes at most 2 envs x 6 tokens per update"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs", "run"]


@needs_gloo
@pytest.mark.slow
def test_cli_train_under_accelerate_launch(tmp_path: Path) -> None:
    """``accelerate launch --multi_gpu`` runs torchrun underneath; on CPU its workers use gloo."""
    pytest.importorskip("accelerate")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "TEXTGYM_DIST_TIMEOUT_S": "30"}  # fmt: skip
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
           "-m", "textgym", "train", "textgym/Copy-v0", "--model", "tiny-random", "--timesteps", "30",
           "--num-envs", "2", "--out", "run"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count("saved run") == 1
    meta = json.loads((newest_checkpoint(tmp_path / "run") / "textppo.json").read_text())
    assert meta["num_timesteps"] > 12 * meta["n_updates"], "only one process trained"


ALGO_KWARGS = {  # per algorithm: what its stats and state must agree on across ranks
    "ppo": ({"kl_target": 0.01}, ("train/approx_kl", "train/clip_fraction", "train/policy_gradient_loss", "train/value_loss")),
    "grpo": ({"group_size": 2}, ("train/loss", "train/kl", "train/ratio")),
    "rloo": ({"group_size": 2}, ("train/loss", "train/ratio")),
    "raft": ({"group_size": 2}, ("train/loss", "train/nll", "train/kl", "train/kept_fraction")),
    "nlpo": ({"kl_target": 0.01}, ("train/approx_kl", "train/clip_fraction", "train/policy_gradient_loss", "train/value_loss")),
}


@needs_gloo
def test_update_on_two_halves_equals_update_on_whole_batch(tmp_path: Path) -> None:
    """Every algorithm: 2 ranks x B rows == 1 rank x 2B rows for one update (gradients, whitening, KL controller
    and stats).  One launch runs the five updates: a launch costs about 10 s, the updates a fraction of that."""
    import gymnasium as gym

    import textgym  # noqa: F401
    from agents import algorithm
    from agents.common.rollout import collect_episodes

    env = gym.make_vec("textgym/Copy-v0", num_envs=4, model="tiny-random")
    singles, jobs = {}, []
    for algo, (extra, _) in ALGO_KWARGS.items():
        # fp32: the comparison is of the reduction's math (bf16, "auto" on a CPU with bf16 instructions, rounds apart)
        kwargs = {"seed": 0, "learning_rate": 0.05, "n_epochs": 2, "kl_coef": 0.1, "verbose": 0, "n_rollouts": 1,
                  "bf16": False, **extra}  # fmt: skip
        agent = algorithm(algo)("LMPolicy", env, model="tiny-random", policy_kwargs={"optimizer_class": torch.optim.SGD},
                                **kwargs)  # fmt: skip
        initial = {k: v.clone() for k, v in agent.policy.state_dict().items()}
        obs, _ = env.reset(seed=3)
        batch = collect_episodes(agent.policy, env, obs, generator=torch.Generator().manual_seed(3))
        torch.save(batch, tmp_path / f"batch_{algo}.pt")
        singles[algo] = (agent, initial, batch)
        jobs.append({"algo": algo, **kwargs})
    script = _worker(tmp_path)
    proc, _ = _launch(tmp_path, [str(script), "update", str(tmp_path), json.dumps(jobs)])
    assert proc.returncode == 0, proc.stderr[-4000:]
    for algo, (agent, initial, batch) in singles.items():
        agent.total_timesteps = 1
        stats = agent.checked_train(batch)
        single = agent.policy.state_dict()
        moved = max(float((single[k].float() - initial[k].float()).abs().max()) for k in single)
        assert moved > 1e-3, f"{algo}: the update did not move the weights; the comparison would be empty"
        for rank in (0, 1):
            result = torch.load(tmp_path / f"update_{algo}_rank{rank}.pt", weights_only=False)
            for name, value in single.items():
                torch.testing.assert_close(result["params"][name], value, rtol=1e-4, atol=1e-5, msg=f"{algo}: {name}")
            if algo == "ppo":
                assert result["kl_coef"] == pytest.approx(agent.kl_ctl.value, rel=1e-6)
            for key in ("rollout/ep_rew_mean", "rollout/kl_ref", "rollout/copy_accuracy_mean", *ALGO_KWARGS[algo][1]):
                assert result["stats"][key] == pytest.approx(stats[key], rel=1e-4, abs=1e-6), f"{algo}: {key}"


@needs_gloo
def test_callback_stop_on_rank0_stops_every_rank(tmp_path: Path) -> None:
    script = _worker(tmp_path)
    proc, elapsed = _launch(tmp_path, [str(script), "stop", str(tmp_path), "400"])
    assert proc.returncode == 0, proc.stderr[-4000:]
    r0, r1 = _records(tmp_path, 0), _records(tmp_path, 1)
    assert len(r0) == len(r1) == 1, "the stop during the second rollout must end training on both ranks"
    assert elapsed < 60


@needs_gloo
def test_killed_rank_ends_the_job_with_an_error(tmp_path: Path) -> None:
    script = _worker(tmp_path)
    proc, elapsed = _launch(tmp_path, [str(script), "crash", str(tmp_path), "400"], redirect=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert elapsed < 60
    assert "rank      : 1 (local_rank: 1)" in output or "rank 0 of 2" in output, output[-3000:]
    assert "SIGKILL" in output or "crashed" in output, output[-3000:]


@needs_gloo
@pytest.mark.slow
def test_stuck_rank_times_out_with_a_clear_message(tmp_path: Path) -> None:
    script = _worker(tmp_path)
    proc, elapsed = _launch(tmp_path, [str(script), "hang", str(tmp_path), "400"], redirect=False, dist_timeout=8)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert elapsed < 60
    assert "rank 0 of 2" in output and "timeout" in output, output[-3000:]


# -- single-process helpers (no launch) --------------------------------------------------------------
def test_detect_launch_reads_torchrun_variables() -> None:
    assert detect_launch({}) == LaunchInfo(0, 1, 0)
    assert detect_launch({"WORLD_SIZE": "1", "RANK": "0"}) == LaunchInfo(0, 1, 0)
    assert detect_launch({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}) == LaunchInfo(3, 4, 1)
    assert detect_launch({"WORLD_SIZE": "4", "RANK": "3", "TEXTGYM_DISTRIBUTED": "0"}) == LaunchInfo(0, 1, 0)
    with pytest.raises(ConfigError, match="RANK='5'"):
        detect_launch({"WORLD_SIZE": "2", "RANK": "5"})
    with pytest.raises(ConfigError, match="WORLD_SIZE='two'"):
        detect_launch({"WORLD_SIZE": "two"})


def test_timeout_and_device() -> None:
    assert timeout_seconds({}) == DEFAULT_TIMEOUT_S
    assert timeout_seconds({"TEXTGYM_DIST_TIMEOUT_S": "12.5"}) == 12.5
    with pytest.raises(ConfigError, match="TEXTGYM_DIST_TIMEOUT_S='-1'"):
        timeout_seconds({"TEXTGYM_DIST_TIMEOUT_S": "-1"})
    assert resolve_device("cuda", LaunchInfo(3, 4, 1)) == torch.device("cuda", 1)
    assert resolve_device("cpu", LaunchInfo(3, 4, 1)) == torch.device("cpu")


def test_single_process_helpers_are_identities() -> None:
    one = Distributed(LaunchInfo(), torch.device("cpu"))
    assert not one.enabled and one.is_main
    gen = torch.Generator().manual_seed(0)
    values = torch.randn(3, 5, generator=gen)
    mask = torch.rand(3, 5, generator=gen) > 0.3
    assert torch.equal(one.masked_whiten(values, mask), masked_whiten(values, mask))
    means = one.means({"a": values, "b": (values, mask), "c": [1.0, 2.0, 4.0]})
    assert means == {"a": float(values.mean()), "b": float(masked_mean(values, mask)), "c": float(np.mean([1, 2, 4]))}
    assert one.sum(values) is values and one.sum_int(7) == 7
    assert one.agree(True, [1.5]) == (True, [1.5])
    rng = np.random.default_rng(1)
    assert one.decorrelate(gen, rng) is rng and one.rank_seed(5) == 5


def test_shard_and_seeds_per_rank() -> None:
    import gymnasium as gym

    import textgym  # noqa: F401

    shards, seeds = [], []
    for rank in (0, 1):
        env = gym.make_vec("textgym/Copy-v0", num_envs=2, model="tiny-random")
        everything = [s.id for s in env.setup.samples]
        part = Distributed(LaunchInfo(rank, 2, rank), torch.device("cpu"))
        part.shard_env(env)
        shards.append([s.id for s in env.setup.samples])
        gen = torch.Generator().manual_seed(0)
        seeds.append((part.decorrelate(gen, np.random.default_rng(0)).integers(1 << 30), gen.initial_seed()))
    assert shards[0] == everything[0::2] and shards[1] == everything[1::2]
    assert not set(shards[0]) & set(shards[1])
    assert seeds[0] != seeds[1]
    tiny = gym.make_vec("textgym/Copy-v0", num_envs=1, model="tiny-random")
    tiny.unwrapped.setup.samples = tiny.unwrapped.setup.samples[:1]
    with pytest.raises(ConfigError, match="fewer than the 2 ranks"):
        Distributed(LaunchInfo(1, 2, 1), torch.device("cpu")).shard_env(tiny)


def test_buckets_split_by_size() -> None:
    tensors = [torch.zeros(n) for n in (3, 3, 5, 1)]
    assert [[t.numel() for t in b] for b in _buckets(tensors, limit=6)] == [[3, 3], [5, 1]]
    assert [[t.numel() for t in b] for b in _buckets([torch.zeros(9)], limit=6)] == [[9]]
