"""Quality measures over raw rankings. Pure functions of plain data (no database).

A ranking is a list of tie groups, best → worst: ``[["c3"], ["c1", "c4"], ["c2"]]``.

- ``pairwise_agreement``: over every pair of labelers who ranked the same item and every pair of
  that item's candidates, the share on which the two labelers give the same relation (better,
  worse, or tied). This is the "inter-annotator agreement" InstructGPT reports (~73%).
- ``krippendorff_alpha``: Krippendorff's alpha (Krippendorff 2011, "Computing Krippendorff's
  Alpha-Reliability"), from the coincidence matrix, with the nominal, ordinal or interval metric.
  For rankings each (item, candidate) is a unit and a labeler's value is the candidate's mid-rank
  (1-based; tied candidates share the mean of the places they span), read on the ordinal metric.
- ``consensus``: candidates ordered by mean mid-rank over labelers (Borda); equal means tie.
- ``gold_pairs``: how many of a gold ranking's strict pairs a labeler ordered the same way.
"""

from __future__ import annotations

from collections import Counter
from itertools import combinations
from typing import Iterable, Sequence

Order = Sequence[Sequence[str]]


def mid_ranks(order: Order) -> dict[str, float]:
    """Candidate → mid-rank, 1-based: ``[["a"], ["b", "c"], ["d"]]`` → a 1, b 2.5, c 2.5, d 4."""
    out: dict[str, float] = {}
    start = 1
    for group in order:
        mid = start + (len(group) - 1) / 2
        for cid in group:
            out[cid] = mid
        start += len(group)
    return out


def _group_index(order: Order) -> dict[str, int]:
    return {cid: r for r, group in enumerate(order) for cid in group}


def _relation(rank: dict[str, int], a: str, b: str) -> int:
    """-1: a better than b; 0: tied; 1: b better."""
    return (rank[a] > rank[b]) - (rank[a] < rank[b])


def pair_agreement_counts(orders: Sequence[Order]) -> tuple[int, int]:
    """(agreeing, total) judgements over all labeler pairs × candidate pairs of one item."""
    ranks = [_group_index(o) for o in orders]
    agree = total = 0
    for r1, r2 in combinations(ranks, 2):
        shared = sorted(set(r1) & set(r2))
        for a, b in combinations(shared, 2):
            total += 1
            agree += _relation(r1, a, b) == _relation(r2, a, b)
    return agree, total


def pairwise_agreement(items: Iterable[Sequence[Order]]) -> float | None:
    """Pooled pairwise agreement rate over items (each: the rankings its labelers gave)."""
    agree = total = 0
    for orders in items:
        a, t = pair_agreement_counts(orders)
        agree, total = agree + a, total + t
    return agree / total if total else None


def _delta2(metric: str, values: list[float], n: dict[float, float]) -> dict[tuple[float, float], float]:
    d: dict[tuple[float, float], float] = {}
    for i, c in enumerate(values):
        for k in values[i:]:
            if metric == "nominal":
                v = 0.0 if c == k else 1.0
            elif metric == "interval":
                v = (c - k) ** 2
            elif metric == "ordinal":
                # (sum of n_g for g from c to k) - (n_c + n_k)/2, squared; values sorted ascending.
                between = sum(n[g] for g in values if c <= g <= k)
                v = (between - (n[c] + n[k]) / 2) ** 2
            else:
                raise ValueError(f"unknown metric {metric!r}")
            d[(c, k)] = d[(k, c)] = v
    return d


def krippendorff_alpha(units: Iterable[Sequence[float | None]], metric: str = "ordinal") -> float | None:
    """Krippendorff's alpha. ``units``: for each unit, the values the coders gave (``None`` for
    missing). Units with fewer than two values are not pairable and are ignored.

    alpha = 1 - (n - 1) * sum_ck o_ck d2_ck / sum_ck n_c n_k d2_ck
    with o_ck = sum_u (number of c-k value pairs from different coders in u) / (m_u - 1).
    Returns None when there is nothing to compare or no variation at all (expected disagreement 0).
    """
    o: Counter[tuple[float, float]] = Counter()
    for unit in units:
        vals = [v for v in unit if v is not None]
        m = len(vals)
        if m < 2:
            continue
        for i, j in ((i, j) for i in range(m) for j in range(m) if i != j):
            o[(vals[i], vals[j])] += 1.0 / (m - 1)
    if not o:
        return None
    n_c: Counter[float] = Counter()
    for (c, _k), w in o.items():
        n_c[c] += w
    n = sum(n_c.values())
    values = sorted(n_c)
    d2 = _delta2(metric, values, n_c)
    observed = sum(w * d2[ck] for ck, w in o.items())
    expected = sum(n_c[c] * n_c[k] * d2[(c, k)] for c in values for k in values)
    if expected == 0:
        return None
    return 1.0 - (n - 1) * observed / expected


def ranking_alpha(items: Iterable[Sequence[Order]], metric: str = "ordinal") -> float | None:
    """Alpha over rankings: units are (item, candidate), values mid-ranks."""
    units: list[list[float]] = []
    for orders in items:
        ranks = [mid_ranks(o) for o in orders]
        cands = sorted({c for r in ranks for c in r})
        units.extend([[r[c] for r in ranks if c in r] for c in cands])
    return krippendorff_alpha(units, metric)


def consensus(orders: Sequence[Order]) -> list[list[str]]:
    """Tie groups by mean mid-rank (Borda count); candidates with equal means are tied."""
    ranks = [mid_ranks(o) for o in orders]
    cands = sorted({c for r in ranks for c in r})
    mean = {c: sum(r[c] for r in ranks if c in r) / sum(1 for r in ranks if c in r) for c in cands}
    out: list[list[str]] = []
    for c in sorted(cands, key=lambda c: (mean[c], c)):
        if out and abs(mean[out[-1][0]] - mean[c]) < 1e-9:
            out[-1].append(c)
        else:
            out.append([c])
    return out


def gold_pairs(order: Order, gold: Order) -> tuple[int, int]:
    """(correct, total): the gold ranking's strict pairs that ``order`` puts the same way round."""
    r, g = _group_index(order), _group_index(gold)
    correct = total = 0
    for a, b in combinations(sorted(g), 2):
        rel = _relation(g, a, b)
        if rel == 0 or a not in r or b not in r:
            continue
        total += 1
        correct += _relation(r, a, b) == rel
    return correct, total




# ---------------------------------------------------------------- repeats (issue 15 item 2)


def self_agreement(repeats: Iterable[Sequence[Order]]) -> float | None:
    """Intra-rater agreement: each element holds one labeler's several judgements of one item; the
    pooled share of (judgement pair, candidate pair) on which they give themself the same relation
    (better, worse or tied). The same count as ``pairwise_agreement``, with one labeler's repeats
    in place of different labelers' judgements."""
    return pairwise_agreement(repeats)
