"""PPO's math as pure tensor functions (no config, no models).

Symbols follow the papers: ``logp`` = log π_θ(a_t|s_t) now, ``old_logp`` = at rollout time,
``ref_logp`` = under the frozen reference, ``values`` = V(s_t), ``advantages`` = Â_t.
Shapes: B = rows (responses), T = response tokens, V = vocabulary. ``mask`` (B, T) is 1 on real
response tokens (up to and including the stop token) and 0 on padding; every reduction is masked.

Reductions: each loss returns the masked *sum* divided by ``num_tokens`` (default: the mask's own
count). Passing the token count of the whole minibatch lets gradient accumulation over
micro-batches, and data-parallel processes, reproduce exactly the gradient of the whole minibatch.

References
- PPO: Schulman et al. 2017, "Proximal Policy Optimization Algorithms" (eq. 7 clipped surrogate,
  eq. 9 combined objective).
- GAE: Schulman et al. 2016, "High-Dimensional Continuous Control Using Generalized Advantage
  Estimation" (eq. 11–16).
- RLHF rewards: Ziegler et al. 2019 (eq. 2), Stiennon et al. 2020 (eq. 1), Ouyang et al. 2022 (eq. 2).
- Value clipping: as in OpenAI baselines' ppo2 / Ziegler et al.'s lm-human-preferences.
"""

from __future__ import annotations

import torch

from rankloop.ops import last_token_index, masked_mean, masked_var
from rankloop.rl.kl import KLEstimator, kl_estimate


# ---------------------------------------------------------------- rewards and advantages


def kl_penalised_rewards(scores: torch.Tensor, logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor,
                         kl_coef: float, estimator: KLEstimator = "k1") -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards r_t = −β·KL_t, plus the score on the last response token.

    Ziegler et al. 2019 eq. 2 / Ouyang et al. 2022 eq. 2, with the KL split per token so the
    sequence penalty is β Σ_t KL_t (= β log π(y|x)/π_ref(y|x) for k1).

    scores (B,), logp/ref_logp/mask (B, T) → rewards (B, T), kl (B, T) (masked).
    """
    kl = kl_estimate(logp, ref_logp, estimator) * mask  # (B, T)
    rewards = -kl_coef * kl
    last = last_token_index(mask)  # (B,)
    rows = torch.arange(rewards.size(0), device=rewards.device)
    rewards[rows, last] = rewards[rows, last] + scores.to(rewards.dtype) * (mask.sum(1) > 0)
    return rewards, kl


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over the masked response tokens.

    Schulman et al. 2016, eq. 16:  δ_t = r_t + γ V(s_{t+1}) − V(s_t),  Â_t = Σ_l (γλ)^l δ_{t+l}.
    The episode ends after the last masked token, so V(s_{T}) = 0 there and nothing flows back
    from padding. Returns (advantages, returns = Â + V), both (B, T) and zero on padding.
    """
    rewards, values, mask = rewards * mask, values * mask, mask.to(rewards.dtype)
    B, T = rewards.shape
    adv = torch.zeros_like(rewards)
    last_gae = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)
    for t in reversed(range(T)):
        next_values = values[:, t + 1] * mask[:, t + 1] if t + 1 < T else torch.zeros_like(last_gae)
        next_mask = mask[:, t + 1] if t + 1 < T else torch.zeros_like(last_gae)
        delta = rewards[:, t] + gamma * next_values - values[:, t]
        last_gae = delta + gamma * lam * last_gae * next_mask
        adv[:, t] = last_gae * mask[:, t]
    return adv, (adv + values) * mask


# ---------------------------------------------------------------- losses


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                clip_range: float = 0.2, num_tokens: float | torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clipped surrogate (Schulman et al. 2017, eq. 7), as a loss to minimise:

        L = E_t[ max(−Â_t ρ_t, −Â_t clip(ρ_t, 1−ε, 1+ε)) ],  ρ_t = π_θ/π_θold = exp(logp − old_logp)

    Returns (loss, clip_frac, approx_kl), each 0-d; clip_frac and approx_kl are detached
    diagnostics averaged the same way as the loss. approx_kl is k3 of (π_θold ‖ π_θ) on the
    rollout samples, (ρ − 1) − log ρ, which is ≥ 0 per token.
    """
    log_ratio = logp - old_logp  # (B, T)
    ratio = torch.exp(log_ratio)
    pg1 = -advantages * ratio
    pg2 = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.maximum(pg1, pg2), mask, num_tokens)
    with torch.no_grad():
        clip_frac = masked_mean((pg2 > pg1).float(), mask, num_tokens)
        approx_kl = masked_mean(torch.expm1(log_ratio) - log_ratio, mask, num_tokens)
    return loss, clip_frac, approx_kl


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip_range_value: float | None = 0.2, num_tokens: float | torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss ½ max((V − R)², (clip(V, V_old ± ε) − R)²) (baselines ppo2).

    ``clip_range_value = None`` gives the plain ½ (V − R)². Returns (loss, clip_frac).
    """
    unclipped = (values - returns) ** 2
    if clip_range_value is None:
        return 0.5 * masked_mean(unclipped, mask, num_tokens), torch.zeros((), device=values.device)
    v_clipped = old_values + torch.clamp(values - old_values, -clip_range_value, clip_range_value)
    clipped = (v_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped, clipped), mask, num_tokens)
    with torch.no_grad():
        clip_frac = masked_mean((clipped > unclipped).float(), mask, num_tokens)
    return loss, clip_frac


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 − Var[R − V] / Var[R] over masked tokens (1 = perfect, 0 = no better than a constant)."""
    var_r = masked_var(returns, mask, unbiased=False)
    return 1.0 - masked_var(returns - values, mask, unbiased=False) / var_r.clamp_min(1e-12)
