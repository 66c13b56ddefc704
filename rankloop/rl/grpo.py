"""GRPO (Shao et al. 2024, DeepSeekMath) and its corrections: group-normalised advantages over K
responses per prompt, the KL to the reference in the loss, no value model.

One iteration is the shared critic-free loop (``rankloop.rl.group.train_group``) with step 5:

    5. advantages — Â_i = (r_i − mean r) / (std r + ε) over the group ('group', GRPO);
                    r_i − mean r ('group_mean', Dr. GRPO); or normalised over the batch
                    ('batch', REINFORCE++)

and the update's loss L = clipped-ratio surrogate + β · KL (k3 by default, eq. 4; or k2),
aggregated per token, per sequence or by a constant (``loss_aggregation``).
"""

from __future__ import annotations

from pathlib import Path

from rankloop.rl.config import GRPOConfig
from rankloop.rl.group import Advantages, GroupLearner, train_group
from rankloop.rl.group_loss import batch_advantages, group_advantages
from rankloop.rl.rewards import RewardFn
from rankloop.rl.rollout import Rollout
from rankloop.runtime import NonFiniteError

__all__ = ["GRPOConfig", "NonFiniteError", "run_grpo", "grpo_step"]


def grpo_step(ro: Rollout, cfg: GRPOConfig, beta: float) -> Advantages:
    """5. One advantage per response from the scores alone (the KL is in the loss)."""
    if cfg.advantage == "batch":
        adv = batch_advantages(ro.scores)
    else:
        adv = group_advantages(ro.scores, cfg.samples_per_prompt, scale_std=cfg.advantage == "group",
                               eps=cfg.std_eps)
    return Advantages(adv, ro.scores)


def _loss_kl_coef(cfg: GRPOConfig) -> float:
    return cfg.kl_coef


def run_grpo(cfg: GRPOConfig, reward_fn: RewardFn | None = None, prompts: list | None = None) -> Path:
    """Train with GRPO; return the output directory (the final policy loads with ``from_pretrained``).
    ``reward_fn`` overrides ``cfg.reward``; ``prompts`` (``Prompt`` records or strings) ``cfg.prompts``."""
    return train_group(cfg, GroupLearner("grpo", grpo_step, _loss_kl_coef, cfg.kl_estimator), reward_fn, prompts)
