"""KL estimators and KL control.

Estimators (Schulman, "Approximating KL divergence", 2020, http://joschu.net/blog/kl-approx.html)
for KL(π ‖ π_ref) from tokens x sampled from the policy π, with the ratio
r = π_ref(x) / π(x) = exp(ref_logp − logp):

    k1 = −log r              unbiased, high variance, negative for some samples
    k2 = ½ (log r)²          biased (low bias when π ≈ π_ref), low variance, ≥ 0
    k3 = (r − 1) − log r     unbiased, low variance, ≥ 0 for every sample

The per-token penalty in the reward is k1 (Ziegler et al. 2019, eq. 2; Stiennon et al. 2020, eq. 1;
Ouyang et al. 2022, eq. 2: r = r_θ(x, y) − β log(π(y|x) / π_ref(y|x))), and only k1: a penalty used
as a reward moves the policy by E_π[k ∇log π], which is ∇KL(π ‖ π_ref) for k1 and biased for k2
and k3 (k3 estimates the KL's value without bias, not its gradient), so ``PPOConfig`` refuses them
there. Every estimator stays available here for reporting and for other objectives. What rankloop
*reports* as ``ppo/kl_ref`` is the k3 sum over the response, which is non-negative for every
sample, so the reported KL is never negative (TRL's long-standing "negative KL" came from
averaging k1 over samples that were not drawn from the policy it was measured against).

Controllers: ``FixedKLController`` keeps β; ``AdaptiveKLController`` is the proportional
controller of Ziegler et al. 2019, section 2.2:

    e_t = clip(KL_t / KL_target − 1, −0.2, 0.2)
    β_{t+1} = β_t (1 + K_β e_t),   K_β = n_steps / horizon
"""

from __future__ import annotations

from typing import Literal

import torch

KLEstimator = Literal["k1", "k2", "k3"]


def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """(B, T) → (B, T): log π(x) − log π_ref(x)."""
    return logp - ref_logp


def kl_k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """(B, T) → (B, T): ½ (log π(x) − log π_ref(x))²."""
    return 0.5 * (logp - ref_logp) ** 2


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """(B, T) → (B, T): (r − 1) − log r with r = π_ref(x)/π(x); ≥ 0 elementwise."""
    log_r = ref_logp - logp
    return torch.expm1(log_r) - log_r


ESTIMATORS = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: KLEstimator = "k1") -> torch.Tensor:
    """Per-token KL estimate (B, T) with the named estimator."""
    try:
        return ESTIMATORS[estimator](logp, ref_logp)
    except KeyError:
        raise ValueError(f"unknown KL estimator {estimator!r}; choose k1, k2 or k3") from None


class FixedKLController:
    """β stays at ``kl_coef``."""

    def __init__(self, kl_coef: float):
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> float:
        return self.value

    def state_dict(self) -> dict:
        return {"kind": "fixed", "value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Ziegler et al. 2019 (section 2.2): β moves proportionally towards the KL target.

    ``n_steps`` is the number of samples (episodes) seen since the last update; ``horizon`` the
    number of samples over which the controller closes the error.
    """

    def __init__(self, kl_coef: float, target: float, horizon: float):
        if target <= 0 or horizon <= 0:
            raise ValueError("the adaptive KL controller needs target > 0 and horizon > 0")
        self.value = float(kl_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> float:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
        return self.value

    def state_dict(self) -> dict:
        return {"kind": "adaptive", "value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])
        self.target = float(state.get("target", self.target))
        self.horizon = float(state.get("horizon", self.horizon))
