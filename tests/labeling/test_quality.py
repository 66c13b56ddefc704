"""Agreement and quality measures against hand-worked values."""

import pytest

from rankloop.labeling import quality


def test_mid_ranks_share_the_places_a_tie_spans():
    assert quality.mid_ranks([["a"], ["b", "c"], ["d"]]) == {"a": 1, "b": 2.5, "c": 2.5, "d": 4}


def test_alpha_two_coders_three_units_by_hand():
    # Units (1,1), (2,2), (1,2): o11 = 2, o22 = 2, o12 = o21 = 1; n1 = n2 = 3, n = 6.
    # Ordinal d2(1,2) = (n1 + n2 - (n1 + n2)/2)^2 = 9; alpha = 1 - 5 * (2*9) / (2*3*3*9) = 4/9.
    assert quality.krippendorff_alpha([[1, 1], [2, 2], [1, 2]], "ordinal") == pytest.approx(4 / 9)
    assert quality.krippendorff_alpha([[1, 1], [2, 2], [1, 2]], "nominal") == pytest.approx(4 / 9)


def test_alpha_two_rankings_by_hand():
    # L1: a > b > c, L2: a > c > b. Units a, b, c with values (1,1), (2,3), (3,2).
    # o11 = 2, o23 = o32 = 2; n1 = n2 = n3 = 2, n = 6.
    # Ordinal: d2(1,2) = (4-2)^2 = 4, d2(2,3) = 4, d2(1,3) = (6-2)^2 = 16.
    # Observed: o23*4 + o32*4 = 16. Expected sum: 2*(2*2*4 + 2*2*16 + 2*2*4) = 192.
    # alpha = 1 - (6-1) * 16/192 = 7/12.
    orders = [[["a"], ["b"], ["c"]], [["a"], ["c"], ["b"]]]
    assert quality.ranking_alpha([orders]) == pytest.approx(7 / 12)
    # Pairwise: (a,b) agree, (a,c) agree, (b,c) disagree.
    assert quality.pairwise_agreement([orders]) == pytest.approx(2 / 3)


def test_alpha_matches_krippendorffs_published_example():
    # Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", section C: 4 observers,
    # 12 units, values 1-5 with missing data. Published: nominal .743, ordinal .815, interval .849.
    n = None
    A = [1, 2, 3, 3, 2, 1, 4, 1, 2, n, n, n]
    B = [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, n, 3]
    C = [n, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, n]
    D = [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, n]
    units = list(zip(A, B, C, D))
    assert quality.krippendorff_alpha(units, "nominal") == pytest.approx(0.743, abs=5e-4)
    assert quality.krippendorff_alpha(units, "ordinal") == pytest.approx(0.815, abs=5e-4)
    assert quality.krippendorff_alpha(units, "interval") == pytest.approx(0.849, abs=5e-4)


def test_perfect_agreement_and_nothing_to_compare():
    same = [[["a"], ["b"], ["c"]]] * 3
    assert quality.ranking_alpha([same]) == pytest.approx(1.0)
    assert quality.pairwise_agreement([same]) == 1.0
    assert quality.ranking_alpha([[[["a"], ["b"]]]]) is None  # one labeler: no pairable values
    assert quality.pairwise_agreement([]) is None


def test_ties_are_a_relation_of_their_own():
    # L1: a = b > c, L2: a > b > c: (a,b) tie vs better -> disagree; (a,c), (b,c) agree.
    assert quality.pairwise_agreement([[[["a", "b"], ["c"]], [["a"], ["b"], ["c"]]]]) == pytest.approx(2 / 3)


def test_consensus_is_borda_with_ties():
    orders = [[["a"], ["b"], ["c"]], [["b"], ["a"], ["c"]], [["a"], ["c"], ["b"]]]
    # mean mid-ranks: a (1+2+1)/3 = 4/3, b (2+1+3)/3 = 2, c (3+3+2)/3 = 8/3
    assert quality.consensus(orders) == [["a"], ["b"], ["c"]]
    assert quality.consensus([[["a"], ["b"]], [["b"], ["a"]]]) == [["a", "b"]]


def test_gold_pairs_counts_only_strict_gold_pairs():
    gold = [["a"], ["b", "c"], ["d"]]  # strict pairs: ab ac ad bd cd (bc tied: not counted)
    assert quality.gold_pairs([["a"], ["b"], ["c"], ["d"]], gold) == (5, 5)
    assert quality.gold_pairs([["d"], ["c"], ["b"], ["a"]], gold) == (0, 5)
    assert quality.gold_pairs([["b"], ["a"], ["c"], ["d"]], gold) == (4, 5)
