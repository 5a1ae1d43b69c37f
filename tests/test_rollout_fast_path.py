"""The rollout's fast paths: the exponential-race sampler, host-side bookkeeping, the cached decode."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

import textgym  # noqa: F401
from agents import LMPolicy
from agents.common.lm import positions_from_mask, run_decoder, shared_prefix_forward
from agents.common.rollout import collect_episodes
from agents.common.sampling import log_probs_and_entropy, sample_tokens

pytestmark = pytest.mark.usefixtures("one_thread")


def test_sample_tokens_draws_from_the_filtered_distribution() -> None:
    logits = torch.tensor([2.0, 0.5, float("-inf"), -1.0, 1.0])
    rows = 200_000
    draws = sample_tokens(logits.expand(rows, -1), torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=5).double() / rows
    expected = torch.softmax(logits.double(), -1)
    assert freq[2] == 0  # a removed token is never drawn
    torch.testing.assert_close(freq, expected, atol=5e-3, rtol=0)


def test_sample_tokens_is_reproducible_and_deterministic_is_argmax() -> None:
    logits = torch.randn(6, 100, generator=torch.Generator().manual_seed(1))
    a = sample_tokens(logits, torch.Generator().manual_seed(7))
    b = sample_tokens(logits, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    assert torch.equal(sample_tokens(logits, None, deterministic=True), logits.argmax(-1))


@pytest.mark.parametrize("env_id", ["textgym/Copy-v0", "textgym/Translation-v0"])  # with and without action mask
def test_cached_rollout_log_probs_equal_a_full_forward_and_match_the_env(env_id: str) -> None:
    """The KV-cached decode (preallocated mask, positions counted per step) sees what one full forward sees."""
    env = gym.make_vec(env_id, num_envs=4, model="tiny-random", max_new_tokens=12)
    policy = LMPolicy(
        env.single_observation_space, env.single_action_space, lambda _: 1e-3, model="tiny-random",
        temperature=0.8, action_mask=env.setup.action_mask,
    )  # fmt: skip
    policy.set_training_mode(False)
    step_logits = []
    decode = policy.decode_step

    def recording(*args, **kwargs):
        logits, past, hidden = decode(*args, **kwargs)
        step_logits.append(logits)
        return logits, past, hidden

    policy.decode_step = recording
    obs, _ = env.reset(seed=5)
    batch = collect_episodes(policy, env, obs, generator=torch.Generator().manual_seed(0))
    P, mask = batch.prompt_len, batch.gen_mask
    tokens = batch.input_ids[:, P:]
    whole = [lg for lg in step_logits if lg.shape[0] == len(batch)]  # before the loop drops finished rows
    rollout_logp = torch.stack(
        [log_probs_and_entropy(policy.filtered_logits(lg), policy.to_choice(tokens[:, t]))[0]
         for t, lg in enumerate(whole)], dim=1,
    )  # fmt: skip
    with torch.no_grad():
        full_logp, _, full_values = policy.sequence_forward(batch.input_ids, batch.attention_mask, P)
    n = rollout_logp.shape[1]
    torch.testing.assert_close(rollout_logp[mask[:, :n]], full_logp[:, :n][mask[:, :n]], atol=1e-5, rtol=1e-5)
    # what the rollout recorded for the update: PPO's old log-probs and values, 0 past each end
    torch.testing.assert_close(batch.old_logp[mask], full_logp[mask], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batch.values[mask], full_values[mask], atol=1e-5, rtol=1e-5)
    assert not batch.old_logp[~mask].any() and not batch.values[~mask].any()
    assert not mask[:, len(step_logits) :].any()  # the loop stopped at the step where the last episode ended
    # the host-side bookkeeping agrees with what the env saw
    for i, info in enumerate(batch.infos):
        n_tok = int(batch.lengths[i])
        assert info["generated_tokens"] == n_tok
        assert bool(batch.ended_with_eos[i]) == (int(tokens[i, n_tok - 1]) == env.setup.eos_id)
        assert not batch.env_rewards[i, n_tok:].any()  # sparse reward: the score at the last real token
        np.testing.assert_allclose(float(batch.env_rewards[i, n_tok - 1]), info["metrics"]["reward"], rtol=1e-6)
    assert batch.input_ids.dtype == torch.long and batch.env_rewards.dtype == torch.float32


def _grouped_batch(policy: LMPolicy, group: int = 3) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Two left-padded prompts of different lengths, each followed by ``group`` different completions."""
    g = torch.Generator().manual_seed(3)
    P, T, vocab = 7, 5, policy.vocab_size
    prompts = [torch.randint(vocab, (5,), generator=g), torch.randint(vocab, (7,), generator=g)]
    ids = torch.zeros(2 * group, P + T, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row in range(2 * group):
        prompt = prompts[row // group]
        ids[row, P - len(prompt) : P] = prompt
        mask[row, P - len(prompt) : P] = 1
        length = 2 + row % 3  # completions of different lengths: mask 0 after each end
        ids[row, P : P + length] = torch.randint(vocab, (length,), generator=g)
        mask[row, P : P + length] = 1
    return ids, mask, P


def test_shared_prompt_forward_equals_the_plain_forward_with_gradients() -> None:
    """Encoding each prompt once for its completions gives the same hidden states and gradients."""
    env = gym.make_vec("textgym/Copy-v0", num_envs=1, model="tiny-random")
    policy = LMPolicy(env.single_observation_space, env.single_action_space, lambda _: 1e-3, model="tiny-random")
    ids, mask, P = _grouped_batch(policy)
    policy.set_training_mode(True)
    decoder = policy.decoder
    weights = torch.randn(ids.shape[0], ids.shape[1] - P, decoder.config.hidden_size, generator=torch.Generator().manual_seed(4))
    rows_seen: list[int] = []
    decoder.register_forward_pre_hook(lambda _m, _a, kw: rows_seen.append(kw["input_ids"].shape), with_kwargs=True)
    results = []
    for shared in (True, False):
        decoder.zero_grad(set_to_none=True)
        if shared:
            hidden, _ = shared_prefix_forward(decoder, ids, mask, P)
        else:
            hidden, _ = run_decoder(decoder, ids, mask, positions_from_mask(mask))
        gen = hidden[:, P - 1 : -1]
        (gen * weights * mask[:, P:, None]).sum().backward()
        results.append((gen.detach(), {n: p.grad.clone() for n, p in decoder.named_parameters() if p.grad is not None}))
    # shared: the 2 prompts once, then the 6 completions on their cache; plain: 6 full rows
    assert rows_seen == [(2, P), (6, ids.shape[1] - P), (6, ids.shape[1])]
    (h_shared, g_shared), (h_plain, g_plain) = results
    real = mask[:, P:].bool()
    torch.testing.assert_close(h_shared[real], h_plain[real], atol=1e-5, rtol=1e-4)
    assert g_shared.keys() == g_plain.keys() and g_plain
    for name in g_plain:
        # float32 sums in another order: errors scale with the tensor's largest entry, not each entry's own
        scale = float(g_plain[name].abs().max())
        torch.testing.assert_close(g_shared[name], g_plain[name], atol=1e-5 + 1e-6 * scale, rtol=1e-4, msg=name)


def test_sequence_forward_and_prefill_with_shared_prompts_equal_one_row_at_a_time() -> None:
    env = gym.make_vec("textgym/Copy-v0", num_envs=1, model="tiny-random")
    policy = LMPolicy(env.single_observation_space, env.single_action_space, lambda _: 1e-3, model="tiny-random",
                      temperature=0.7, top_k=20)  # fmt: skip
    policy.set_training_mode(False)
    ids, mask, P = _grouped_batch(policy)
    with torch.no_grad():
        logp, entropy, values = policy.sequence_forward(ids, mask, P)
        logits, _, hidden = policy.decode_step(ids[:, :P], mask[:, :P], positions_from_mask(mask[:, :P]))
        for row in range(ids.shape[0]):
            one = slice(row, row + 1)
            lp, ent, val = policy.sequence_forward(ids[one], mask[one], P)
            real = mask[row, P:].bool()
            torch.testing.assert_close(logp[row][real], lp[0][real], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(entropy[row][real], ent[0][real], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(values[row][real], val[0][real], atol=1e-5, rtol=1e-5)
            lg, _, hd = policy.decode_step(ids[one, :P], mask[one, :P], positions_from_mask(mask[one, :P]))
            torch.testing.assert_close(logits[row], lg[0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(hidden[row], hd[0], atol=1e-5, rtol=1e-5)


def test_dropping_finished_rows_changes_no_token_and_no_log_prob() -> None:
    """decode() stops computing rows that ended: greedy tokens and recorded log-probs are those of the full batch."""
    from agents.common.decoding import Feed, decode

    env = gym.make_vec("textgym/Copy-v0", num_envs=8, model="tiny-random")
    policy = LMPolicy(env.single_observation_space, env.single_action_space, lambda _: 1e-3, model="tiny-random",
                      action_mask=env.setup.action_mask)  # fmt: skip
    policy.set_training_mode(False)
    obs, _ = env.reset(seed=3)
    ids, mask = torch.as_tensor(obs["input_ids"][:, :16]), torch.as_tensor(obs["attention_mask"][:, :16])
    eos, runs = env.text_spec.eos_id, {}
    for prune in (False, True):
        done, out, widths = np.zeros(8, bool), [[] for _ in range(8)], []
        decode_step = policy.decode_step

        def width(*args, widths=widths, decode_step=decode_step, **kwargs):
            widths.append(args[0].shape[0])
            return decode_step(*args, **kwargs)

        policy.decode_step = width

        def on_tokens(t, tokens, done=done, out=out, prune=prune):
            for i in np.flatnonzero(~done):
                out[i].append(int(tokens[i]))
            done |= (tokens == eos) | (t >= 2 + np.arange(8))  # rows end one after another
            return None if done.all() else (Feed(tokens, finished=done.copy()) if prune else tokens)

        decoded = decode(policy, ids, mask, 12, on_tokens, deterministic=True, record=True)
        del policy.decode_step
        runs[prune] = (out, decoded.logp, widths)
    (out_a, logp_a, widths_a), (out_b, logp_b, widths_b) = runs[False], runs[True]
    assert out_a == out_b
    live = torch.zeros_like(logp_a, dtype=torch.bool)
    for i, row in enumerate(out_a):
        live[i, : len(row)] = True
    torch.testing.assert_close(logp_a[live], logp_b[live], atol=1e-5, rtol=1e-5)
    assert set(widths_a) == {8} and min(widths_b) < 8  # the pruned loop ran smaller batches


def test_a_reserved_cache_holds_what_a_growing_one_holds_through_updates_growth_and_row_drops() -> None:
    """reserve_cache: in-place writes into room left (doubling when full) give the keys and values torch.cat does."""
    from transformers import DynamicCache

    from agents.common.lm import reserve_cache

    g = torch.Generator().manual_seed(0)

    def kv(cols: int, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(rows, 3, cols, 8, generator=g), torch.randn(rows, 3, cols, 8, generator=g)

    plain, reserved = DynamicCache(), DynamicCache()
    # a prefill, tokens, rows 1 dropped after step 4, a multi-column chunk
    steps = [kv(5, 4), *(kv(1, 4) for _ in range(4)), kv(3, 3), kv(1, 3)]
    for i, (k, v) in enumerate(steps):
        for layer in range(2):
            want = plain.update(k, v, layer)
            got = reserved.update(k, v, layer)
            assert all(torch.equal(a, b) for a, b in zip(want, got))
        if i == 0:
            reserve_cache(reserved, 2)  # room for 2 columns: the later updates outgrow it
            assert type(reserved.layers[0]).__name__ == "ReservedLayer"
        if i == 4:
            plain.batch_select_indices(torch.tensor([0, 2, 3]))
            reserved.batch_select_indices(torch.tensor([0, 2, 3]))
    assert reserved.get_seq_length() == plain.get_seq_length() == 5 + 4 + 3 + 1
    for a, b in zip(plain.layers, reserved.layers):
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)


def test_the_rollout_with_the_reserved_cache_is_the_rollout_with_a_growing_one_bit_for_bit(monkeypatch) -> None:
    """Sampled tokens, log-probs and values of a rollout (rows dropped as they end) are identical either way."""
    env = gym.make_vec("textgym/Translation-v0", num_envs=4, model="tiny-random", max_new_tokens=12)
    runs = []
    for reserve in (True, False):
        if not reserve:
            monkeypatch.setattr(LMPolicy, "reserve_decode_room", lambda self, past, columns: past)
        policy = LMPolicy(env.single_observation_space, env.single_action_space, lambda _: 1e-3, model="tiny-random")
        policy.set_training_mode(False)
        obs, _ = env.reset(seed=1)
        runs.append(collect_episodes(policy, env, obs, generator=torch.Generator().manual_seed(5)))
    a, b = runs
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.old_logp, b.old_logp)
    assert torch.equal(a.values, b.values) and a.gen_mask.sum() > 4
