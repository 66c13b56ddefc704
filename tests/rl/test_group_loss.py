"""The critic-free learners' math, with hand-worked values: advantages (RLOO, GRPO, Dr. GRPO,
REINFORCE++), the KL in the reward or in the loss (k3 vs k2 against the exact gradients on a small
categorical), the loss aggregations and the clipped ratio."""

import math

import pytest
import torch

from rankloop.rl.group_loss import (aggregation_weights, batch_advantages, group_advantages, group_policy_loss,
                                    kl_loss_term, rloo_advantages, sequence_kl_penalised)


# ---------------------------------------------------------------- advantages


def test_a_group_of_equal_rewards_gives_zero_advantage():
    r = torch.tensor([0.7, 0.7, 0.7, 0.7, -2.0, -2.0, -2.0, -2.0])
    assert torch.equal(rloo_advantages(r, 4), torch.zeros(8))
    assert torch.equal(group_advantages(r, 4), torch.zeros(8))
    assert torch.equal(group_advantages(r, 4, scale_std=False), torch.zeros(8))
    assert torch.equal(batch_advantages(torch.full((6,), 3.0)), torch.zeros(6))


def test_rloo_baseline_is_the_mean_of_the_others():
    r = torch.tensor([1.0, 2.0, 3.0, 6.0])
    # Â_0 = 1 − (2 + 3 + 6)/3,  Â_3 = 6 − (1 + 2 + 3)/3
    assert torch.allclose(rloo_advantages(r, 4), torch.tensor([1 - 11 / 3, 2 - 10 / 3, 3 - 3.0, 6 - 2.0]))
    # the baseline of response i (r_i − Â_i) does not move when r_i does: it excludes the sample itself
    r2 = r.clone()
    r2[0] = 100.0
    b, b2 = r - rloo_advantages(r, 4), r2 - rloo_advantages(r2, 4)
    assert float(b[0]) == pytest.approx(float(b2[0]), abs=1e-5) and not torch.allclose(b[1:], b2[1:])
    # = K/(K−1) (r − mean)
    assert torch.allclose(rloo_advantages(r, 4), 4 / 3 * (r - r.mean()))


def test_group_advantages_with_and_without_the_std():
    r = torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0, 3.0])  # two groups of K = 3
    s1 = math.sqrt(1 / 3)  # Bessel-corrected std of (0, 0, 1)
    s2 = math.sqrt(4 / 3)  # of (1, 1, 3)
    want = torch.tensor([-1 / 3 / s1, -1 / 3 / s1, 2 / 3 / s1, -2 / 3 / s2, -2 / 3 / s2, 4 / 3 / s2])
    assert torch.allclose(group_advantages(r, 3, eps=0.0), want)
    assert torch.allclose(group_advantages(r, 3, scale_std=False),  # Dr. GRPO: the centred rewards
                          torch.tensor([-1 / 3, -1 / 3, 2 / 3, -2 / 3, -2 / 3, 4 / 3]))
    # the std division gives a near-unanimous group as much weight as a split one (Dr. GRPO's point)
    near = group_advantages(torch.tensor([0.0, 0.0, 0.0, 0.01]), 4, eps=0.0)
    split = group_advantages(torch.tensor([0.0, 0.0, 0.0, 1.0]), 4, eps=0.0)
    assert torch.allclose(near, split)


def test_batch_advantages_are_whitened_over_the_batch():
    a = batch_advantages(torch.tensor([1.0, 2.0, 3.0, 10.0]))
    assert abs(float(a.mean())) < 1e-6 and abs(float(a.std()) - 1) < 1e-6


def test_bad_groups():
    with pytest.raises(ValueError, match="K ≥ 2"):
        rloo_advantages(torch.ones(4), 1)
    with pytest.raises(ValueError, match="not whole groups"):
        group_advantages(torch.ones(5), 2)


# ---------------------------------------------------------------- the KL in the reward, in the loss


def test_sequence_kl_in_the_reward_hand_worked():
    scores = torch.tensor([1.0, 0.0])
    logp = torch.tensor([[-1.0, -2.0, -9.0], [-0.5, -0.5, -0.5]])
    ref = torch.tensor([[-1.5, -2.0, -1.0], [-0.5, -0.5, -0.5]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])  # the padding's huge "KL" is masked out
    R, kl = sequence_kl_penalised(scores, logp, ref, mask, kl_coef=0.5, estimator="k1")
    assert torch.allclose(kl, torch.tensor([0.5, 0.0])) and torch.allclose(R, torch.tensor([0.75, 0.0]))


def test_kl_exactly_zero_when_policy_is_reference():
    logp = torch.log_softmax(torch.randn(3, 5, 7), -1)[..., 0].requires_grad_(True)
    for est in ("k3", "k2"):
        k = kl_loss_term(logp, logp.detach().clone(), est)
        assert torch.equal(k, torch.zeros_like(k))
        (g,) = torch.autograd.grad(k.sum(), logp)
        assert torch.equal(g, torch.zeros_like(g))  # nor does it pull anywhere


def _exact_and_estimated_grads(estimator):
    """On π_θ = softmax(θ) over 5 outcomes: E_{x~π}[∇_θ k(x)] enumerated exactly (the sample's
    probability held fixed, as in a sampled loss), and the exact ∇ of both KL directions."""
    torch.manual_seed(0)
    theta = torch.randn(5, dtype=torch.float64, requires_grad=True)
    ref_logp = torch.log_softmax(torch.randn(5, dtype=torch.float64), 0)
    logp = torch.log_softmax(theta, 0)
    expected = (logp.exp().detach() * kl_loss_term(logp, ref_logp, estimator)).sum()
    (g_est,) = torch.autograd.grad(expected, theta, retain_graph=True)
    p, q = logp.exp(), ref_logp.exp()
    (g_fwd,) = torch.autograd.grad((p * (logp - ref_logp)).sum(), theta, retain_graph=True)  # KL(π‖π_ref)
    (g_rev,) = torch.autograd.grad((q * (ref_logp - logp)).sum(), theta)  # KL(π_ref‖π)
    return g_est, g_fwd, g_rev


def test_k3_in_the_loss_follows_the_gradient_of_kl_ref_to_policy():
    g, g_fwd, g_rev = _exact_and_estimated_grads("k3")
    assert torch.allclose(g, g_rev, atol=1e-12)
    assert not torch.allclose(g, g_fwd, atol=1e-3)  # not the KL the RLHF objective penalises


def test_k2_in_the_loss_follows_the_gradient_of_kl_policy_to_ref():
    g, g_fwd, g_rev = _exact_and_estimated_grads("k2")
    assert torch.allclose(g, g_fwd, atol=1e-12)
    assert not torch.allclose(g, g_rev, atol=1e-3)


# ---------------------------------------------------------------- aggregation and the clipped loss


def test_aggregation_weights_hand_worked():
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    assert torch.allclose(aggregation_weights(mask, "token"), mask / 4)
    assert torch.allclose(aggregation_weights(mask, "sequence"),
                          torch.tensor([[1 / 6, 1 / 6, 1 / 6, 0], [1 / 2, 0, 0, 0]]))
    assert torch.allclose(aggregation_weights(mask, "constant", max_len=4), mask / 8)
    with pytest.raises(ValueError, match="max_len"):
        aggregation_weights(mask, "constant")
    # a loss of 1 per token: token/sequence means are 1; the constant one is shorter responses' share
    ones = torch.ones(2, 4)
    assert float((aggregation_weights(mask, "token") * ones).sum()) == 1.0
    assert float((aggregation_weights(mask, "sequence") * ones).sum()) == 1.0
    assert float((aggregation_weights(mask, "constant", 4) * ones).sum()) == 0.5


def test_loss_of_micro_batches_adds_up_to_the_minibatch_loss():
    torch.manual_seed(1)
    logp = torch.randn(6, 5).requires_grad_(True)
    old, ref, adv = logp.detach() + 0.1 * torch.randn(6, 5), torch.randn(6, 5), torch.randn(6)
    mask = (torch.rand(6, 5) > 0.3).float()
    mask[:, 0] = 1
    for mode in ("token", "sequence", "constant"):
        w = aggregation_weights(mask, mode, max_len=5)
        whole = group_policy_loss(logp, old, ref, adv, w, 0.2, kl_coef=0.1).loss
        parts = sum(group_policy_loss(logp[s], old[s], ref[s], adv[s], w[s], 0.2, kl_coef=0.1).loss
                    for s in (slice(0, 2), slice(2, 3), slice(3, 6)))
        assert torch.allclose(whole, parts, atol=1e-6), mode


def test_group_loss_is_reinforce_at_ratio_one_and_clips_beyond():
    logp = torch.tensor([[-1.0, -2.0], [-1.0, -1.0]], requires_grad=True)
    mask = torch.ones(2, 2)
    w = aggregation_weights(mask, "token")
    adv = torch.tensor([1.0, -2.0])
    out = group_policy_loss(logp, logp.detach(), logp.detach(), adv, w, clip_range=0.2, kl_coef=0.5)
    # ρ = 1: L = −Σ w Â = −(2·1 + 2·(−2))/4; the KL term is 0; nothing is clipped
    assert float(out.loss) == pytest.approx(0.5) and float(out.kl) == 0.0 and float(out.clip_frac) == 0.0
    (g,) = torch.autograd.grad(out.loss, logp)
    assert torch.allclose(g, torch.tensor([[-0.25, -0.25], [0.5, 0.5]]))  # −w Â ∂ρ/∂logp
    # ρ = e^0.5 > 1 + ε with Â > 0: the clipped term is the max, so no gradient flows
    high = group_policy_loss(logp, logp.detach() - 0.5, logp.detach(), torch.tensor([1.0, 1.0]), w, 0.2)
    (g,) = torch.autograd.grad(high.loss, logp)
    assert torch.equal(g, torch.zeros_like(g)) and float(high.clip_frac) == 1.0
