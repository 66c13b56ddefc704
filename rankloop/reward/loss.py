"""Reward-model losses over K-way rankings, as pure tensor functions.

A batch holds B whole rankings. Candidate scores are laid out as ``scores (B, K)`` with
``K = max K_b`` in the batch; ``mask (B, K)`` marks real candidates and ``ranks (B, K)`` holds each
candidate's tie-group index (0 = best; equal ranks are tied). Padding slots are ignored everywhere.
``text_class (B, K)`` (optional) gives identical texts one class (``rankloop.records.text_classes``):
two candidates of one class are never a pair, whatever their ranks — they carry no preference.

Every function returns the per-ranking loss ``(B,)``; the caller decides how rankings are averaged
(the trainer divides the sum by the number of rankings in the optimizer step, so gradient
accumulation and data parallelism give exactly the same update as one big batch).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _clean(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Zero the padded slots first: a NaN there would otherwise poison the backward pass
    (where() blocks it going forward, but 0 · NaN = NaN coming back)."""
    return torch.where(mask, scores, torch.zeros_like(scores))


def _copies(text_class: torch.Tensor | None) -> torch.Tensor | None:
    """``(B, K, K)`` bool: i and j are different slots holding the same text (None: no copies)."""
    if text_class is None:
        return None
    k = text_class.shape[1]
    same = text_class[:, :, None] == text_class[:, None, :]
    return same & ~torch.eye(k, dtype=torch.bool, device=text_class.device)


def pair_mask(ranks: torch.Tensor, mask: torch.Tensor, text_class: torch.Tensor | None = None) -> torch.Tensor:
    """``(B, K, K)`` bool: ``[b, i, j]`` is True when candidate i is ranked strictly above j.

    Tied candidates (equal rank) make no pair, so a ranking with K candidates in G tie groups of
    sizes n_g has ``C(K, 2) − Σ_g C(n_g, 2)`` pairs (``K(K−1)/2`` without ties); nor do two
    copies of one text (same ``text_class``) ranked apart.
    """
    valid = mask[:, :, None] & mask[:, None, :]  # (B, K, K)
    pairs = valid & (ranks[:, :, None] < ranks[:, None, :])
    copies = _copies(text_class)
    return pairs if copies is None else pairs & ~copies


def bradley_terry_loss(
    scores: torch.Tensor,
    ranks: torch.Tensor,
    mask: torch.Tensor,
    margin: torch.Tensor | None = None,
    text_class: torch.Tensor | None = None,
) -> torch.Tensor:
    """All-pairs Bradley–Terry loss of each K-way ranking, ``(B,)``.

    InstructGPT (Ouyang et al. 2022, eq. 1)::

        loss(θ) = − 1 / C(K, 2) · Σ_{(y_w, y_l)} log σ(r_θ(x, y_w) − r_θ(x, y_l) − m)

    computed from the K scores of one forward pass per candidate; ``m`` is the optional margin of
    Llama 2 (Touvron et al. 2023, eq. 2). With ties the normaliser is the number of pairs that
    remain, so each ranking weighs the same whatever its K; a ranking with no pair (one tie group)
    contributes exactly 0 with zero gradient. Copies of one text make no pair either (``pair_mask``).

    scores: (B, K) float — r_θ(x, y_k); padded slots may hold anything finite.
    ranks:  (B, K) int   — tie-group index, 0 = best.
    mask:   (B, K) bool  — real candidates.
    margin: (B,) float or None — subtracted from every pair's score difference.
    text_class: (B, K) int or None — equal for identical texts.
    """
    scores = _clean(scores, mask)
    pairs = pair_mask(ranks, mask, text_class)  # (B, K, K)
    diff = scores[:, :, None] - scores[:, None, :]  # (B, K, K): r_i − r_j
    if margin is not None:
        diff = diff - margin[:, None, None]
    nll = -F.logsigmoid(diff)  # (B, K, K)
    nll = torch.where(pairs, nll, torch.zeros_like(nll))
    n_pairs = pairs.sum(dim=(1, 2))  # (B,)
    return nll.sum(dim=(1, 2)) / n_pairs.clamp(min=1).to(scores.dtype)


def plackett_luce_loss(scores: torch.Tensor, ranks: torch.Tensor, mask: torch.Tensor,
                       text_class: torch.Tensor | None = None) -> torch.Tensor:
    """Listwise Plackett–Luce negative log-likelihood of each ranking, ``(B,)``.

    Plackett (1975), Luce (1959); ListMLE (Xia et al. 2008). Without ties::

        −log P(π | r) = − Σ_{i=1}^{K−1} [ r_{π_i} − log Σ_{j ≥ i} exp r_{π_j} ]

    Ties use Breslow's approximation (as in the Cox partial likelihood): every member of a tie
    group is "chosen" against the same risk set — itself, its group and every candidate ranked
    below — so tie order never matters. The last group is not a choice among anything ranked
    below it and contributes nothing; hence a whole-list tie gives loss 0, and for K = 2 without
    ties the loss equals Bradley–Terry's −log σ(r_w − r_l). The sum is divided by the number of
    terms (candidates outside the last group) so rankings of different K weigh the same.
    Margins are not defined for this loss and are not applied.

    A copy of a text ranked below it (same ``text_class``, a lower group) is no alternative to it:
    it leaves that text's risk set, and a candidate whose risk set then holds nothing ranked below
    it makes no choice. Copies in one tie group stay a tie.

    scores: (B, K) float, ranks: (B, K) int (0 = best), mask: (B, K) bool, text_class: (B, K) int or None.
    """
    scores = _clean(scores, mask)
    neg_inf = torch.finfo(scores.dtype).min
    # risk[b, i, j]: j is in i's risk set (ranked the same as i or below).
    risk = mask[:, None, :] & (ranks[:, None, :] >= ranks[:, :, None])  # (B, K, K)
    copies = _copies(text_class)
    if copies is not None:
        risk = risk & ~(copies & (ranks[:, None, :] > ranks[:, :, None]))
    logits = torch.where(risk, scores[:, None, :].expand_as(risk), torch.full_like(risk, neg_inf, dtype=scores.dtype))
    log_denom = torch.logsumexp(logits, dim=-1)  # (B, K)
    if copies is None:
        last_rank = torch.where(mask, ranks, torch.full_like(ranks, -1)).amax(dim=1, keepdim=True)  # (B, 1)
        term = mask & (ranks < last_rank)  # (B, K): candidates that make a choice
    else:  # the same where there are no copies: something real ranked below is in the risk set
        term = mask & (risk & (ranks[:, None, :] > ranks[:, :, None])).any(dim=-1)
    nll = torch.where(term, log_denom - scores, torch.zeros_like(scores))  # (B, K)
    return nll.sum(dim=1) / term.sum(dim=1).clamp(min=1).to(scores.dtype)


def ranking_loss(kind: str, scores, ranks, mask, margin=None, text_class=None) -> torch.Tensor:
    """Per-ranking loss ``(B,)`` of ``kind`` ``"bt"`` (all-pairs Bradley–Terry) or ``"pl"`` (Plackett–Luce)."""
    if kind == "bt":
        return bradley_terry_loss(scores, ranks, mask, margin, text_class)
    if kind == "pl":
        return plackett_luce_loss(scores, ranks, mask, text_class)
    raise ValueError(f"unknown loss {kind!r}; choose 'bt' or 'pl'")


@torch.no_grad()
def pair_metrics(scores: torch.Tensor, ranks: torch.Tensor, mask: torch.Tensor,
                 text_class: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Sums over all pairs of the batch (``pair_mask``'s): ``correct`` (r_w > r_l; a score tie counts ½),
    ``margin`` (Σ r_w − r_l) and ``pairs``. Sums, not means, so they add up across micro-batches and
    processes."""
    scores = _clean(scores, mask)
    pairs = pair_mask(ranks, mask, text_class)
    diff = scores[:, :, None] - scores[:, None, :]
    correct = (diff > 0).to(scores.dtype) + 0.5 * (diff == 0).to(scores.dtype)
    return {
        "correct": (correct * pairs).sum(),
        "margin": torch.where(pairs, diff, torch.zeros_like(diff)).sum(),
        "pairs": pairs.sum().to(scores.dtype),
    }
