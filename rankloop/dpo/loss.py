"""DPO losses over K-way rankings, as pure tensor functions.

A batch holds B whole rankings laid out as in ``rankloop.reward.loss``: ``(B, K)`` tensors with
``mask`` marking real candidates and ``ranks`` their tie group (0 = best, equal = tied). The inputs
are sequence log-probabilities, summed over each response's tokens:

    logp     (B, K)  log π_θ(y_k | x)
    ref_logp (B, K)  log π_ref(y_k | x)

DPO (Rafailov et al. 2023) reads the policy as a reward model: the implicit reward of a response is

    h_θ(x, y) = β · log(π_θ(y | x) / π_ref(y | x))                                   (DPO eq. 5)

and every DPO loss here is a reward-model loss on those implicit rewards — the pairwise one of the
Bradley–Terry model over all C(K, 2) pairs, the listwise one of the Plackett–Luce model — so the
pair construction, the tie handling and the per-ranking normalisation are exactly the reward
model's (``rankloop.reward.loss``). Every function returns the per-ranking loss ``(B,)``; a
ranking with no pair (one tie group) gives exactly 0 with zero gradient, and the trainer leaves
such rankings out of the data altogether (counted) so they do not thin the step's average.
"""

from __future__ import annotations

from typing import Literal

import torch

from rankloop.reward.loss import bradley_terry_loss, pair_mask, plackett_luce_loss

DPOLoss = Literal["dpo", "pl", "ipo"]


def implicit_rewards(logp: torch.Tensor, ref_logp: torch.Tensor, beta: float) -> torch.Tensor:
    """``(B, K)`` h = β (log π_θ − log π_ref) (DPO eq. 5)."""
    return beta * (logp - ref_logp)


def dpo_loss(logp: torch.Tensor, ref_logp: torch.Tensor, ranks: torch.Tensor, mask: torch.Tensor, beta: float,
             margin: torch.Tensor | None = None, label_smoothing: float = 0.0) -> torch.Tensor:
    """Pairwise DPO over every pair of a ranking, ``(B,)``.

    DPO eq. 7 for one pair (y_w ≻ y_l), averaged over the ranking's pairs (ties make no pair)::

        L = − 1/|P| Σ_{(w, l) ∈ P} log σ(h_w − h_l − m)

    with the ranking's margin m where the data has one (as the Llama 2 reward loss). With
    ``label_smoothing`` ε > 0, conservative DPO (Mitchell 2023, "A note on DPO with noisy
    preferences"): each label is taken as flipped with probability ε::

        L_ε = − 1/|P| Σ [(1 − ε) log σ(h_w − h_l − m) + ε log σ(−(h_w − h_l − m))]

    which is the Bradley–Terry loss of h (margin m) and of −h (margin −m), mixed.
    """
    h = implicit_rewards(logp, ref_logp, beta)
    loss = bradley_terry_loss(h, ranks, mask, margin)
    if label_smoothing:
        flipped = bradley_terry_loss(-h, ranks, mask, -margin if margin is not None else None)
        loss = (1 - label_smoothing) * loss + label_smoothing * flipped
    return loss


def plackett_luce_dpo_loss(logp: torch.Tensor, ref_logp: torch.Tensor, ranks: torch.Tensor, mask: torch.Tensor,
                           beta: float) -> torch.Tensor:
    """Listwise DPO: the Plackett–Luce likelihood of the whole ranking, ``(B,)``.

    DPO App. A.3 (eq. 18) for a ranking τ of K responses::

        L = − log Π_{k=1}^{K} exp h(y_τ(k)) / Σ_{j=k}^{K} exp h(y_τ(j))

    here divided by the number of choice terms, and with ties handled as the Plackett–Luce reward
    loss handles them (Breslow: every member of a tie group is chosen against the same risk set;
    see ``rankloop.reward.loss.plackett_luce_loss``). For K = 2 without ties it is the pairwise
    DPO loss −log σ(h_w − h_l); a whole-list tie gives 0. Margins are not defined for it.
    """
    return plackett_luce_loss(implicit_rewards(logp, ref_logp, beta), ranks, mask)


def ipo_loss(logp: torch.Tensor, ref_logp: torch.Tensor, ranks: torch.Tensor, mask: torch.Tensor,
             beta: float) -> torch.Tensor:
    """IPO (Azar et al. 2023, eq. 17) over every pair of a ranking, ``(B,)``; τ = β::

        L = 1/|P| Σ_{(w, l) ∈ P} (log(π_θ(y_w)/π_ref(y_w)) − log(π_θ(y_l)/π_ref(y_l)) − 1/(2τ))²

    A squared loss that pulls each log-ratio gap to 1/(2τ) instead of pushing it to infinity, so
    it does not overfit deterministic preferences. Sequence log-probs are sums over tokens, as in
    the paper (TRL divides them by the response length for IPO). Margins are not applied.
    """
    ratio = logp - ref_logp  # (B, K)
    ratio = torch.where(mask, ratio, torch.zeros_like(ratio))
    pairs = pair_mask(ranks, mask)  # (B, K, K)
    sq = (ratio[:, :, None] - ratio[:, None, :] - 1.0 / (2.0 * beta)) ** 2  # (B, K, K)
    sq = torch.where(pairs, sq, torch.zeros_like(sq))
    return sq.sum(dim=(1, 2)) / pairs.sum(dim=(1, 2)).clamp(min=1).to(sq.dtype)


def preference_loss(kind: DPOLoss, logp, ref_logp, ranks, mask, beta: float, margin=None,
                    label_smoothing: float = 0.0) -> torch.Tensor:
    """Per-ranking loss ``(B,)`` of ``kind``: ``"dpo"`` (all pairs), ``"pl"`` (Plackett–Luce) or ``"ipo"``."""
    if kind == "dpo":
        return dpo_loss(logp, ref_logp, ranks, mask, beta, margin, label_smoothing)
    if kind == "pl":
        return plackett_luce_dpo_loss(logp, ref_logp, ranks, mask, beta)
    if kind == "ipo":
        return ipo_loss(logp, ref_logp, ranks, mask, beta)
    raise ValueError(f"unknown DPO loss {kind!r}; choose 'dpo', 'pl' or 'ipo'")


def token_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``(M, V)`` logits, ``(M,)`` next tokens → ``(M,)`` log p(target), in float32: logit − logsumexp
    (no (M, V) log-softmax tensor kept besides the logits)."""
    logits = logits.float()
    return logits.gather(-1, targets[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def sequence_logps(token_logp: torch.Tensor, owner: torch.Tensor, n: int) -> torch.Tensor:
    """``(M,)`` token log-probs, ``(M,)`` the sequence each belongs to → ``(n,)`` log π(y | x) = Σ_t."""
    return torch.zeros(n, dtype=token_logp.dtype, device=token_logp.device).index_add(0, owner, token_logp)


@torch.no_grad()
def best_worst_means(values: torch.Tensor, ranks: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums over rankings of the mean of ``values (B, K)`` over each ranking's best tie group (the
    "chosen") and its worst (the "rejected") — sums, so they add across micro-batches and processes."""
    worst = torch.where(mask, ranks, torch.full_like(ranks, -1)).amax(dim=1, keepdim=True)  # (B, 1)
    best, last = mask & (ranks == 0), mask & (ranks == worst)
    v = torch.where(mask, values, torch.zeros_like(values))
    mean = lambda sel: ((v * sel).sum(1) / sel.sum(1).clamp(min=1)).sum()
    return mean(best), mean(last)
