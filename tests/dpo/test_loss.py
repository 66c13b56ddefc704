"""The DPO losses: hand-worked values and the invariants their docstrings state."""

import math

import pytest
import torch
import torch.nn.functional as F

from rankloop.dpo.loss import (best_worst_means, dpo_loss, ipo_loss, plackett_luce_dpo_loss, preference_loss,
                               sequence_logps, token_logps)
from rankloop.reward.loss import bradley_terry_loss, plackett_luce_loss

# Two rankings: K = 4 with a tie (ranks 0, 1, 1, 2: 5 pairs) and K = 3 with one padded slot.
RANKS = torch.tensor([[0, 1, 1, 2], [0, 1, 2, 0]])
MASK = torch.tensor([[True] * 4, [True, True, True, False]])


def test_equal_implicit_rewards_give_log2_per_pair():
    logp = torch.tensor([[-5.0, -7.0, -2.0, -9.0], [-1.0, -3.0, -4.0, 0.0]])
    ref = logp + 0.0  # log π_θ = log π_ref: every implicit reward is 0
    for smoothing in (0.0, 0.2):
        assert dpo_loss(logp, ref, RANKS, MASK, beta=0.1, label_smoothing=smoothing).tolist() == pytest.approx(
            [math.log(2)] * 2)
    # Equal (not zero) rewards: h = β·c for every candidate.
    assert dpo_loss(logp + 3.0, ref, RANKS, MASK, beta=0.5).tolist() == pytest.approx([math.log(2)] * 2)


def test_pairwise_dpo_by_hand():
    logp, ref, beta = torch.tensor([[-1.0, -2.0, -4.0]]), torch.tensor([[-2.0, -1.0, -3.0]]), 0.5
    ranks, mask = torch.tensor([[0, 1, 2]]), torch.ones(1, 3, dtype=torch.bool)
    h = [beta * (a - b) for a, b in zip([-1.0, -2.0, -4.0], [-2.0, -1.0, -3.0])]  # 0.5, −0.5, −0.5
    pairs = [(0, 1), (0, 2), (1, 2)]
    want = sum(-math.log(1 / (1 + math.exp(-(h[w] - h[l] - 0.3)))) for w, l in pairs) / 3
    assert dpo_loss(logp, ref, ranks, mask, beta, margin=torch.tensor([0.3])).item() == pytest.approx(want)
    eps = 0.1  # conservative DPO: each label flipped with probability ε
    ls = lambda d: -(1 - eps) * math.log(1 / (1 + math.exp(-d))) - eps * math.log(1 / (1 + math.exp(d)))
    want = sum(ls(h[w] - h[l]) for w, l in pairs) / 3
    assert dpo_loss(logp, ref, ranks, mask, beta, label_smoothing=eps).item() == pytest.approx(want)


def test_k2_listwise_equals_pairwise():
    torch.manual_seed(0)
    logp, ref = torch.randn(6, 2) * 3, torch.randn(6, 2) * 3
    ranks, mask = torch.tensor([[0, 1], [1, 0]] * 3), torch.ones(6, 2, dtype=torch.bool)
    pl = plackett_luce_dpo_loss(logp, ref, ranks, mask, beta=0.3)
    assert torch.allclose(pl, dpo_loss(logp, ref, ranks, mask, beta=0.3), atol=1e-6)
    h = 0.3 * (logp - ref)
    w = torch.where(ranks[:, 0] == 0, h[:, 0], h[:, 1])
    lo = torch.where(ranks[:, 0] == 0, h[:, 1], h[:, 0])
    assert torch.allclose(pl, -F.logsigmoid(w - lo), atol=1e-6)


def test_listwise_is_the_plackett_luce_likelihood_of_the_implicit_rewards():
    logp, ref = torch.tensor([[-1.0, -3.0, -2.0]]), torch.tensor([[-2.0, -2.0, -2.0]])
    ranks, mask = torch.tensor([[0, 1, 2]]), torch.ones(1, 3, dtype=torch.bool)
    h = [0.5 * (a - b) for a, b in zip([-1.0, -3.0, -2.0], [-2.0] * 3)]
    # DPO App. A.3: − Σ_k [h_k − log Σ_{j ≥ k} exp h_j] over the K − 1 choices, here / (K − 1).
    want = -((h[0] - math.log(sum(math.exp(x) for x in h))) + (h[1] - math.log(math.exp(h[1]) + math.exp(h[2])))) / 2
    assert plackett_luce_dpo_loss(logp, ref, ranks, mask, 0.5).item() == pytest.approx(want)
    # Ties handled as the reward loss handles them.
    logp4 = torch.randn(2, 4)
    assert torch.equal(plackett_luce_dpo_loss(logp4, torch.zeros(2, 4), RANKS, MASK, 0.2),
                       plackett_luce_loss(0.2 * (logp4 - 0), RANKS, MASK))


@pytest.mark.parametrize("kind", ["dpo", "pl", "ipo"])
def test_whole_list_tie_gives_no_loss_and_no_gradient(kind):
    logp = torch.tensor([[-3.0, -1.0, -2.0]], requires_grad=True)
    ranks, mask = torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 3, dtype=torch.bool)
    loss = preference_loss(kind, logp, torch.zeros(1, 3), ranks, mask, beta=0.1)
    loss.sum().backward()
    assert loss.item() == 0.0 and torch.count_nonzero(logp.grad) == 0


def test_ipo_by_hand():
    logp, ref, beta = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.5, -1.0]]), 0.25
    d = (-1.0 + 1.5) - (-2.0 + 1.0)  # the log-ratio gap, 1.5
    want = (d - 1 / (2 * beta)) ** 2
    assert ipo_loss(logp, ref, torch.tensor([[0, 1]]), torch.ones(1, 2, dtype=torch.bool), beta).item() == pytest.approx(want)
    # Equal log-ratios: every pair costs (1 / 2τ)².
    assert ipo_loss(torch.zeros(2, 4), torch.zeros(2, 4), RANKS, MASK, beta).tolist() == pytest.approx([4.0, 4.0])


def test_padding_slots_are_ignored_even_when_nan():
    logp = torch.tensor([[-1.0, -2.0, -3.0, float("nan")]], requires_grad=True)
    ranks, mask = torch.tensor([[0, 1, 2, 0]]), torch.tensor([[True, True, True, False]])
    for kind in ("dpo", "pl", "ipo"):
        loss = preference_loss(kind, logp, torch.zeros(1, 4), ranks, mask, beta=0.1)
        loss.sum().backward()
        assert torch.isfinite(loss).all() and torch.isfinite(logp.grad).all(), kind
        full = preference_loss(kind, logp[:, :3].detach(), torch.zeros(1, 3), ranks[:, :3], mask[:, :3], beta=0.1)
        assert loss.item() == pytest.approx(full.item()), kind
        logp.grad = None


def test_dpo_is_the_reward_models_bradley_terry_on_implicit_rewards():
    torch.manual_seed(1)
    logp, ref = torch.randn(2, 4), torch.randn(2, 4)
    assert torch.equal(dpo_loss(logp, ref, RANKS, MASK, 0.1), bradley_terry_loss(0.1 * (logp - ref), RANKS, MASK))
    with pytest.raises(ValueError, match="unknown DPO loss"):
        preference_loss("kto", logp, ref, RANKS, MASK, 0.1)


def test_token_and_sequence_logps():
    torch.manual_seed(2)
    logits, targets = torch.randn(5, 7), torch.tensor([1, 0, 6, 3, 3])
    want = torch.log_softmax(logits, -1).gather(-1, targets[:, None]).squeeze(-1)
    assert torch.allclose(token_logps(logits, targets), want, atol=1e-6)
    seq = sequence_logps(want, torch.tensor([0, 0, 2, 2, 2]), 3)
    assert torch.allclose(seq, torch.stack([want[:2].sum(), torch.tensor(0.0), want[2:].sum()]))


def test_best_worst_means():
    v = torch.tensor([[1.0, 2.0, 4.0, 8.0], [3.0, 5.0, 7.0, 100.0]])
    best, worst = best_worst_means(v, RANKS, MASK)
    assert best.item() == 1.0 + 3.0 and worst.item() == 8.0 + 7.0
