"""RLOO (Ahmadian et al. 2024, "Back to Basics"): REINFORCE with the leave-one-out baseline over K
responses per prompt, the KL in the reward as PPO has it, no value model.

One iteration is the shared critic-free loop (``rankloop.rl.group.train_group``) with step 5:

    5. advantages — R_i = r_i − β Σ_t KL_t (the sequence's KL to the reference, from the rollout);
                    Â_i = R_i − mean_{j≠i} R_j over the other K − 1 responses to the same prompt

and an update without a KL term in the loss (it is in R already). ``epochs = 1`` (the default) is
RLOO as published; more epochs use the clipped ratio as PPO does.
"""

from __future__ import annotations

from pathlib import Path

from rankloop.rl.config import RLOOConfig
from rankloop.rl.group import Advantages, GroupLearner, train_group
from rankloop.rl.group_loss import rloo_advantages, sequence_kl_penalised
from rankloop.rl.rewards import RewardFn
from rankloop.rl.rollout import Rollout
from rankloop.runtime import NonFiniteError

__all__ = ["RLOOConfig", "NonFiniteError", "run_rloo", "rloo_step"]


def rloo_step(ro: Rollout, cfg: RLOOConfig, beta: float) -> Advantages:
    """5. R = score − β Σ_t KL_t, then the leave-one-out advantage within each group of K."""
    rewards, _ = sequence_kl_penalised(ro.scores, ro.old_logp, ro.ref_logp, ro.mask, beta, cfg.kl_estimator)
    return Advantages(rloo_advantages(rewards, cfg.samples_per_prompt), rewards)


RLOO = GroupLearner("rloo", rloo_step, loss_kl_coef=lambda cfg: 0.0)


def run_rloo(cfg: RLOOConfig, reward_fn: RewardFn | None = None, prompts: list | None = None) -> Path:
    """Train with RLOO; return the output directory (the final policy loads with ``from_pretrained``).
    ``reward_fn`` overrides ``cfg.reward``; ``prompts`` (``Prompt`` records or strings) ``cfg.prompts``."""
    return train_group(cfg, RLOO, reward_fn, prompts)
