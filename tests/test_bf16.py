"""bf16 autocast (issue 22): the ``bf16`` field ("auto", True, False), what runs in bf16 and what stays
float32, old log-probs consistent with the training forward, and ``bf16=False`` as the fp32 path."""

from __future__ import annotations

import gymnasium as gym
import pytest
import torch

import textgym  # noqa: F401
from agents import ALGORITHMS, TextGRPO, TextPPO, algorithm
from agents.common.agent import use_bf16
from agents.common.config import OnPolicyConfig
from textgym.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = {"model": "tiny-random", "learning_rate": 1e-3, "n_epochs": 2, "n_rollouts": 1, "group_size": 2}


def copy_env(n: int = 4):
    return gym.make_vec("textgym/Copy-v0", num_envs=n, model="tiny-random")


def weights(agent) -> list[torch.Tensor]:
    return [t.detach().clone() for t in agent.policy.state_dict().values()]


def test_the_field_takes_auto_true_false_and_refuses_anything_else() -> None:
    assert OnPolicyConfig().bf16 == "auto"
    for value in ("auto", True, False):
        assert OnPolicyConfig(bf16=value).bf16 == value
    assert OnPolicyConfig(bf16=None).bf16 == "auto"  # what checkpoints saved before "auto" stored
    with pytest.raises(ConfigError, match=r"bf16='yes' is not allowed; expected bool \| 'auto'"):
        OnPolicyConfig(bf16="yes")


def test_auto_follows_the_cpus_bf16_instructions_and_the_measured_table(monkeypatch) -> None:
    from agents.common import agent

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert use_bf16(True, cpu) and not use_bf16(False, cuda)
    assert not use_bf16("auto", cuda)  # measured slower on an H200
    for native in (True, False):
        monkeypatch.setattr(agent, "cpu_has_native_bf16", lambda native=native: native)
        assert use_bf16("auto", cpu) is native and use_bf16("auto", "cpu") is native
    monkeypatch.setitem(agent.AUTO_BF16, "cuda", True)
    assert use_bf16("auto", cuda) and not use_bf16("auto", torch.device("mps"))


def test_native_bf16_is_what_the_cpu_flags_say() -> None:
    """x86 Linux: AVX512-BF16 or AMX in /proc/cpuinfo's flags is what ``auto`` turns bf16 on for."""
    from pathlib import Path

    from agents.common.agent import cpu_has_native_bf16

    info = Path("/proc/cpuinfo")
    if not info.is_file() or "flags" not in info.read_text():
        pytest.skip("no x86 /proc/cpuinfo flags here")
    flags = set(next(line for line in info.read_text().splitlines() if line.startswith("flags")).split(":")[1].split())
    assert cpu_has_native_bf16() is bool(flags & {"avx512_bf16", "amx_bf16", "amx_tile"})


def test_forcing_bf16_on_a_cpu_without_it_warns_with_the_cost(monkeypatch) -> None:
    from agents.common import agent

    monkeypatch.setattr(agent, "cpu_has_native_bf16", lambda: False)
    with pytest.warns(UserWarning, match=r"bf16=True on a CPU without bf16 instructions.*3x slower.*picks fp32"):
        assert use_bf16(True, torch.device("cpu"))
    monkeypatch.setattr(agent, "cpu_has_native_bf16", lambda: True)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert use_bf16(True, torch.device("cpu")) and use_bf16("auto", torch.device("cpu"))


def test_bf16_false_and_auto_on_a_cpu_without_bf16_are_the_fp32_path(monkeypatch) -> None:
    """``bf16=False`` never enters autocast; ``"auto"`` on a CPU without bf16 instructions is the same fp32 path,
    bit for bit; ``bf16=True`` trains differently (the comparison can fail)."""
    from agents.common import agent as agent_module

    monkeypatch.setattr(agent_module, "cpu_has_native_bf16", lambda: False)
    runs = {}
    for setting in (False, "auto", True):
        agent = TextPPO("LMPolicy", copy_env(), seed=3, bf16=setting, **FAST)
        assert (agent.autocast() is None) is (setting is not True)
        agent.learn(1)
        runs[setting] = weights(agent)
    for a, b in zip(runs[False], runs["auto"]):
        assert torch.equal(a, b)
    assert any(not torch.equal(a, b) for a, b in zip(runs[False], runs[True]))


def test_under_bf16_the_matmuls_run_in_bf16_and_the_rest_stays_float32() -> None:
    agent = TextPPO("LMPolicy", copy_env(), seed=0, bf16=True, **FAST)
    seen: list[torch.dtype] = []
    layer = agent.policy.decoder.layers[0].mlp.down_proj
    handle = layer.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    agent.learn(1)
    handle.remove()
    assert seen and set(seen) == {torch.bfloat16}  # rollout, old/reference forwards and update all in bf16
    assert all(p.dtype == torch.float32 for p in agent.policy.parameters())  # fp32 master weights
    state = agent.policy.optimizer.state_dict()["state"]
    assert state and all(t.dtype == torch.float32 for s in state.values() for k, t in s.items() if k != "step")
    row = agent.history[-1]
    assert all(torch.isfinite(torch.tensor(row[k])) for k in ("rollout/kl_ref", "train/loss", "train/value_loss"))
    batch = agent.collect(agent._init_callback(None))
    agent.prepare(batch)
    assert batch.old_logp.dtype == batch.ref_logp.dtype == batch.values.dtype == batch.kl.dtype == torch.float32
    with agent.ctx():
        logp, entropy, values = agent.policy.sequence_forward(batch.input_ids, batch.attention_mask, batch.prompt_len)
    assert logp.dtype == entropy.dtype == values.dtype == torch.float32


@pytest.mark.parametrize("algo", sorted(ALGORITHMS))
def test_old_logprobs_come_from_the_training_forward(algo: str) -> None:
    """Under bf16 the old log-probs are computed with the autocast forward the update uses, so the first
    step's importance ratio is 1 (up to the rounding of another batch composition)."""
    agent = algorithm(algo)("LMPolicy", copy_env(8), seed=1, bf16=True, **{**FAST, "group_size": 4})
    batch = agent.collect(agent._init_callback(None))
    assert batch.old_logp is None and batch.values is None  # a bf16 KV-cached decode records none
    agent.prepare(batch)
    mask = batch.gen_mask
    with torch.no_grad(), agent.ctx():
        logp, _, _ = agent.policy.sequence_forward(batch.input_ids, batch.attention_mask, batch.prompt_len)
    assert torch.equal(logp[mask], batch.old_logp[mask])  # the same forward: ratio exactly 1
    half = batch.select(torch.arange(4))  # another batch composition (one prompt group): a bf16 rounding apart
    with torch.no_grad(), agent.ctx():
        logp, _, _ = agent.policy.sequence_forward(half.input_ids, half.attention_mask, half.prompt_len)
    ratio = (logp - half.old_logp)[half.gen_mask].exp()
    assert float((ratio - 1).abs().max()) < 0.02 and float(ratio.std()) < 0.005


@pytest.mark.parametrize("algo", sorted(a for a in ALGORITHMS if algorithm(a).trains_on_every_row))
def test_one_micro_batch_update_reuses_prepares_forward_for_its_first_step(algo: str, monkeypatch) -> None:
    """bf16 recomputes the old log-probs; when one micro-batch takes the whole batch, that forward (kept with its
    graph) is also the first step's: one policy forward less per update, the first ratio exactly 1, and the
    same weights as an update that runs the forward again.  (RAFT trains on a subset of the rows: it keeps no
    graph, ``tests/test_raft.py``.)"""
    from agents.common import on_policy

    def update(keep: bool) -> tuple[list[torch.Tensor], int, dict]:
        agent = algorithm(algo)("LMPolicy", copy_env(8), seed=1, bf16=True, **{**FAST, "group_size": 4})
        batch = agent.collect(agent._init_callback(None))
        monkeypatch.setattr(on_policy.OnPolicyAlgorithm, "_first_step_takes_all", lambda self, n: keep)
        calls, forward = [], agent.policy.sequence_forward

        def counted(*args, **kwargs):
            calls.append(torch.is_grad_enabled())
            return forward(*args, **kwargs)

        monkeypatch.setattr(agent.policy, "sequence_forward", counted)
        ratios = []
        step = on_policy.Updater.step

        def logged(self, mb, loss_fn):
            out = step(self, mb, loss_fn)
            ratios.append(out["ratio"])
            return out

        monkeypatch.setattr(on_policy.Updater, "step", logged)
        agent.checked_train(batch)
        monkeypatch.undo()
        assert agent._kept_forward is None  # nothing kept past the update
        return weights(agent), len(calls), {"ratios": ratios, "with_grad": calls}

    whole = algorithm(algo)("LMPolicy", copy_env(8), seed=1, bf16=True, **{**FAST, "group_size": 4})
    assert whole._first_step_takes_all(8)  # no batch_size / micro_batch_size: one micro-batch of all rows
    split = algorithm(algo)("LMPolicy", copy_env(8), seed=1, bf16=True, micro_batch_size=4, **{**FAST, "group_size": 4})
    assert not split._first_step_takes_all(8)  # two micro-batches: prepare's forward is not the first step's
    kept, kept_calls, kept_log = update(True)
    fresh, fresh_calls, fresh_log = update(False)
    epochs = FAST["n_epochs"]
    # prepare: reference + policy forward; then one forward per epoch, the first of them prepare's
    assert fresh_calls == 2 + epochs and kept_calls == 1 + epochs
    assert kept_log["with_grad"][:2] == [False, True]  # the reference without a graph, the policy's kept
    assert kept_log["ratios"][0] == 1.0  # the same tensor: old log-probs are the first step's, detached
    for a, b in zip(kept, fresh):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_decode_runs_the_model_in_bf16_and_the_callers_code_without_autocast() -> None:
    """``on_tokens`` steps the env, whose reward may run a model of its own: never under the policy's autocast."""
    from agents.common.decoding import decode
    from agents.common.policies import policy_for

    policy = policy_for("tiny-random", 49152)
    policy.set_training_mode(False)
    seen: list[tuple[bool, torch.dtype]] = []

    def on_tokens(_t, tokens):
        seen.append((torch.is_autocast_enabled("cpu"), (torch.ones(2, 2) @ torch.ones(2, 2)).dtype))
        return tokens

    ids, mask = torch.tensor([[5, 6, 7]]), torch.ones(1, 3, dtype=torch.long)
    layer = policy.decoder.layers[0].mlp.down_proj
    dtypes: list[torch.dtype] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: dtypes.append(out.dtype))
    decode(policy, ids, mask, 3, on_tokens, autocast=lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    handle.remove()
    assert seen == [(False, torch.float32)] * 3 and set(dtypes) == {torch.bfloat16}


def test_generate_runs_under_bf16_and_values_stay_float32() -> None:
    agent = TextGRPO("LMPolicy", copy_env(), seed=0, bf16=True, **FAST)
    texts = agent.generate(["Copy: abc"], max_new_tokens=4)
    assert len(texts) == 1 and isinstance(texts[0], str)
    assert agent.policy.value_of(torch.ones(2, agent.policy.value_head.in_features, dtype=torch.bfloat16)).dtype \
        == torch.float32  # fmt: skip


def test_readme_bf16_block_runs_as_written(tmp_path, monkeypatch) -> None:
    from tests.test_authoring import readme_block

    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme"}
    exec(compile(readme_block("bf16"), "README.md", "exec"), namespace)
    assert namespace["agent"].autocast() is not None  # bf16=True: autocast on


def test_fp32_attention_is_sdpa_exactly_outside_autocast_and_bf16_like_inside() -> None:
    """The CPU bf16 path's attention (fp32 inside autocast) keeps SDPA's masks: left padding included."""
    from agents.common.lm import fp32_attention
    from agents.common.policies import LMPolicy
    from agents.common.rollout import collect_episodes

    env = copy_env(8)
    policy = LMPolicy(env.single_observation_space, env.single_action_space, lambda _: 0.0, model="tiny-random",
                      action_mask=env.text_spec.action_mask)  # fmt: skip
    obs, _ = env.reset(seed=0)
    batch = collect_episodes(policy, env, obs, generator=torch.Generator().manual_seed(0))
    assert (batch.attention_mask[:, : batch.prompt_len] == 0).any()  # left padding: the mask matters
    mask = batch.gen_mask

    def logp(bf16: bool) -> torch.Tensor:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return policy.sequence_forward(batch.input_ids, batch.attention_mask, batch.prompt_len, with_values=False)[0]

    fp32, bf16 = logp(False), logp(True)
    assert fp32_attention(policy.lm) and policy.lm.config._attn_implementation != "sdpa"
    assert torch.equal(logp(False)[mask], fp32[mask])
    assert (logp(True) - fp32)[mask].abs().max() <= 2 * (bf16 - fp32)[mask].abs().max() + 1e-3
