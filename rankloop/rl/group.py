"""The loop the critic-free learners share (RLOO, GRPO): K responses per prompt, the group as the
baseline, no value model.

``train_group`` reads top to bottom; one iteration is

    1. prompts      — this iteration's slice of a seeded, shuffled prompt stream (``steps``)
    2. rollout      — K responses per prompt, each its own seeded stream (``steps``)
    3. score        — the reward(s), clipped, minus the missing-EOS penalty (``steps``)
    4. forward      — log π_ref; log π_θold and the entropy from the sampler (or a forward pass,
                      ``old_logprobs = "forward"``), then every process holds the whole batch
    5. advantages   — the learner's own: one Â per response (``rloo.py``, ``grpo.py``)
    6. update       — epochs over shuffled minibatches of the clipped ratio loss (+ β·KL in the
                      loss for GRPO), one optimiser step each (``group_update``)
    7. metrics, checkpoint

The steps 1–4 and the checkpoints are PPO's (``rankloop.rl.steps``), so sampling, the packed
teacher-forced passes, the reference (frozen copy or LoRA adapter off), the non-finite guard and
exact resume behave alike for every learner. Output directory: the final policy, ``<name>_config.json``,
``metrics.jsonl``, ``checkpoints/iter-NNNNNN/``.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Callable, NamedTuple

from rankloop.models import count_parameters, flush_denormals
from rankloop.rl.config import GroupConfig
from rankloop.rl.group_loss import aggregation_weights, group_policy_loss, group_view
from rankloop.rl.kl import kl_k1, kl_k3
from rankloop.ops import logprobs_from_logits, masked_mean
from rankloop.rl.rewards import RewardFn
from rankloop.rl.rollout import Rollout
from rankloop.rl.steps import (Learner, build_learner, check_divisible, collect_rollout, gather_rows, kl_controller,
                               minibatches, open_run, optimizer_update, prompt_batch, sample_responses, save_checkpoint,
                               save_final, score_responses)
from rankloop.runtime import FiniteGuard, check_fsdp_settings, make_accelerator, progress_bar, tracking, trackers


class Advantages(NamedTuple):
    """Step 5's result: one advantage per response, and the reward it was computed from."""

    advantages: object  # (N,) Â_i
    rewards: object  # (N,) the reward behind Â (RLOO: minus β·KL; GRPO: the score)


class GroupLearner(NamedTuple):
    """What makes a critic-free learner itself: its name (the metrics' prefix and the config file),
    its advantages (step 5) and the KL term of its loss (β = 0 when the KL is in the reward)."""

    name: str
    advantages: Callable[[Rollout, GroupConfig, float], Advantages]  # (rollout, config, β) → Â
    loss_kl_coef: Callable[[GroupConfig], float]
    loss_kl_estimator: str = "k3"


class GroupUpdateStats(NamedTuple):
    """Means over the optimiser steps of one iteration's update."""

    policy_loss: float
    kl_loss: float  # the KL term of the loss (0 for RLOO)
    clip_frac: float
    approx_kl: float
    grad_norm: float
    steps: int


# ---------------------------------------------------------------- the loop


def train_group(cfg: GroupConfig, algo: GroupLearner, reward_fn: RewardFn | None = None,
                prompts: list | None = None) -> Path:
    """Train; return the output directory (the final policy loads from it with ``from_pretrained``)."""
    with flush_denormals():
        return _train(cfg, algo, reward_fn, prompts)


def _train(cfg: GroupConfig, algo: GroupLearner, reward_fn: RewardFn | None, prompts: list | None) -> Path:
    # FSDP-ready: the policy sharded, the reference and a reward model replicated (see docs/gpu.md)
    acc = make_accelerator(trackers(cfg.output, "iteration", cfg.tensorboard), cfg.output, cfg, fsdp=True)
    check_fsdp_settings(acc, cfg)
    world, rank = acc.num_processes, acc.process_index
    K = cfg.samples_per_prompt
    check_divisible(cfg.batch_size, cfg.minibatch_size, cfg.grad_accum_steps, world)
    learner = build_learner(cfg, acc, reward_fn, prompts, kl_controller("fixed", cfg.kl_coef), critic=None)
    run, guard, start = open_run(cfg, learner, acc, algo.name)
    trainable_n, total_n = count_parameters(learner.policy)
    bar = progress_bar(algo.name, enabled=acc.is_main_process and cfg.progress)

    with tracking(acc), bar:
        task = bar.add_task(algo.name, total=cfg.iterations, completed=start, info="")
        for it in range(start, cfg.iterations):
            clock = [time.perf_counter()]
            # 1. prompts: the global batch, and this process's contiguous share of it
            pb = prompt_batch(learner.texts, cfg, it, rank, world)
            # 2. rollout: K responses per prompt (adjacent rows), each its own seeded stream
            sample = sample_responses(learner, pb.texts, pb.rows, cfg, it, guard, k=K)
            clock.append(time.perf_counter())
            # 3. score: the reward(s), clipped, minus the missing-EOS penalty
            sc = score_responses(learner, pb, sample, cfg, it, guard)
            components = {n: gather_rows(acc, v) for n, v in sc.components.items()}
            clock.append(time.perf_counter())
            # 4. forward (log π_ref; log π_θold, entropy) and gather the global batch
            ro = collect_rollout(learner, sample, sc.scores, sc.raw, cfg, acc, it, guard)
            clock.append(time.perf_counter())
            # 5. advantages: the learner's own, one per response
            adv = algo.advantages(ro, cfg, cfg.kl_coef)
            # 6. update: epochs over shuffled minibatches of the clipped-ratio loss
            stats = group_update(learner, ro, adv.advantages, cfg, algo.loss_kl_coef(cfg), algo.loss_kl_estimator,
                                 acc, it, guard)
            clock.append(time.perf_counter())
            # 7. metrics, checkpoint
            kl_ref = float((kl_k3(ro.old_logp, ro.ref_logp) * ro.mask).sum(1).mean())  # per response, ≥ 0
            metrics = group_metrics(algo.name, it, ro, adv, stats, kl_ref, cfg.kl_coef, K, components, clock,
                                    trainable_n, total_n)
            acc.log(metrics, step=it + 1)
            if (it + 1) % cfg.save_every == 0 or it + 1 == cfg.iterations:
                guard.last_good = save_checkpoint(run, learner, cfg, it + 1, guard)
            bar.update(task, advance=1, info=f"reward {metrics['objective/reward']:+.3f}  kl {kl_ref:.3f}")
    save_final(learner, cfg, acc)
    return run.out


# ---------------------------------------------------------------- 6. the update


def group_update(learner: Learner, ro: Rollout, advantages, cfg: GroupConfig, kl_coef: float, kl_estimator: str,
                 acc, it: int, guard: FiniteGuard) -> GroupUpdateStats:
    """``cfg.epochs`` passes over shuffled minibatches of the iteration's rows, one optimiser step each."""
    n_rows = ro.mask.size(0)
    totals = [0.0] * 5
    steps = 0
    for epoch in range(cfg.epochs):
        for mb in minibatches(cfg.seed, it, epoch, n_rows, cfg.minibatch_size):
            step = group_minibatch_step(learner, ro, advantages, mb, cfg, kl_coef, kl_estimator, acc, it, epoch, guard)
            totals = [t + s for t, s in zip(totals, step)]
            steps += 1
    return GroupUpdateStats(*(t / max(steps, 1) for t in totals), steps=steps)


def group_minibatch_step(learner: Learner, ro: Rollout, advantages, mb, cfg: GroupConfig, kl_coef: float,
                         kl_estimator: str, acc, it: int, epoch: int, guard: FiniteGuard) -> tuple[float, ...]:
    """One optimiser step on the minibatch rows ``mb``, this process's share in ``grad_accum_steps``
    micro-batches. The aggregation weights are computed over the whole minibatch, so accumulation
    and data parallelism give the step of one big batch. Returns the minibatch's (policy_loss,
    kl_loss, clip_frac, approx_kl, grad_norm)."""
    import torch

    world, rank = acc.num_processes, acc.process_index
    micro = cfg.minibatch_size // world // cfg.grad_accum_steps
    # × world: DDP's gradient is the mean over processes, the minibatch's loss their sum
    weights = aggregation_weights(ro.mask[mb], cfg.loss_aggregation, cfg.max_new_tokens) * world  # (M, R)
    mine, w_mine = mb[rank::world], weights[rank::world]
    where = f"update epoch {epoch + 1}"
    means = torch.zeros(4, device=acc.device)
    for a in range(cfg.grad_accum_steps):
        part = slice(a * micro, (a + 1) * micro)
        rows = mine[part].to(acc.device)
        sub = ro.select(rows)
        w = w_mine[part][:, :sub.mask.size(1)]
        last = a == cfg.grad_accum_steps - 1
        with acc.no_sync(learner.model) if (not last and world > 1) else contextlib.nullcontext():
            if cfg.logprob_chunk:  # the head in chunks: log-probs, never the (B, R, V) logits
                (logp, _), _ = learner.model(sub.input_ids, sub.attention_mask, sub.prompt_len, cfg.temperature,
                                             sub.response_ids, cfg.logprob_chunk)
                guard.check(logp, "log-probs", it + 1, where)
            else:
                logits, _ = learner.model(sub.input_ids, sub.attention_mask, sub.prompt_len, cfg.temperature)
                guard.check(logits, "logits", it + 1, where)
                logp = logprobs_from_logits(logits, sub.response_ids)
            out = group_policy_loss(logp, sub.old_logp, sub.ref_logp, advantages[rows], w, cfg.clip_range, kl_coef,
                                    kl_estimator)
            guard.check(out.loss, "loss", it + 1, where)
            acc.backward(out.loss)
        means += torch.stack([out.policy_loss, out.kl, out.clip_frac, out.approx_kl]).float() / world
    return optimizer_update(learner, acc, means, cfg.max_grad_norm)


# ---------------------------------------------------------------- 7. metrics


def group_metrics(name: str, it: int, ro: Rollout, adv: Advantages, stats: GroupUpdateStats, kl_ref: float,
                  beta: float, k: int, components: dict, clock: list[float], trainable_n: int, total_n: int) -> dict:
    """One row of ``metrics.jsonl``: PPO's names where the quantity is the same (``objective/…``,
    ``<name>/kl_ref``, ``<name>/approx_kl``, ``<name>/clip_frac``, ``response/…``, ``time/…``), each
    weighted reward as ``objective/reward/<reward>``."""
    mask = ro.mask
    n = mask.size(0)
    t0, t_gen, t_score, t_fwd, t_upd = clock
    tied = (group_view(ro.scores, k).std(1) == 0).float().mean()  # groups whose rewards are all equal: no signal
    return {
        "iteration": it + 1,
        "objective/reward": float(ro.raw.mean()),
        "objective/reward_std": float(ro.raw.std()) if n > 1 else 0.0,
        **{f"objective/reward/{c}": float(v.mean()) for c, v in components.items()},
        "objective/score": float(ro.scores.mean()),
        "objective/reward_penalised": float(adv.rewards.mean()),
        "objective/entropy": float(masked_mean(ro.entropy, mask)),
        "objective/kl_k1": float((kl_k1(ro.old_logp, ro.ref_logp) * mask).sum(1).mean()),
        "objective/eos_frac": float(ro.finished.float().mean()),
        f"{name}/kl_ref": kl_ref,
        f"{name}/approx_kl": stats.approx_kl,
        f"{name}/clip_frac": stats.clip_frac,
        f"{name}/policy_loss": stats.policy_loss,
        f"{name}/kl_loss": stats.kl_loss,
        f"{name}/grad_norm": stats.grad_norm,
        f"{name}/steps": stats.steps,
        f"{name}/advantage_abs": float(adv.advantages.abs().mean()),
        f"{name}/tied_groups": float(tied),
        "response/length": float(mask.sum(1).mean()),
        "kl_coef": beta,
        "time/rollout": t_gen - t0,
        "time/score": t_score - t_gen,
        "time/forward": t_fwd - t_score,
        "time/update": t_upd - t_fwd,
        "time/iteration": t_upd - t0,
        "params/trainable": trainable_n,
        "params/total": total_n,
    }
