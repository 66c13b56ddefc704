"""Math tests for the ranking losses, with hand-worked expected values."""

import math
from itertools import combinations

import pytest
import torch

from rankloop.reward.loss import bradley_terry_loss, pair_mask, pair_metrics, plackett_luce_loss, ranking_loss


def t(x, dtype=torch.float64):
    return torch.tensor(x, dtype=dtype)


def full(k):
    return torch.ones((1, k), dtype=torch.bool)


def test_equal_scores_give_log2():
    scores = t([[0.7, 0.7]])
    ranks = torch.tensor([[0, 1]])
    assert bradley_terry_loss(scores, ranks, full(2)).item() == pytest.approx(math.log(2))
    assert plackett_luce_loss(scores, ranks, full(2)).item() == pytest.approx(math.log(2))


def test_equal_scores_any_k_give_log2_for_bt():
    for k in (3, 4, 9):
        scores = torch.zeros((1, k), dtype=torch.float64)
        assert bradley_terry_loss(scores, torch.arange(k)[None], full(k)).item() == pytest.approx(math.log(2))


@pytest.mark.parametrize("k", [2, 3, 4, 7, 9])
def test_k_candidates_make_k_choose_2_pairs(k):
    assert pair_mask(torch.arange(k)[None], full(k)).sum().item() == k * (k - 1) // 2


def test_bt_hand_worked_k3():
    # r = (2, 1, 0) ranked best→worst: pairs (2−1), (2−0), (1−0) → differences 1, 2, 1.
    scores = t([[2.0, 1.0, 0.0]])
    want = (2 * -math.log(1 / (1 + math.exp(-1))) + -math.log(1 / (1 + math.exp(-2)))) / 3
    assert bradley_terry_loss(scores, torch.tensor([[0, 1, 2]]), full(3)).item() == pytest.approx(want)


def test_bt_margin_shifts_every_pair():
    scores = t([[1.0, 0.0]])
    got = bradley_terry_loss(scores, torch.tensor([[0, 1]]), full(2), margin=t([1.0])).item()
    assert got == pytest.approx(math.log(2))  # σ(1 − 0 − 1) = ½


def test_ties_make_no_pair_and_whole_list_tie_gives_zero_without_nan():
    # c0 > c1 = c2 > c3: C(4,2) − C(2,2) = 5 pairs.
    assert pair_mask(torch.tensor([[0, 1, 1, 2]]), full(4)).sum().item() == 5
    scores = t([[0.3, -1.2, 2.0]]).requires_grad_()
    ranks = torch.zeros((1, 3), dtype=torch.long)
    for fn in (bradley_terry_loss, plackett_luce_loss):
        loss = fn(scores, ranks, full(3))
        assert loss.item() == 0.0
        (g,) = torch.autograd.grad(loss.sum(), scores)
        assert torch.isfinite(g).all() and (g == 0).all()


def test_tied_pair_scores_do_not_matter_to_bt():
    ranks = torch.tensor([[0, 1, 1]])
    a = bradley_terry_loss(t([[3.0, 0.0, 1.0]]), ranks, full(3))
    b = bradley_terry_loss(t([[3.0, 1.0, 0.0]]), ranks, full(3))
    assert a.item() == pytest.approx(b.item())


def test_padding_is_ignored_even_with_inf_garbage():
    scores = t([[1.0, 0.0, float("inf")], [0.5, -0.5, float("nan")]]).requires_grad_()
    ranks = torch.tensor([[0, 1, 0], [1, 0, 2]])
    mask = torch.tensor([[True, True, False], [True, True, False]])
    for fn in (bradley_terry_loss, plackett_luce_loss):
        loss = fn(scores, ranks, mask)
        want = torch.stack([fn(scores[:1, :2], ranks[:1, :2], full(2))[0], fn(scores[1:, :2], ranks[1:, :2], full(2))[0]])
        assert torch.allclose(loss, want)
        (g,) = torch.autograd.grad(loss.sum(), scores)
        assert torch.isfinite(g[:, :2]).all() and (g[:, 2] == 0).all()


def test_bt_equals_mean_of_expanded_pairs():
    torch.manual_seed(0)
    scores = torch.randn(1, 6, dtype=torch.float64)
    ranks = torch.tensor([[0, 1, 1, 2, 3, 3]])
    pairs = [(i, j) for i, j in combinations(range(6), 2) if ranks[0, i] < ranks[0, j]]
    want = sum(-torch.nn.functional.logsigmoid(scores[0, i] - scores[0, j]) for i, j in pairs) / len(pairs)
    assert bradley_terry_loss(scores, ranks, full(6)).item() == pytest.approx(want.item())


def test_pl_hand_worked_k3_and_reduces_to_bt_for_k2():
    s = [2.0, 1.0, 0.0]
    e = [math.exp(x) for x in s]
    # −log P = −[s0 − log(e0+e1+e2)] − [s1 − log(e1+e2)], over 2 terms.
    want = (-(s[0] - math.log(sum(e))) - (s[1] - math.log(e[1] + e[2]))) / 2
    assert plackett_luce_loss(t([s]), torch.tensor([[0, 1, 2]]), full(3)).item() == pytest.approx(want)
    x = t([[0.3, 1.1]])
    r = torch.tensor([[0, 1]])
    assert plackett_luce_loss(x, r, full(2)).item() == pytest.approx(bradley_terry_loss(x, r, full(2)).item())


def test_pl_ties_are_order_free_breslow():
    # c0 = c1 > c2: both tied members are chosen against the same risk set {c0, c1, c2}.
    s = [0.5, -0.2, 1.0]
    lse = math.log(sum(math.exp(x) for x in s))
    want = ((lse - s[0]) + (lse - s[1])) / 2
    got = plackett_luce_loss(t([s]), torch.tensor([[0, 0, 1]]), full(3)).item()
    assert got == pytest.approx(want)
    swapped = plackett_luce_loss(t([[s[1], s[0], s[2]]]), torch.tensor([[0, 0, 1]]), full(3)).item()
    assert swapped == pytest.approx(got)


def test_losses_fall_when_order_agrees():
    ranks = torch.tensor([[0, 1, 2, 3]])
    good, bad = t([[3.0, 2.0, 1.0, 0.0]]), t([[0.0, 1.0, 2.0, 3.0]])
    for kind in ("bt", "pl"):
        assert ranking_loss(kind, good, ranks, full(4)).item() < math.log(2) < ranking_loss(kind, bad, ranks, full(4)).item()
    with pytest.raises(ValueError):
        ranking_loss("hinge", good, ranks, full(4))


def test_pair_metrics_sums():
    m = pair_metrics(t([[2.0, 1.0, 1.0]]), torch.tensor([[0, 1, 2]]), full(3))
    # pairs: 2>1 ✓, 2>1 ✓, 1=1 → ½
    assert m["pairs"].item() == 3 and m["correct"].item() == 2.5 and m["margin"].item() == pytest.approx(2.0)


# Identical texts in different tie groups (a labeler put the same answer at two places): the pair
# between them carries no preference, so — as in RankedExample.comparisons() — it is no pair.
# Ranking A > B > A' with A' the same text as A: text classes [0, 1, 0].
DUP_RANKS, DUP_CLASS = torch.tensor([[0, 1, 2]]), torch.tensor([[0, 1, 0]])


def test_identical_texts_make_no_pair():
    assert pair_mask(DUP_RANKS, full(3), DUP_CLASS)[0].int().tolist() == [[0, 1, 0], [0, 0, 1], [0, 0, 0]]
    s = [0.4, -0.3, 0.4]  # a perfect model scores identical texts alike
    want = (-math.log(torch.sigmoid(t(s[0] - s[1])).item()) - math.log(torch.sigmoid(t(s[1] - s[2])).item())) / 2
    got = bradley_terry_loss(t([s]), DUP_RANKS, full(3), text_class=DUP_CLASS).item()
    assert got == pytest.approx(want, abs=1e-12)  # no log 2 for (A, A'), the other pairs weigh ½ each
    m = pair_metrics(t([s]), DUP_RANKS, full(3), DUP_CLASS)
    assert m["pairs"].item() == 2 and m["correct"].item() == 1.0  # A > B right, B > A' wrong; no ½ for the tie
    # Without the text classes every pair counts, as before.
    assert pair_metrics(t([s]), DUP_RANKS, full(3))["pairs"].item() == 3


def test_identical_texts_in_pl_leave_each_others_risk_sets():
    # A is chosen against {A, B} (not its own copy), B against {B, A'}; A' is last and chooses nothing.
    s = [0.4, -0.3, 0.9]
    lse = lambda *xs: math.log(sum(math.exp(x) for x in xs))
    want = ((lse(s[0], s[1]) - s[0]) + (lse(s[1], s[2]) - s[1])) / 2
    got = plackett_luce_loss(t([s]), DUP_RANKS, full(3), text_class=DUP_CLASS).item()
    assert got == pytest.approx(want, abs=1e-12)
    # A ranking whose only pair is a text and its copy is no choice at all: loss 0, no NaN.
    for kind in ("bt", "pl"):
        z = t([[0.3, 0.3]]).requires_grad_()
        loss = ranking_loss(kind, z, torch.tensor([[0, 1]]), full(2), text_class=torch.tensor([[0, 0]]))
        loss.sum().backward()
        assert loss.item() == 0.0 and torch.equal(z.grad, torch.zeros(1, 2))


def test_tied_identical_texts_and_distinct_texts_are_unchanged():
    # Tied copies are a tie already (Breslow for PL); distinct classes change nothing, bit for bit.
    s, ranks = t([[0.5, -0.2, 0.5, 1.0]]), torch.tensor([[0, 1, 0, 2]])
    for kind in ("bt", "pl"):
        plain = ranking_loss(kind, s, ranks, full(4))
        assert torch.equal(ranking_loss(kind, s, ranks, full(4), text_class=torch.tensor([[0, 1, 2, 3]])), plain)
        assert torch.equal(ranking_loss(kind, s, ranks, full(4), text_class=torch.tensor([[0, 1, 0, 3]])), plain)
