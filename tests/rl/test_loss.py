"""Hand-worked checks of PPO's math (rankloop/rl/loss.py, rankloop/rl/kl.py)."""

import math

import pytest
import torch

from rankloop.rl.kl import AdaptiveKLController, FixedKLController, kl_estimate, kl_k1, kl_k2, kl_k3
from rankloop.ops import (entropy_from_logits, last_token_index, logprobs_from_logits, masked_mean, masked_var,
                          masked_whiten)
from rankloop.rl.loss import explained_variance, gae, kl_penalised_rewards, policy_loss, value_loss


def test_logprobs_match_log_softmax():
    logits = torch.tensor([[[0.0, math.log(3.0)], [1.0, 1.0]]])  # (1, 2, 2)
    tokens = torch.tensor([[1, 0]])
    lp = logprobs_from_logits(logits, tokens)
    # softmax([0, log 3]) = [1/4, 3/4]; softmax([1, 1]) = [1/2, 1/2]
    assert torch.allclose(lp, torch.tensor([[math.log(0.75), math.log(0.5)]]))
    ref = torch.log_softmax(logits, -1).gather(-1, tokens[..., None]).squeeze(-1)
    assert torch.allclose(lp, ref)


def test_entropy():
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [0.0, -1e9, -1e9, -1e9]]])
    h = entropy_from_logits(logits)
    assert torch.allclose(h, torch.tensor([[math.log(4.0), 0.0]]), atol=1e-6)


def test_kl_estimators_by_hand():
    logp = torch.tensor([math.log(0.5)])
    ref = torch.tensor([math.log(0.25)])
    # log r = log(0.25/0.5) = -log 2
    assert kl_k1(logp, ref).item() == pytest.approx(math.log(2))
    assert kl_k2(logp, ref).item() == pytest.approx(0.5 * math.log(2) ** 2)
    assert kl_k3(logp, ref).item() == pytest.approx((0.5 - 1) + math.log(2))
    # k3 is >= 0 per sample even where k1 is negative
    lp, rp = torch.randn(1000), torch.randn(1000)
    assert (kl_k3(lp, rp) >= 0).all() and (kl_k1(lp, rp) < 0).any()
    with pytest.raises(ValueError):
        kl_estimate(lp, rp, "k4")


def test_kl_estimators_unbiased_in_expectation():
    # q = policy, p = reference over 3 outcomes; exact KL(q||p) vs Monte-Carlo mean of k1 and k3.
    q = torch.tensor([0.6, 0.3, 0.1])
    p = torch.tensor([0.2, 0.5, 0.3])
    exact = float((q * (q / p).log()).sum())
    x = torch.multinomial(q, 200_000, replacement=True, generator=torch.Generator().manual_seed(0))
    lq, lp = q.log()[x], p.log()[x]
    assert float(kl_k1(lq, lp).mean()) == pytest.approx(exact, abs=0.01)
    assert float(kl_k3(lq, lp).mean()) == pytest.approx(exact, abs=0.01)


def test_every_kl_term_zero_when_policy_is_reference():
    logp = torch.randn(3, 5)
    for k in ("k1", "k2", "k3"):
        assert torch.equal(kl_estimate(logp, logp.clone(), k), torch.zeros(3, 5))
    mask = torch.ones(3, 5)
    rewards, kl = kl_penalised_rewards(torch.tensor([1.0, 2.0, 3.0]), logp, logp.clone(), mask, 0.5)
    assert torch.equal(kl, torch.zeros(3, 5))
    assert rewards[:, :-1].abs().sum() == 0 and torch.equal(rewards[:, -1], torch.tensor([1.0, 2.0, 3.0]))


def test_kl_penalised_rewards_score_on_last_token():
    logp = torch.tensor([[-1.0, -1.0, -1.0], [-1.0, -2.0, 0.0]])
    ref = torch.tensor([[-2.0, -1.0, -1.5], [-1.0, -1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    rewards, kl = kl_penalised_rewards(torch.tensor([10.0, 20.0]), logp, ref, mask, kl_coef=0.1)
    assert torch.allclose(kl, torch.tensor([[1.0, 0.0, 0.5], [0.0, -1.0, 0.0]]))
    assert torch.allclose(rewards, torch.tensor([[-0.1, 0.0, 10.0 - 0.05], [0.0, 20.0 + 0.1, 0.0]]))
    assert last_token_index(mask).tolist() == [2, 1]


def test_gae_by_hand():
    # One row, 3 tokens then padding; γ = 0.5, λ = 0.5.
    r = torch.tensor([[1.0, 0.0, 2.0, 9.0]])
    v = torch.tensor([[0.5, 1.0, 1.5, 9.0]])
    m = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    adv, ret = gae(r, v, m, gamma=0.5, lam=0.5)
    d2 = 2.0 - 1.5  # terminal: no bootstrap from the padding
    d1 = 0.0 + 0.5 * 1.5 - 1.0
    d0 = 1.0 + 0.5 * 1.0 - 0.5
    a2 = d2
    a1 = d1 + 0.25 * a2
    a0 = d0 + 0.25 * a1
    assert torch.allclose(adv, torch.tensor([[a0, a1, a2, 0.0]]))
    assert torch.allclose(ret, torch.tensor([[a0 + 0.5, a1 + 1.0, a2 + 1.5, 0.0]]))


def test_gae_gamma_lambda_one_is_reward_to_go_minus_value():
    r = torch.tensor([[0.0, 0.0, 3.0], [1.0, 1.0, 0.0]])
    v = torch.tensor([[1.0, 2.0, 0.5], [0.0, 0.0, 0.0]])
    m = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    adv, ret = gae(r, v, m, 1.0, 1.0)
    assert torch.allclose(ret, torch.tensor([[3.0, 3.0, 3.0], [2.0, 1.0, 0.0]]))
    assert torch.allclose(adv, ret - v * m)


def test_masked_statistics_and_whitening():
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, 4.0, -100.0]])
    m = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    assert masked_mean(x, m).item() == pytest.approx(2.5)
    assert masked_var(x, m).item() == pytest.approx(5.0 / 3.0)  # unbiased var of 1..4
    assert masked_var(x, m, unbiased=False).item() == pytest.approx(1.25)
    w = masked_whiten(x, m)
    assert masked_mean(w, m).item() == pytest.approx(0.0, abs=1e-6)
    assert masked_var(w, m).item() == pytest.approx(1.0, abs=1e-5)
    assert w[:, 2].abs().sum() == 0
    w2 = masked_whiten(x, m, shift_mean=False)
    assert masked_mean(w2, m).item() == pytest.approx(2.5, abs=1e-5)


def test_policy_loss_clipping_by_hand():
    old = torch.zeros(1, 4)
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.1, 1.5]]))  # ratios
    adv = torch.tensor([[1.0, -1.0, 2.0, -1.0]])
    m = torch.ones(1, 4)
    loss, clip_frac, akl = policy_loss(logp, old, adv, m, clip_range=0.2)
    # token 0: A>0, ρ=1.5 → clipped: -1.2; token 1: A<0, ρ=0.5 → clipped: 0.8;
    # token 2: within range: -2.2; token 3: A<0, ρ=1.5 → unclipped (pessimistic): 1.5
    assert loss.item() == pytest.approx((-1.2 + 0.8 - 2.2 + 1.5) / 4)
    assert clip_frac.item() == pytest.approx(0.5)
    rho = torch.tensor([1.5, 0.5, 1.1, 1.5])
    assert akl.item() == pytest.approx(float(((rho - 1) - rho.log()).mean()), rel=1e-5)


def test_policy_loss_gradient_is_minus_advantage_at_ratio_one():
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    adv = torch.tensor([[2.0, -3.0]])
    loss, clip_frac, akl = policy_loss(logp, logp.detach(), adv, torch.ones(1, 2))
    loss.backward()
    assert torch.allclose(logp.grad, -adv / 2)
    assert clip_frac.item() == 0 and akl.item() == 0


def test_value_loss_clipping_by_hand():
    old = torch.tensor([[0.0, 0.0]])
    v = torch.tensor([[1.0, 0.1]])
    ret = torch.tensor([[0.0, 1.0]])
    m = torch.ones(1, 2)
    loss, cf = value_loss(v, old, ret, m, clip_range_value=0.2)
    # token 0: unclipped (1-0)^2=1, clipped (0.2-0)^2=0.04 → max 1;  token 1: (0.1-1)^2=0.81 (within range)
    assert loss.item() == pytest.approx(0.5 * (1.0 + 0.81) / 2)
    assert cf.item() == 0.0
    loss2, cf2 = value_loss(torch.tensor([[-0.5, 0.0]]), old, torch.tensor([[0.5, 0.0]]), m, 0.2)
    # token 0: unclipped 1.0, clipped (-0.2-0.5)^2 = 0.49 → 1.0 (unclipped larger, no clip counted)
    assert loss2.item() == pytest.approx(0.5 * 1.0 / 2)
    loss3, cf3 = value_loss(torch.tensor([[1.0, 0.0]]), old, torch.tensor([[1.0, 0.0]]), m, 0.2)
    # token 0: unclipped 0, clipped (0.2-1)^2 = 0.64 → clipped branch is taken
    assert loss3.item() == pytest.approx(0.5 * 0.64 / 2) and cf3.item() == pytest.approx(0.5)


def test_num_tokens_makes_accumulation_exact():
    torch.manual_seed(0)
    logp = torch.randn(4, 6, requires_grad=True)
    old, adv = torch.randn(4, 6), torch.randn(4, 6)
    m = (torch.rand(4, 6) > 0.3).float()
    full, _, _ = policy_loss(logp, old, adv, m)
    n = m.sum()
    parts = [policy_loss(logp[i:i + 2], old[i:i + 2], adv[i:i + 2], m[i:i + 2], num_tokens=n)[0] for i in (0, 2)]
    assert (parts[0] + parts[1]).item() == pytest.approx(full.item(), rel=1e-6)


def test_explained_variance():
    ret = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    m = torch.ones(1, 4)
    assert explained_variance(ret, ret, m).item() == pytest.approx(1.0)
    assert explained_variance(torch.zeros(1, 4), ret, m).item() == pytest.approx(0.0)


def test_kl_controllers():
    fixed = FixedKLController(0.1)
    assert fixed.update(100.0, 64) == 0.1
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    # KL = 9 → error = clip(9/6 - 1) = 0.2 (capped) → β = 0.1 (1 + 0.2 · 64/10000)
    assert ctl.update(9.0, 64) == pytest.approx(0.1 * (1 + 0.2 * 64 / 10000))
    b = ctl.value
    # KL = 3 → error = -0.5 → -0.2
    assert ctl.update(3.0, 100) == pytest.approx(b * (1 - 0.2 * 100 / 10000))
    b = ctl.value
    assert ctl.update(6.6, 100) == pytest.approx(b * (1 + 0.1 * 100 / 10000))
    state = ctl.state_dict()
    again = AdaptiveKLController(1.0, 1.0, 1.0)
    again.load_state_dict(state)
    assert again.state_dict() == state


def test_whitening_one_response_token_does_not_raise():
    # batch_size 1 and a 1-token response (both allowed by PPOConfig): one entry, no spread to divide by.
    x = torch.tensor([[0.7, 5.0]])
    m = torch.tensor([[1.0, 0.0]])
    assert torch.equal(masked_whiten(x, m), torch.zeros(1, 2))  # Â − mean(Â) = 0: no signal, not NaN
    assert torch.equal(masked_whiten(x, m, shift_mean=False), torch.tensor([[0.7, 0.0]]))  # left as it is
    with pytest.raises(ValueError, match="at least 2"):
        masked_var(x, m)  # the unbiased variance itself stays undefined


def _reward_penalty_gradient(estimator: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact expectations over a 4-outcome policy π_θ = softmax(θ) against π_ref: the policy gradient of
    the penalty used as a reward, E_π[k(x) ∇ log π(x)] (what PPO follows: the penalty is a reward, no
    gradient flows through it), and the true ∇ KL(π_θ ‖ π_ref)."""
    theta = torch.tensor([0.3, -0.2, 1.1, 0.0], dtype=torch.float64, requires_grad=True)
    ref = torch.log_softmax(torch.tensor([0.0, 0.5, -0.4, 0.9], dtype=torch.float64), -1)
    logp = torch.log_softmax(theta, -1)
    k = kl_estimate(logp.detach(), ref, estimator)  # (4,) the per-sample penalty
    surrogate = (logp.exp().detach() * k * logp).sum()  # ∇ = E_π[k ∇ log π]
    pg, = torch.autograd.grad(surrogate, theta, retain_graph=True)
    kl = (logp.exp() * (logp - ref)).sum()
    true, = torch.autograd.grad(kl, theta)
    return pg, true


def test_only_k1_as_reward_penalty_follows_the_kl_gradient():
    # k1 is exact: E_π[(log π − log π_ref) ∇ log π] = ∇ KL (the score-function identity, E_π[∇ log π] = 0).
    pg, true = _reward_penalty_gradient("k1")
    assert torch.allclose(pg, true, atol=1e-12)
    # k2 and k3 are unbiased *values* of the KL (k3) or nearly so (k2), but as rewards their policy
    # gradient is not the KL's: here off by far more than rounding.
    for est in ("k2", "k3"):
        pg, true = _reward_penalty_gradient(est)
        assert (pg - true).norm() / true.norm() > 0.2, est


@pytest.mark.parametrize("est", ["k2", "k3"])
def test_ppo_config_refuses_biased_kl_penalty(est):
    from rankloop.rl.ppo import PPOConfig

    with pytest.raises(ValueError, match="kl_estimator.*k1"):
        PPOConfig(policy="p", output="o", kl_estimator=est)
    assert PPOConfig(policy="p", output="o").kl_estimator == "k1"
