"""PPO with a per-token KL penalty against the frozen original model (Ziegler et al. 2019;
Stiennon et al. 2020; Ouyang et al. 2022).

``run_ppo`` reads top to bottom; one iteration is

    1. prompts      — this iteration's slice of a seeded, shuffled prompt stream
    2. rollout      — sample one response per prompt (each row its own seeded stream)
    3. score        — the reward (a reward model or a function), minus the missing-EOS penalty
    4. forward      — log π_ref (reference); log π_θold, entropy and V_θold come from the sampler
                      (or from a forward pass of the policy, ``old_logprobs = "forward"``)
    5. gather       — every process holds the whole batch (the update is split by minibatch rows)
    6. penalise     — per-token rewards −β·KL_t, with the score on the last response token
    7. advantages   — GAE(γ, λ) over the response tokens, whitened over the batch
    8. update       — PPO epochs over shuffled minibatches (grad accumulation, clipping,
                      early stop on approx_kl)
    9. KL control, metrics, checkpoint

The loss of a minibatch is normalised by its total token count (over all micro-batches and all
processes), so gradient accumulation and data parallelism give the same update as one big batch.

Output directory: the final policy (``from_pretrained`` loads it), ``value_head.safetensors``,
``ppo_config.json``, ``metrics.jsonl`` and ``checkpoints/iter-NNNNNN/`` (written atomically:
temp dir, then rename). ``resume=True`` continues from the newest checkpoint and ends with the same
weights as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import NamedTuple

from rankloop.models import count_parameters, flush_denormals
from rankloop.rl.config import PPOConfig
from rankloop.rl.kl import kl_k1, kl_k3
from rankloop.ops import entropy_from_logits, logprobs_from_logits, masked_mean, masked_whiten
from rankloop.rl.loss import explained_variance, gae, kl_penalised_rewards, policy_loss, value_loss
from rankloop.rl.rewards import RewardFn
from rankloop.rl.rollout import Rollout
from rankloop.rl.steps import (Learner, build_learner, check_divisible, collect_rollout, kl_controller, minibatches,
                               open_run, optimizer_update, prompt_batch, sample_responses, save_checkpoint, save_final,
                               score_responses)
from rankloop.runtime import (FiniteGuard, NonFiniteError, check_fsdp_settings, make_accelerator, progress_bar,
                              tracking, trackers)

__all__ = ["PPOConfig", "NonFiniteError", "run_ppo"]


# ---------------------------------------------------------------- the typed records of an iteration


class UpdateStats(NamedTuple):
    """Means over the optimiser steps of one iteration's update (each step's value is the mean of its
    minibatch over every micro-batch and process)."""

    policy_loss: float
    value_loss: float
    value_clip_frac: float
    approx_kl: float
    clip_frac: float
    grad_norm: float
    epochs: int  # PPO epochs run (fewer than ppo_epochs after an early stop)
    early_stop: bool  # a minibatch's approx_kl passed target_approx_kl


# ---------------------------------------------------------------- the loop


def run_ppo(cfg: PPOConfig, reward_fn: RewardFn | None = None, prompts: list | None = None) -> Path:
    """Train; return the output directory (the final policy loads from it with ``from_pretrained``).

    ``reward_fn`` overrides ``cfg.reward``; ``prompts`` (``Prompt`` records or strings) overrides
    ``cfg.prompts``. On CPU, denormal floats are flushed to zero for the run (see
    ``rankloop.models.flush_denormals``).
    """
    with flush_denormals():
        return _train(cfg, reward_fn, prompts)


def _train(cfg: PPOConfig, reward_fn: RewardFn | None, prompts: list | None) -> Path:
    # FSDP-ready: the policy and its value head (or separate critic) sharded, the reference and a reward
    # model replicated; sampling and the rollout's forward on the gathered weights (see docs/gpu.md)
    acc = make_accelerator(trackers(cfg.output, "iteration", cfg.tensorboard), cfg.output, cfg, fsdp=True)
    check_fsdp_settings(acc, cfg)
    world, rank = acc.num_processes, acc.process_index
    check_divisible(cfg.batch_size, cfg.minibatch_size, cfg.grad_accum_steps, world)
    learner = build_learner(cfg, acc, reward_fn, prompts,
                            kl_controller(cfg.kl_control, cfg.kl_coef, cfg.kl_target, cfg.kl_horizon),
                            critic=cfg.critic, value_head_std=cfg.value_head_std)
    run, guard, start = open_run(cfg, learner, acc, "ppo")
    trainable_n, total_n = count_parameters(learner.policy)
    bar = progress_bar("ppo", enabled=acc.is_main_process and cfg.progress)

    with tracking(acc), bar:
        task = bar.add_task("ppo", total=cfg.iterations, completed=start, info="")
        for it in range(start, cfg.iterations):
            clock = [time.perf_counter()]
            # 1. prompts: the global batch, and this process's contiguous share of it
            pb = prompt_batch(learner.texts, cfg, it, rank, world)
            # 2. rollout: one response per prompt, each row its own seeded stream
            sample = sample_responses(learner, pb.texts, pb.rows, cfg, it, guard)
            clock.append(time.perf_counter())
            # 3. score: the reward, clipped, minus the missing-EOS penalty
            sc = score_responses(learner, pb, sample, cfg, it, guard)
            clock.append(time.perf_counter())
            # 4.–5. forward (log π_ref; log π_θold, entropy, V_θold) and gather the global batch
            ro = collect_rollout(learner, sample, sc.scores, sc.raw, cfg, acc, it, guard)
            clock.append(time.perf_counter())
            # 6. penalise: per-token rewards −β·KL_t, the score on the last response token
            beta = learner.kl_ctl.value
            rewards, _ = kl_penalised_rewards(ro.scores, ro.old_logp, ro.ref_logp, ro.mask, beta, cfg.kl_estimator)
            # 7. advantages: GAE(γ, λ), whitened over the batch
            advantages, returns = compute_advantages(rewards, ro.values, ro.mask, cfg)
            # 8. update: PPO epochs over shuffled minibatches
            stats = ppo_update(learner, ro, advantages, returns, cfg, acc, it, guard)
            clock.append(time.perf_counter())
            # 9. KL control, metrics, checkpoint
            kl_ref = float((kl_k3(ro.old_logp, ro.ref_logp) * ro.mask).sum(1).mean())  # per response, ≥ 0
            learner.kl_ctl.update(kl_ref, cfg.batch_size)
            metrics = iteration_metrics(it, ro, rewards, returns, stats, kl_ref, beta, learner.kl_ctl.value, clock,
                                        trainable_n, total_n)
            acc.log(metrics, step=it + 1)
            if (it + 1) % cfg.save_every == 0 or it + 1 == cfg.iterations:
                guard.last_good = save_checkpoint(run, learner, cfg, it + 1, guard)
            bar.update(task, advance=1, info=f"reward {metrics['objective/reward']:+.3f}  "
                       f"kl {kl_ref:.3f}  β {beta:.4f}")
    save_final(learner, cfg, acc)
    return run.out


# ---------------------------------------------------------------- 7.–8. advantages, update


def compute_advantages(rewards, values, mask, cfg: PPOConfig):
    """GAE(γ, λ) over the response tokens, whitened over the whole batch: (N, R) advantages, returns."""
    advantages, returns = gae(rewards, values, mask, cfg.gamma, cfg.lam)
    if cfg.whiten_advantages:
        advantages = masked_whiten(advantages, mask)
    return advantages, returns


def ppo_update(learner: Learner, ro: Rollout, advantages, returns, cfg: PPOConfig, acc, it: int,
               guard: FiniteGuard) -> UpdateStats:
    """PPO epochs over shuffled minibatches, one optimiser step each; stops the epochs early once a
    minibatch's approx_kl passes ``target_approx_kl``."""
    totals = [0.0] * 6  # Σ over optimiser steps of the first six UpdateStats fields
    steps = epochs = 0
    early_stop = False
    for epoch in range(cfg.ppo_epochs):
        for mb in minibatches(cfg.seed, it, epoch, cfg.batch_size, cfg.minibatch_size):
            step = minibatch_step(learner, ro, advantages, returns, mb, cfg, acc, it, epoch, guard)
            totals = [t + s for t, s in zip(totals, step)]
            steps += 1
            if cfg.target_approx_kl is not None and step[3] > cfg.target_approx_kl:
                early_stop = True
                break
        epochs += 1
        if early_stop:
            break
    n = max(steps, 1)
    return UpdateStats(*(t / n for t in totals), epochs=epochs, early_stop=early_stop)


def minibatch_step(learner: Learner, ro: Rollout, advantages, returns, mb, cfg: PPOConfig, acc, it: int,
                   epoch: int, guard: FiniteGuard) -> tuple[float, ...]:
    """One optimiser step on the minibatch rows ``mb`` (global indices), this process's share of
    them in ``grad_accum_steps`` micro-batches. The loss is normalised by the whole minibatch's token
    count, so accumulation and data parallelism give the step of one big batch. Returns the
    minibatch's (policy_loss, value_loss, value_clip_frac, approx_kl, clip_frac, grad_norm)."""
    import torch

    world, rank = acc.num_processes, acc.process_index
    micro = cfg.minibatch_size // world // cfg.grad_accum_steps
    n_tokens = ro.mask[mb].sum()  # whole minibatch, all processes
    mine = mb[rank::world]
    where = f"update epoch {epoch + 1}"
    means = torch.zeros(5, device=acc.device)  # this process's share of pg, vf, vclip, approx_kl, clip_frac
    for a in range(cfg.grad_accum_steps):
        rows = mine[a * micro:(a + 1) * micro].to(acc.device)
        sub = ro.select(rows)
        adv, ret = advantages[rows][:, :sub.mask.size(1)], returns[rows][:, :sub.mask.size(1)]
        last = a == cfg.grad_accum_steps - 1
        with acc.no_sync(learner.model) if (not last and world > 1) else contextlib.nullcontext():
            if cfg.logprob_chunk:  # the head in chunks: log-probs (and entropy), never the (B, R, V) logits
                (logp, entropy), values = learner.model(sub.input_ids, sub.attention_mask, sub.prompt_len,
                                                        cfg.temperature, sub.response_ids, cfg.logprob_chunk,
                                                        entropy=bool(cfg.ent_coef))
                guard.check(logp, "log-probs", it + 1, where)
            else:
                logits, values = learner.model(sub.input_ids, sub.attention_mask, sub.prompt_len, cfg.temperature)
                guard.check(logits, "logits", it + 1, where)
                logp = logprobs_from_logits(logits, sub.response_ids)
            guard.check(values, "values", it + 1, where)
            denom = n_tokens / world  # each process's share is scaled by world: DDP's gradient mean is the sum
            pg, clip_frac, approx_kl = policy_loss(logp, sub.old_logp, adv, sub.mask, cfg.clip_range, denom)
            vf, vclip = value_loss(values.float(), sub.values, ret, sub.mask, cfg.clip_range_value, denom)
            loss = pg + cfg.vf_coef * vf
            if cfg.ent_coef:
                ent = entropy if cfg.logprob_chunk else entropy_from_logits(logits)
                loss = loss - cfg.ent_coef * masked_mean(ent, sub.mask, denom)
            guard.check(loss, "loss", it + 1, where)
            acc.backward(loss)
        means += torch.stack([pg.detach(), vf.detach(), vclip, approx_kl, clip_frac]).float() / world
    return optimizer_update(learner, acc, means, cfg.max_grad_norm)


# ---------------------------------------------------------------- 9. metrics, checkpoints, the final policy


def iteration_metrics(it: int, ro: Rollout, rewards, returns, stats: UpdateStats, kl_ref: float, beta: float,
                      beta_next: float, clock: list[float], trainable_n: int, total_n: int) -> dict:
    """One row of ``metrics.jsonl`` (names as in DESIGN.md: objective/, ppo/, value/, response/, time/)."""
    mask = ro.mask
    n = mask.size(0)
    t0, t_gen, t_score, t_fwd, t_upd = clock
    return {
        "iteration": it + 1,
        "objective/reward": float(ro.raw.mean()),
        "objective/reward_std": float(ro.raw.std()) if n > 1 else 0.0,
        "objective/score": float(ro.scores.mean()),
        "objective/reward_penalised": float((rewards * mask).sum(1).mean()),
        "objective/entropy": float(masked_mean(ro.entropy, mask)),
        "objective/kl_k1": float((kl_k1(ro.old_logp, ro.ref_logp) * mask).sum(1).mean()),
        "objective/eos_frac": float(ro.finished.float().mean()),
        "ppo/kl_ref": kl_ref,
        "ppo/approx_kl": stats.approx_kl,
        "ppo/clip_frac": stats.clip_frac,
        "ppo/policy_loss": stats.policy_loss,
        "ppo/value_loss": stats.value_loss,
        "ppo/value_clip_frac": stats.value_clip_frac,
        "ppo/grad_norm": stats.grad_norm,
        "ppo/epochs": stats.epochs,
        "ppo/early_stop": stats.early_stop,
        "value/explained_variance": float(explained_variance(ro.values, returns, mask)),
        "value/mean": float(masked_mean(ro.values, mask)),
        "response/length": float(mask.sum(1).mean()),
        "kl_coef": beta,
        "kl_coef_next": beta_next,
        "time/rollout": t_gen - t0,
        "time/score": t_score - t_gen,
        "time/forward": t_fwd - t_score,
        "time/update": t_upd - t_fwd,
        "time/iteration": t_upd - t0,
        "params/trainable": trainable_n,
        "params/total": total_n,
    }
