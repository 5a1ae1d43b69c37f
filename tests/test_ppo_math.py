"""The PPO math of agents/ against hand-computed values (no model needed)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from agents.common.kl import AdaptiveKLController, FixedKLController, kl_estimate, make_kl_controller
from agents.common.losses import (
    at_last_token,
    clipped_policy_loss,
    clipped_value_loss,
    explained_variance,
    gae,
    masked_mean,
    masked_var,
    masked_whiten,
    token_rewards,
)
from agents.common.sampling import filter_logits, log_probs_and_entropy


def t(x: object) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


def test_gae_on_a_known_reward_sequence() -> None:
    rewards = t([[0.0, 0.0, 1.0], [0.0, 2.0, 9.0]])
    values = t([[0.5, 0.6, 0.7], [1.0, 1.0, 5.0]])
    mask = t([[1, 1, 1], [1, 1, 0]])
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.95)
    # row 0: deltas 0.1, 0.1, 0.3 -> A2 = 0.3, A1 = 0.1 + .95*.3, A0 = 0.1 + .95*A1
    a1 = 0.1 + 0.95 * 0.3
    expected = [[0.1 + 0.95 * a1, a1, 0.3], [0.95, 1.0, 0.0]]  # row 1: no bootstrap past its last token
    torch.testing.assert_close(adv, t(expected))
    torch.testing.assert_close(ret, t([[expected[0][0] + 0.5, a1 + 0.6, 1.0], [1.95, 2.0, 0.0]]))


def test_gae_with_discount() -> None:
    adv, _ = gae(t([[0.0, 0.0, 1.0]]), t([[0.5, 0.6, 0.7]]), t([[1, 1, 1]]), gamma=0.9, lam=0.5)
    a1 = (0.9 * 0.7 - 0.6) + 0.45 * 0.3
    torch.testing.assert_close(adv, t([[(0.9 * 0.6 - 0.5) + 0.45 * a1, a1, 0.3]]))


def test_gae_lambda_one_gives_monte_carlo_returns() -> None:
    rewards, values, mask = t([[0.1, -0.2, 1.0]]), t([[3.0, -1.0, 0.5]]), t([[1, 1, 1]])
    _, ret = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    torch.testing.assert_close(ret, t([[0.9, 0.8, 1.0]]))


def test_truncated_sequence_is_not_bootstrapped() -> None:
    # a sequence that hit max_new_tokens: its last value must not leak into the advantage
    adv, _ = gae(t([[0.0, 1.0]]), t([[0.0, 5.0]]), t([[1, 1]]), gamma=1.0, lam=1.0)
    torch.testing.assert_close(adv, t([[1.0, -4.0]]))


@pytest.mark.parametrize(
    ("ratio", "advantage", "expected", "grad_is_zero"),
    [
        (1.5, 1.0, -1.2, True),  # upper edge: clipped, no gradient
        (0.5, 1.0, -0.5, False),  # below the range with A > 0: unclipped
        (0.5, -1.0, 0.8, True),  # lower edge with A < 0: clipped, no gradient
        (1.5, -1.0, 1.5, False),  # above the range with A < 0: unclipped (pessimistic bound)
        (1.1, 1.0, -1.1, False),  # inside the range
    ],
)
def test_clipped_policy_loss_at_both_edges(ratio: float, advantage: float, expected: float, grad_is_zero: bool) -> None:
    logp = t([[math.log(ratio)]]).requires_grad_(True)
    out = clipped_policy_loss(logp, t([[0.0]]), t([[advantage]]), t([[1]]), clip_range=0.2)
    assert float(out.loss.detach()) == pytest.approx(expected)
    out.loss.backward()
    assert (float(logp.grad[0, 0]) == 0.0) is grad_is_zero
    assert float(out.clip_fraction) == (1.0 if abs(ratio - 1) > 0.2 else 0.0)


def test_policy_loss_ignores_padding_and_reports_approx_kl() -> None:
    logp, old = t([[math.log(1.5), 123.0]]), t([[0.0, 0.0]])
    out = clipped_policy_loss(logp, old, t([[1.0, 1.0]]), t([[1, 0]]), clip_range=0.2)
    assert float(out.loss) == pytest.approx(-1.2)
    assert float(out.approx_kl) == pytest.approx(0.5 - math.log(1.5))
    assert float(out.ratio_mean) == pytest.approx(1.5)


def test_clipped_value_loss() -> None:
    values, old, returns, mask = t([[2.0, 0.0]]), t([[1.0, 0.0]]), t([[3.0, 0.0]]), t([[1, 0]])
    # clipped value 1.2 -> (1.2-3)^2 = 3.24 > (2-3)^2 = 1: the pessimistic max is taken
    loss, frac = clipped_value_loss(values, old, returns, mask, 0.2)
    assert float(loss) == pytest.approx(0.5 * 3.24)
    assert float(frac) == 1.0
    loss, _ = clipped_value_loss(values, old, returns, mask, None)
    assert float(loss) == pytest.approx(0.5)


def test_kl_estimators_by_hand() -> None:
    logp, ref = t([-1.0]), t([-2.0])
    assert float(kl_estimate(logp, ref, "k1")) == pytest.approx(1.0)
    assert float(kl_estimate(logp, ref, "k2")) == pytest.approx(0.5)
    assert float(kl_estimate(logp, ref, "k3")) == pytest.approx(math.exp(-1.0))
    with pytest.raises(ValueError, match="k1.*k2.*k3.*'k4'"):
        kl_estimate(logp, ref, "k4")  # type: ignore[arg-type]


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_unbiased_kl_estimators_average_to_the_exact_kl(estimator: str) -> None:
    p = torch.softmax(t([0.3, -1.0, 2.0, 0.0]), 0)
    q = torch.softmax(t([1.0, 0.5, -0.5, 0.2]), 0)
    exact = float((p * (p.log() - q.log())).sum())
    expectation = float((p * kl_estimate(p.log(), q.log(), estimator)).sum())  # E_{x~p}[estimate(x)]
    assert expectation == pytest.approx(exact)
    assert float(torch.nn.functional.kl_div(q.log(), p, reduction="sum")) == pytest.approx(exact)


def test_kl_controllers() -> None:
    c = AdaptiveKLController(value=0.1, target=6.0, horizon=10_000)
    c.update(current_kl=12.0, n_steps=1000)  # error clipped to +0.2
    assert c.value == pytest.approx(0.1 * 1.02)
    c = AdaptiveKLController(value=0.1, target=6.0, horizon=10_000)
    c.update(current_kl=3.0, n_steps=1000)  # error -0.5 clipped to -0.2
    assert c.value == pytest.approx(0.1 * 0.98)
    fixed = make_kl_controller(0.05, None, 10)
    fixed.update(100.0, 10)
    assert isinstance(fixed, FixedKLController) and fixed.value == 0.05
    restored = AdaptiveKLController(1.0, 1.0, 1)
    restored.load_state_dict(c.state_dict())
    assert restored == c


def test_masked_mean_var_whiten_match_numpy() -> None:
    values = t([[1.0, 2.0, 3.0], [4.0, 100.0, float("nan")]])
    mask = t([[1, 1, 1], [1, 0, 0]])
    real = np.array([1.0, 2.0, 3.0, 4.0])
    assert float(masked_mean(values, mask)) == pytest.approx(real.mean())
    assert float(masked_var(values, mask)) == pytest.approx(real.var(ddof=1))
    white = masked_whiten(values, mask)
    expected = (real - real.mean()) / np.sqrt(real.var(ddof=1) + 1e-8)
    np.testing.assert_allclose(white[mask.bool()].numpy(), expected)
    assert white[1, 1] == 0 and white[1, 2] == 0  # padding zeroed, NaN never leaks
    kept = masked_whiten(values, mask, shift_mean=False)
    np.testing.assert_allclose(kept[mask.bool()].numpy(), expected + real.mean())


def test_reward_at_last_real_token_even_when_pad_equals_eos() -> None:
    mask = t([[1, 1, 0], [1, 0, 0], [0, 0, 0]])
    placed = at_last_token(t([1.0, 2.0, 3.0]), mask)
    torch.testing.assert_close(placed, t([[0, 1, 0], [2, 0, 0], [0, 0, 0]]))
    kl = t([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6], [1, 1, 1]])
    rewards = token_rewards(placed, kl, mask, kl_coef=0.5)
    torch.testing.assert_close(rewards, t([[-0.05, 0.9, 0], [1.8, 0, 0], [0, 0, 0]]))


def test_explained_variance() -> None:
    mask = t([[1, 1, 1, 0]])
    assert explained_variance(t([[1.0, 2.0, 3.0, 7.0]]), t([[1.0, 2.0, 3.0, 0.0]]), mask) == pytest.approx(1.0)
    assert explained_variance(t([[0.0, 0.0, 0.0, 0.0]]), t([[1.0, 2.0, 3.0, 0.0]]), mask) == pytest.approx(0.0)


def test_filters_temperature_top_k_top_p_and_keep() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    logp, _ = log_probs_and_entropy(filter_logits(logits, temperature=2.0), torch.tensor([0]))
    torch.testing.assert_close(logp, torch.log_softmax(logits / 2.0, -1)[:, 0])
    top2 = filter_logits(logits, top_k=2)
    assert torch.isinf(top2[0, 2:]).all() and torch.isfinite(top2[0, :2]).all()
    nucleus = filter_logits(logits, top_p=0.7)  # 0.5 < 0.7 keeps the 2nd token, 0.8 >= 0.7 drops the rest
    assert torch.isfinite(nucleus[0, :2]).all() and torch.isinf(nucleus[0, 2:]).all()
    kept = filter_logits(logits, top_k=1, keep=torch.tensor([3]))
    assert torch.isfinite(kept[0, [0, 3]]).all() and torch.isinf(kept[0, [1, 2]]).all()
    masked = filter_logits(logits, action_mask=torch.tensor([True, False, True, False]))
    probs = torch.softmax(masked, -1)
    torch.testing.assert_close(probs, torch.tensor([[0.5 / 0.65, 0.0, 0.15 / 0.65, 0.0]]))


def test_entropy_of_masked_distribution_has_finite_gradients() -> None:
    logits = torch.tensor([[1.0, 2.0, 3.0]], requires_grad=True)
    masked = filter_logits(logits, action_mask=torch.tensor([True, True, False]))
    logp, entropy = log_probs_and_entropy(masked, torch.tensor([0]))
    p = torch.softmax(torch.tensor([1.0, 2.0]), 0)
    assert float(entropy.detach()) == pytest.approx(float(-(p * p.log()).sum()))
    (entropy + logp).sum().backward()
    assert torch.isfinite(logits.grad).all() and logits.grad[0, 2] == 0


def _reference_logp_entropy(logits: torch.Tensor, actions: torch.Tensor, **filters: object) -> tuple:
    """The unfused formula: log-softmax of the filtered logits, the action's entry and -sum(p log p)."""
    logp_all = torch.log_softmax(filter_logits(logits, keep=actions, **filters), -1)
    p = logp_all.exp()
    return logp_all.gather(-1, actions[..., None])[..., 0], -(p * logp_all.masked_fill(p == 0, 0.0)).sum(-1)


@pytest.mark.parametrize(
    "filters",
    [{}, {"temperature": 0.7}, {"top_k": 5}, {"top_p": 0.6}, {"temperature": 1.3, "top_k": 9, "top_p": 0.9},
     {"action_mask": torch.arange(40) % 3 != 0}],
    ids=["none", "temperature", "top_k", "top_p", "all", "mask"],
)
@pytest.mark.parametrize("chunk_rows", [None, 4])
def test_fused_log_probs_and_entropy_match_the_unfused_formula_with_gradients(
    filters: dict, chunk_rows: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Values and both gradients equal log_softmax's, with every filter, in one chunk or in chunks of 4 rows
    (the last one partial: 3 x 5 = 15 rows)."""
    import agents.common.sampling as sampling

    vocab = 40
    if chunk_rows is not None:
        monkeypatch.setattr(sampling, "_CHUNK_ELEMENTS", chunk_rows * vocab)
    g = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(3, 5, vocab, generator=g, dtype=torch.float64)).requires_grad_()
    allowed = filters.get("action_mask", torch.ones(vocab, dtype=torch.bool)).nonzero()[:, 0]
    actions = allowed[torch.randint(len(allowed), (3, 5), generator=g)]
    w_logp, w_ent = torch.randn(3, 5, generator=g, dtype=torch.float64), torch.randn(3, 5, generator=g, dtype=torch.float64)
    results = []
    for fn in (log_probs_and_entropy, _reference_logp_entropy):
        logits.grad = None
        logp, entropy = fn(logits, actions, **filters)
        (w_logp * logp + w_ent * entropy).sum().backward()
        results.append((logp.detach(), entropy.detach(), logits.grad.clone()))
    (logp, entropy, grad), (ref_logp, ref_entropy, ref_grad) = results
    assert logp.dtype == torch.float64 and logp.shape == actions.shape
    torch.testing.assert_close(logp, ref_logp)
    torch.testing.assert_close(entropy, ref_entropy)
    torch.testing.assert_close(grad, ref_grad)
    small = logits[:1, :2].detach().requires_grad_()
    assert torch.autograd.gradcheck(lambda x: log_probs_and_entropy(x, actions[:1, :2], **filters), (small,))


def test_fused_log_probs_of_bf16_logits_are_float32_with_a_bf16_gradient() -> None:
    """bf16 logits (autocast's lm_head): the statistics in float32, the gradient back in the logits' dtype."""
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 50, generator=g).bfloat16().requires_grad_()
    actions = torch.randint(50, (2, 3), generator=g)
    logp, entropy = log_probs_and_entropy(logits, actions)
    ref_logp, ref_entropy = _reference_logp_entropy(logits.detach(), actions)
    assert logp.dtype == entropy.dtype == torch.float32
    torch.testing.assert_close(logp, ref_logp)
    torch.testing.assert_close(entropy, ref_entropy)
    (logp.sum() + entropy.sum()).backward()
    assert logits.grad.dtype == torch.bfloat16 and torch.isfinite(logits.grad.float()).all()
