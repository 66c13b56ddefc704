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
import json
import time
from pathlib import Path
from typing import Any, NamedTuple

from rankloop.config import ConfigError, save_config
from rankloop.io import read_prompts, write_json
from rankloop.models import (adamw, apply_lora, count_parameters, flush_denormals, freeze_bottom, load_causal_lm,
                             load_tokenizer, prefer_cpu_attention)
from rankloop.records import Prompt
from rankloop.rl.config import PPOConfig
from rankloop.rl.kl import AdaptiveKLController, FixedKLController, kl_k1, kl_k3
from rankloop.rl.loss import (entropy_from_logits, explained_variance, gae, kl_penalised_rewards,
                              logprobs_from_logits, masked_mean, masked_whiten, policy_loss, value_loss)
from rankloop.rl.rewards import RewardFn, call_reward, load_reward
from rankloop.rl.rollout import (PolicyWithValue, Reference, Rollout, forward_in_chunks, gather_rollout,
                                 make_critic)
from rankloop.runtime import (FiniteGuard, NonFiniteError, RunDir, make_accelerator, progress_bar, rng_state,
                              set_rng_state, tracking, trackers)
from rankloop.sampling import SampleBatch, default_stop_ids, encode_prompts, generate, prompt_text

__all__ = ["PPOConfig", "NonFiniteError", "run_ppo"]


RESUME_SAFE = {"iterations", "resume", "progress", "tensorboard", "save_every", "keep_checkpoints"}


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


class Learner(NamedTuple):
    """What the loop trains and scores with, built once by ``build_learner``."""

    tokenizer: Any
    texts: list[str]  # every prompt, rendered as the policy reads it
    stop_ids: list[int]
    model: Any  # PolicyWithValue, as prepared by accelerate (DDP-wrapped with several processes)
    policy: Any  # the same PolicyWithValue, unwrapped
    reference: Reference
    optimizer: Any
    trainable: list  # parameters with requires_grad
    kl_ctl: FixedKLController | AdaptiveKLController
    reward_fn: RewardFn


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
    acc = make_accelerator(trackers(cfg.output, "iteration", cfg.tensorboard), cfg.output)
    world, rank = acc.num_processes, acc.process_index
    check_divisible(cfg, world)
    learner = build_learner(cfg, acc, reward_fn, prompts)
    run = RunDir(cfg.output, acc, prefix="iter", complete="state.json", keep=cfg.keep_checkpoints)
    guard = FiniteGuard("iteration")
    guard.last_good = run.latest() if cfg.resume else None
    start = restore(cfg, learner, acc, guard.last_good) if guard.last_good is not None else 0
    run.begin(resumed_at=start)
    if acc.is_main_process:
        save_config(cfg, run.out / "ppo_config.json")
    trainable_n, total_n = count_parameters(learner.policy)
    bar = progress_bar("ppo", enabled=acc.is_main_process and cfg.progress)

    with tracking(acc), bar:
        task = bar.add_task("ppo", total=cfg.iterations, completed=start, info="")
        for it in range(start, cfg.iterations):
            clock = [time.perf_counter()]
            # 1. prompts: the global batch, and this process's contiguous share of it
            rows, batch = prompt_batch(learner.texts, cfg, it, rank, world)
            # 2. rollout: one response per prompt, each row its own seeded stream
            sample = sample_responses(learner, batch, rows, cfg, it, guard)
            clock.append(time.perf_counter())
            # 3. score: the reward, clipped, minus the missing-EOS penalty
            raw, scores = score_responses(learner.reward_fn, batch, sample, cfg, it, guard)
            clock.append(time.perf_counter())
            # 4.–5. forward (log π_ref; log π_θold, entropy, V_θold) and gather the global batch
            ro = collect_rollout(learner, sample, scores, raw, cfg, acc, it, guard)
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


# ---------------------------------------------------------------- 0. set-up and resume


def check_divisible(cfg: PPOConfig, world: int) -> None:
    if cfg.batch_size % world or cfg.minibatch_size % (world * cfg.grad_accum_steps):
        raise ConfigError(f"batch_size ({cfg.batch_size}) and minibatch_size ({cfg.minibatch_size}) must be "
                          f"divisible by processes × grad_accum_steps ({world} × {cfg.grad_accum_steps})")


def build_learner(cfg: PPOConfig, acc, reward_fn: RewardFn | None, prompts: list | None) -> Learner:
    """Prompts, reward, tokenizer, policy + value head, reference, optimiser and KL controller."""
    import torch

    if prompts is None:
        if cfg.prompts is None:
            raise ConfigError("no prompts: set prompts (a JSONL file)")
        prompts = read_prompts(cfg.prompts)
    if not prompts:
        raise ConfigError("the prompt set is empty")
    if reward_fn is None:
        if cfg.reward is None:
            raise ConfigError("no reward: set reward (a reward-model directory or module:function)")
        reward_fn = load_reward(cfg.reward, batch_size=cfg.reward_batch_size, normalise=cfg.reward_normalise)

    tokenizer = load_tokenizer(cfg.policy, padding_side="left")
    texts = [prompt_text(p, tokenizer) if isinstance(p, Prompt) else str(p) for p in prompts]
    encode_prompts(tokenizer, texts, cfg.max_prompt_tokens, cfg.truncate_prompts)  # fail now on an over-long prompt

    torch.manual_seed(cfg.seed)  # the value head's and LoRA's initialisation
    device = acc.device
    lm = load_causal_lm(cfg.policy, dtype=cfg.dtype, tokenizer=tokenizer)
    prefer_cpu_attention(lm, device)  # before any copy: the reference and a critic inherit it
    stop_ids = cfg.stop_token_ids if cfg.stop_token_ids is not None else default_stop_ids(lm, tokenizer)
    critic = make_critic(lm) if cfg.critic == "separate" else None
    if cfg.lora:
        lm = apply_lora(lm, r=cfg.lora_r, alpha=cfg.lora_alpha, task="causal")
    reference = build_reference(cfg, lm, tokenizer, device)
    if cfg.freeze_layers:
        freeze_bottom(lm.get_base_model() if cfg.lora else lm, cfg.freeze_layers)
    policy = PolicyWithValue(lm, critic=critic, value_head_std=cfg.value_head_std, pack=cfg.pack).to(device)
    policy.eval()  # no dropout: the rollout's log-probs and the update's must be of one distribution
    reference.lm.to(device)
    trainable = [p for p in policy.parameters() if p.requires_grad]
    optimizer = adamw(trainable, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, eps=cfg.adam_eps)
    model, optimizer = acc.prepare(policy, optimizer)
    kl_ctl = (AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon) if cfg.kl_control == "adaptive"
              else FixedKLController(cfg.kl_coef))
    return Learner(tokenizer, texts, stop_ids, model, acc.unwrap_model(model), reference, optimizer, trainable,
                   kl_ctl, reward_fn)


def build_reference(cfg: PPOConfig, lm, tokenizer, device) -> Reference:
    """π_ref: another model (``cfg.reference``), the adapter-free weights under LoRA (no second copy
    in memory), or a frozen copy of the initial policy."""
    if cfg.reference is not None and cfg.reference != cfg.policy:
        ref_lm = load_causal_lm(cfg.reference, dtype=cfg.dtype, tokenizer=tokenizer)
        prefer_cpu_attention(ref_lm, device)
        return Reference(ref_lm, shares_policy=False, pack=cfg.pack)
    if cfg.lora:
        return Reference(lm, shares_policy=True, pack=cfg.pack)
    return Reference.frozen_copy(lm, pack=cfg.pack)


def restore(cfg: PPOConfig, learner: Learner, acc, ckpt: Path) -> int:
    """Load a checkpoint's weights, optimiser, KL controller and RNG; return its iteration."""
    import torch
    from safetensors.torch import load_file

    state = json.loads((ckpt / "state.json").read_text())
    saved = {k: v for k, v in state["config"].items() if k not in RESUME_SAFE}
    now = {k: v for k, v in cfg.model_dump().items() if k not in RESUME_SAFE}
    diff = sorted(k for k in now if saved.get(k) != now[k])
    if diff:
        raise ConfigError(f"--resume with a config that differs from the checkpoint's in {diff}; "
                          f"use the original settings (see {ckpt / 'state.json'})")
    weights = load_file(str(ckpt / "trainable.safetensors"))
    _, unexpected = learner.policy.load_state_dict(weights, strict=False)
    names = {n for n, p in learner.policy.named_parameters() if p.requires_grad}
    if unexpected or not names <= set(weights):
        raise RuntimeError(f"{ckpt}: checkpoint does not match the model "
                           f"(unexpected {unexpected[:5]}, missing {sorted(names - set(weights))[:5]})")
    learner.optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", map_location=acc.device, weights_only=True))
    learner.kl_ctl.load_state_dict(state["kl_controller"])
    set_rng_state(torch.load(ckpt / "rng.pt", weights_only=False))
    return int(state["iteration"])


# ---------------------------------------------------------------- 1.–3. prompts, rollout, score


def _row_seed(seed: int, iteration: int, row: int) -> int:
    return (seed * 0x9E3779B1 + iteration * 0x85EBCA77 + row * 0xC2B2AE3D + 1) % (2 ** 62)


def _prompt_indices(n_prompts: int, seed: int, iteration: int, batch_size: int) -> list[int]:
    """Global prompt indices of an iteration: consecutive slices of seeded per-epoch shuffles."""
    import torch

    out: list[int] = []
    start = iteration * batch_size
    while len(out) < batch_size:
        epoch, offset = divmod(start + len(out), n_prompts)
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        perm = torch.randperm(n_prompts, generator=g).tolist()
        out.extend(perm[offset:offset + batch_size - len(out)])
    return out


def prompt_batch(texts: list[str], cfg: PPOConfig, it: int, rank: int, world: int) -> tuple[list[int], list[str]]:
    """This process's rows of the iteration's global batch (a contiguous share) and their prompts."""
    idx = _prompt_indices(len(texts), cfg.seed, it, cfg.batch_size)
    local_n = cfg.batch_size // world
    rows = list(range(rank * local_n, (rank + 1) * local_n))
    return rows, [texts[idx[r]] for r in rows]


def sample_responses(learner: Learner, prompts: list[str], rows: list[int], cfg: PPOConfig, it: int,
                     guard: FiniteGuard) -> SampleBatch:
    """One response per prompt from the current policy; row r of iteration it draws from its own
    seeded stream, so the samples do not depend on the batch's split over processes."""
    try:
        return generate(learner.policy.lm, learner.tokenizer, prompts, max_new_tokens=cfg.max_new_tokens,
                        temperature=cfg.temperature, stop_token_ids=learner.stop_ids,
                        batch_size=cfg.generation_batch_size, max_prompt_tokens=cfg.max_prompt_tokens,
                        truncate_prompts=cfg.truncate_prompts, row_seeds=[_row_seed(cfg.seed, it, r) for r in rows],
                        policy_stats=cfg.old_logprobs == "sampler")
    except FloatingPointError as e:  # the sampler's own non-finite-logits check
        raise guard.error(str(e).removeprefix("non-finite "), it + 1, "rollout") from None


def score_responses(reward_fn: RewardFn, prompts: list[str], sample: SampleBatch, cfg: PPOConfig, it: int,
                    guard: FiniteGuard):
    """raw (B,): the reward as returned; scores (B,): clipped, minus the missing-EOS penalty."""
    import torch

    raw = torch.tensor(call_reward(reward_fn, prompts, sample.texts), dtype=torch.float32)
    guard.check(raw, "rewards", it + 1, "score")
    scores = raw.clone()
    if cfg.reward_clip is not None:
        scores = scores.clamp(-cfg.reward_clip, cfg.reward_clip)
    if cfg.missing_eos_penalty is not None:
        scores = scores - cfg.missing_eos_penalty * (~sample.finished.cpu()).float()
    return raw, scores


def collect_rollout(learner: Learner, sample: SampleBatch, scores, raw, cfg: PPOConfig, acc, it: int,
                    guard: FiniteGuard) -> Rollout:
    """log π_ref from the reference; log π_θold, entropy and V_θold from the sampler (or a forward
    pass, ``old_logprobs = "forward"``); then every process gets the whole batch."""
    try:
        fw = forward_in_chunks(learner.policy, learner.reference, sample.input_ids.to(acc.device),
                               sample.attention_mask.to(acc.device), sample.response_ids.to(acc.device),
                               sample.prompt_ids.size(1), cfg.temperature, cfg.forward_batch_size,
                               sampled=sample if cfg.old_logprobs == "sampler" else None)
    except FloatingPointError as e:
        raise guard.error(str(e), it + 1, "forward") from None
    return gather_rollout(acc, sample, fw, scores, raw)


# ---------------------------------------------------------------- 7.–8. advantages, update


def compute_advantages(rewards, values, mask, cfg: PPOConfig):
    """GAE(γ, λ) over the response tokens, whitened over the whole batch: (N, R) advantages, returns."""
    advantages, returns = gae(rewards, values, mask, cfg.gamma, cfg.lam)
    if cfg.whiten_advantages:
        advantages = masked_whiten(advantages, mask)
    return advantages, returns


def minibatches(cfg: PPOConfig, it: int, epoch: int):
    """The row indices of each minibatch of one PPO epoch: a seeded shuffle of the global batch."""
    import torch

    g = torch.Generator().manual_seed(_row_seed(cfg.seed, it, 10_000 + epoch))
    perm = torch.randperm(cfg.batch_size, generator=g)
    return [perm[s:s + cfg.minibatch_size] for s in range(0, cfg.batch_size, cfg.minibatch_size)]


def ppo_update(learner: Learner, ro: Rollout, advantages, returns, cfg: PPOConfig, acc, it: int,
               guard: FiniteGuard) -> UpdateStats:
    """PPO epochs over shuffled minibatches, one optimiser step each; stops the epochs early once a
    minibatch's approx_kl passes ``target_approx_kl``."""
    totals = [0.0] * 6  # Σ over optimiser steps of the first six UpdateStats fields
    steps = epochs = 0
    early_stop = False
    for epoch in range(cfg.ppo_epochs):
        for mb in minibatches(cfg, it, epoch):
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
            logits, values = learner.model(sub.input_ids, sub.attention_mask, sub.prompt_len, cfg.temperature)
            guard.check(logits, "logits", it + 1, where)
            guard.check(values, "values", it + 1, where)
            logp = logprobs_from_logits(logits, sub.response_ids)
            denom = n_tokens / world  # each process's share is scaled by world: DDP's gradient mean is the sum
            pg, clip_frac, approx_kl = policy_loss(logp, sub.old_logp, adv, sub.mask, cfg.clip_range, denom)
            vf, vclip = value_loss(values.float(), sub.values, ret, sub.mask, cfg.clip_range_value, denom)
            loss = pg + cfg.vf_coef * vf
            if cfg.ent_coef:
                loss = loss - cfg.ent_coef * masked_mean(entropy_from_logits(logits), sub.mask, denom)
            guard.check(loss, "loss", it + 1, where)
            acc.backward(loss)
        means += torch.stack([pg.detach(), vf.detach(), vclip, approx_kl, clip_frac]).float() / world
    grad_norm = 0.0
    if cfg.max_grad_norm is not None:
        grad_norm = float(acc.clip_grad_norm_(learner.trainable, cfg.max_grad_norm))
    learner.optimizer.step()
    learner.optimizer.zero_grad(set_to_none=True)
    if world > 1:
        means = acc.reduce(means, "sum")
    return (*means.tolist(), grad_norm)


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


def save_checkpoint(run: RunDir, learner: Learner, cfg: PPOConfig, iteration: int, guard: FiniteGuard) -> Path:
    """The trainable weights, optimiser, RNG and KL controller after ``iteration``, written atomically;
    refused (naming the weight) if any weight is non-finite, so the last good checkpoint stays last."""
    import torch
    from safetensors.torch import save_file

    for name, p in learner.policy.named_parameters():
        guard.check(p, f"weights ({name})", iteration, "checkpoint")

    def write(tmp: Path) -> None:
        weights = {n: p.detach().cpu().contiguous() for n, p in learner.policy.named_parameters() if p.requires_grad}
        save_file(weights, str(tmp / "trainable.safetensors"))
        torch.save(learner.optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(rng_state(), tmp / "rng.pt")
        write_json(tmp / "state.json", {"iteration": iteration, "kl_controller": learner.kl_ctl.state_dict(),
                                        "config": cfg.model_dump()})

    return run.save(iteration, write)


def save_final(learner: Learner, cfg: PPOConfig, acc) -> None:
    """The final policy, loadable with ``from_pretrained`` (LoRA merged; the adapter also kept in
    ``adapter/``), its tokenizer, and ``value_head.safetensors`` beside it."""
    from safetensors.torch import save_file

    out = Path(cfg.output)
    if acc.is_main_process:
        final_lm = learner.policy.lm
        if cfg.lora:
            final_lm.save_pretrained(str(out / "adapter"))
            final_lm = final_lm.merge_and_unload()
        final_lm.save_pretrained(str(out))
        learner.tokenizer.save_pretrained(str(out))
        save_file({k: v.detach().cpu().contiguous() for k, v in learner.policy.value_state_dict().items()},
                  str(out / "value_head.safetensors"))
    acc.wait_for_everyone()
