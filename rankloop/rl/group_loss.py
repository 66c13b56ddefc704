"""The critic-free learners' math as pure tensor functions: RLOO, GRPO, Dr. GRPO, REINFORCE++.

K responses are sampled per prompt; the rows of a batch are prompt-major (the K responses of a
prompt are adjacent), so ``rewards.view(-1, K)`` is (G prompts, K responses). No value model: the
other responses to the same prompt are the baseline.

Shapes: N = rows (G·K responses), T = response tokens; ``mask`` (N, T) is 1 on real response
tokens. Symbols as in ``rankloop.rl.loss``: ``logp`` = log π_θ now, ``old_logp`` = at rollout
time, ``ref_logp`` = under the reference.

References
- RLOO: Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization for
  Learning from Human Feedback in LLMs", eq. 9 (the leave-one-out baseline of Kool et al. 2019),
  with the KL in the reward (eq. 2, Ziegler et al. 2019).
- GRPO: Shao et al. 2024, "DeepSeekMath", eq. 3 (objective: clipped ratio, KL in the loss, each
  response's token mean), eq. 4 (the KL estimator k3), §4.1.2 (outcome advantages
  (r − mean)/std).
- Dr. GRPO: Liu et al. 2025, "Understanding R1-Zero-Like Training", §3.1: dropping the std
  division and the per-response length normalisation removes GRPO's difficulty and length biases.
- DAPO: Yu et al. 2025, §3.3: the token-level loss (every token weighs the same).
- REINFORCE++: Hu 2025, eq. 9–10: advantages normalised over the whole batch.
- KL estimators: Schulman 2020 (http://joschu.net/blog/kl-approx.html). As a loss term the
  estimator decides the gradient (``kl_loss_term``); ``tests/rl/test_group_loss.py`` checks both
  against the exact gradients on a small categorical distribution.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch

from rankloop.rl.kl import KLEstimator, kl_estimate, kl_k2, kl_k3
from rankloop.rl.loss import policy_loss

Aggregation = Literal["token", "sequence", "constant"]
LossKL = Literal["k3", "k2"]


# ---------------------------------------------------------------- advantages (one per response)


def group_view(x: torch.Tensor, k: int) -> torch.Tensor:
    """(N,) → (G, K): the K adjacent responses of each prompt."""
    if k < 2:
        raise ValueError(f"a group baseline needs K ≥ 2 responses per prompt, got K = {k}")
    if x.numel() % k:
        raise ValueError(f"{x.numel()} rewards are not whole groups of K = {k}")
    return x.reshape(-1, k)


def rloo_advantages(rewards: torch.Tensor, k: int) -> torch.Tensor:
    """(N,) → (N,): Â_i = R_i − 1/(K−1) Σ_{j≠i} R_j (Ahmadian et al. 2024, eq. 9).

    The baseline excludes the response itself, so it is independent of it and the estimate stays
    unbiased. Equal to K/(K−1) · (R_i − mean(R)).
    """
    g = group_view(rewards, k)  # (G, K)
    baseline = (g.sum(1, keepdim=True) - g) / (k - 1)
    return (g - baseline).reshape(-1)


def group_advantages(rewards: torch.Tensor, k: int, scale_std: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """(N,) → (N,): Â_i = (r_i − mean(r)) / (std(r) + ε) over the response's group (GRPO, Shao et
    al. 2024 §4.1.2; std Bessel-corrected as TRL's); ``scale_std = False`` gives r_i − mean(r)
    (Dr. GRPO, Liu et al. 2025 §3.1). A group of equal rewards gets 0 either way."""
    g = group_view(rewards, k)
    centred = g - g.mean(1, keepdim=True)
    if scale_std:
        centred = centred / (g.std(1, keepdim=True) + eps)
    return centred.reshape(-1)


def batch_advantages(rewards: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(N,) → (N,): (r − mean) / (std + ε) over the whole batch (REINFORCE++, Hu 2025 eq. 10)."""
    if rewards.numel() < 2:
        raise ValueError("batch-normalised advantages need at least 2 responses")
    return (rewards - rewards.mean()) / (rewards.std() + eps)


# ---------------------------------------------------------------- the KL: in the reward or in the loss


def sequence_kl_penalised(scores: torch.Tensor, logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor,
                          kl_coef: float, estimator: KLEstimator = "k1") -> tuple[torch.Tensor, torch.Tensor]:
    """The KL in the reward, at the sequence level: R = r − β Σ_t KL_t (Ahmadian et al. 2024,
    eq. 2; for k1, Σ_t KL_t = log π(y|x)/π_ref(y|x)). scores (N,), logp/ref_logp/mask (N, T) →
    R (N,), Σ_t KL_t (N,). Computed from the rollout's log-probs: a constant of the update."""
    kl = (kl_estimate(logp, ref_logp, estimator) * mask).sum(1)  # (N,)
    return scores.to(kl.dtype) - kl_coef * kl, kl


def kl_loss_term(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: LossKL = "k3") -> torch.Tensor:
    """(N, T) → (N, T): the KL of the loss, differentiable in ``logp``. On samples x ~ π its expected
    gradient is

        k3 = π_ref/π − log(π_ref/π) − 1  (GRPO's, Shao et al. 2024 eq. 4):  E[∇k3] = ∇ KL(π_ref ‖ π)
        k2 = ½ (log π − log π_ref)²:                                       E[∇k2] = ∇ KL(π ‖ π_ref)

    (∇k3 = (1 − π_ref/π) ∇log π and E_π[(π_ref/π) ∇log π] = Σ π_ref ∇log π; ∇k2 = log(π/π_ref) ∇log π
    and E_π[log(π/π_ref) ∇log π] = ∇ Σ π log(π/π_ref)). Both are 0 where π = π_ref."""
    if estimator == "k3":
        return kl_k3(logp, ref_logp)
    if estimator == "k2":
        return kl_k2(logp, ref_logp)
    raise ValueError(f"unknown KL estimator for the loss {estimator!r}; choose k3 or k2")


# ---------------------------------------------------------------- aggregation and the loss


def aggregation_weights(mask: torch.Tensor, mode: Aggregation, max_len: int | None = None) -> torch.Tensor:
    """(N, T) → (N, T) per-token weights w with the loss Σ w·ℓ, for the N rows of one minibatch:

        token     w = 1 / Σ mask                 (DAPO: one mean over every token; Σ w = 1)
        sequence  w = 1 / (N · |y_i|)            (GRPO eq. 3: mean over responses of each one's
                                                  token mean; Σ w = 1)
        constant  w = 1 / (N · max_len)          (Dr. GRPO: a constant, so no length bias)

    Computed once for the whole minibatch, so micro-batches and processes that each take their
    rows' weights add up to the minibatch's loss. Zero on padding."""
    mask = mask.float()
    n = mask.size(0)
    if mode == "token":
        return mask / mask.sum().clamp_min(1.0)
    if mode == "sequence":
        return mask / (n * mask.sum(1, keepdim=True).clamp_min(1.0))
    if mode == "constant":
        if max_len is None:
            raise ValueError("the 'constant' aggregation needs max_len (max_new_tokens)")
        return mask / (n * max_len)
    raise ValueError(f"unknown loss aggregation {mode!r}; choose token, sequence or constant")


class GroupLoss(NamedTuple):
    """One micro-batch's loss and its detached diagnostics, each 0-d, weighted by the aggregation."""

    loss: torch.Tensor  # policy_loss + β · kl
    policy_loss: torch.Tensor
    kl: torch.Tensor  # the KL term of the loss (0 when β = 0)
    clip_frac: torch.Tensor
    approx_kl: torch.Tensor  # k3 of (π_θold ‖ π_θ), as PPO's


def group_policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor,
                      advantages: torch.Tensor, weights: torch.Tensor, clip_range: float, kl_coef: float = 0.0,
                      kl_estimator: LossKL = "k3") -> GroupLoss:
    """GRPO's objective (Shao et al. 2024, eq. 3) as a loss to minimise:

        L = Σ_{i,t} w_it [ max(−Â_i ρ_it, −Â_i clip(ρ_it, 1−ε, 1+ε)) + β KL_it ],  ρ = π_θ/π_θold

    logp/old_logp/ref_logp/weights (N, T), advantages (N,) — one per response, the same at each of
    its tokens. RLOO is the same loss with β = 0 (its KL is in the reward). With one epoch ρ = 1 at
    the first step and this is REINFORCE with the group baseline."""
    adv = advantages[:, None].to(logp.dtype).expand_as(logp)  # (N, T)
    pg, clip_frac, approx_kl = policy_loss(logp, old_logp, adv, weights, clip_range, num_tokens=1.0)
    if kl_coef:
        kl = (kl_loss_term(logp, ref_logp, kl_estimator) * weights).sum()
        loss = pg + kl_coef * kl
    else:
        kl = torch.zeros((), device=logp.device)
        loss = pg
    return GroupLoss(loss, pg.detach(), kl.detach(), clip_frac, approx_kl)
