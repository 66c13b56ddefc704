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
import os
import random
import shutil
import time
from pathlib import Path
from typing import Callable, Literal, Sequence

from pydantic import Field, model_validator

from rankloop.config import Config, ConfigError


class PPOConfig(Config):
    """Every knob of ``rankloop ppo``. Loss functions take plain numbers from here, never the config."""

    # --- inputs and outputs
    policy: str = Field(description="Initial policy: a Hugging Face model id or a local path.")
    reference: str | None = Field(None, description="The frozen reference π_ref of the KL penalty (same tokenizer "
                                  "as the policy). Default: the initial policy. In later rounds of the loop this "
                                  "is the original model, so the KL stays anchored to it (InstructGPT's π^SFT).")
    reward: str | None = Field(None, description="A rankloop reward-model directory, or 'module:function' / "
                               "'file.py:function' scoring (prompts, responses) -> list[float]. "
                               "Not needed when run_ppo is given a reward function.")
    prompts: str | None = Field(None, description="Prompts JSONL (rankloop's prompt format).")
    output: str = Field(description="Output directory: final policy, value head, metrics, checkpoints.")

    # --- run length and data
    iterations: int = Field(10, ge=1, description="PPO iterations (rollout + update).")
    batch_size: int = Field(64, ge=1, description="Prompts (= responses) per iteration, over all processes.")
    seed: int = Field(0, description="Seeds initialisation, prompt order and every sample.")

    # --- sampling (rollout)
    max_new_tokens: int = Field(48, ge=1, description="Response length limit in tokens.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature; log-probs are taken at the same "
                               "temperature so the KL is measured on the distribution that was sampled.")
    stop_token_ids: list[int] | None = Field(None, description="Tokens that end a response; default: the "
                                             "model's generation-config EOS id(s).")
    max_prompt_tokens: int = Field(256, ge=1, description="Longest prompt in tokens.")
    truncate_prompts: bool = Field(False, description="Keep the last max_prompt_tokens tokens of an over-long "
                                   "prompt instead of stopping with an error.")
    generation_batch_size: int = Field(64, ge=1, description="Rows decoded together.")
    forward_batch_size: int = Field(64, ge=1, description="Rows per no-grad forward pass during the rollout.")
    old_logprobs: Literal["sampler", "forward"] = Field(
        "sampler", description="Where log π_θold, its entropy and V_θold come from: 'sampler' takes them from the "
        "decode loop (no second policy forward pass; as TRL does); 'forward' recomputes them with a teacher-forced "
        "forward pass — slower, but bit-identical to the update's and the reference's arithmetic, so the KL to an "
        "identical reference is exactly 0 rather than ~1e-7.")
    pack: bool = Field(True, description="Teacher-forced passes (update, reference) on packed rows: each row's "
                       "real tokens end to end, a block-diagonal mask keeping them apart — the same values "
                       "without computing the prompts' left padding or the padding after a stop.")

    # --- reward
    missing_eos_penalty: float | None = Field(None, description="Subtracted from the score of a response that "
                                              "never reached a stop token (TRL's missing_eos_penalty).")
    reward_batch_size: int = Field(32, ge=1, description="Batch size for reward-model scoring.")
    reward_normalise: bool = Field(True, description="Apply the reward model's saved normalisation.")
    reward_clip: float | None = Field(None, gt=0, description="Clip scores to [-reward_clip, reward_clip].")

    # --- KL penalty
    kl_coef: float = Field(0.05, ge=0, description="β: initial (adaptive) or constant (fixed) KL coefficient.")
    kl_control: Literal["fixed", "adaptive"] = Field("fixed", description="'adaptive' = Ziegler et al. 2019's "
                                                     "proportional controller.")
    kl_target: float = Field(6.0, gt=0, description="Target KL per response (nats), adaptive control only.")
    kl_horizon: float = Field(10000, gt=0, description="Controller horizon in samples, adaptive control only.")
    kl_estimator: Literal["k1", "k2", "k3"] = Field("k1", description="Per-token KL estimator in the reward "
                                                    "penalty: only k1 is accepted (as a reward, k2 and k3 give a "
                                                    "biased KL gradient); ppo/kl_ref is always reported with k3, ≥ 0.")

    # --- PPO
    ppo_epochs: int = Field(4, ge=1, description="Passes over the batch per iteration.")
    minibatch_size: int = Field(16, ge=1, description="Rows per optimiser step (over all processes).")
    grad_accum_steps: int = Field(1, ge=1, description="Micro-batches per minibatch (same result, less memory).")
    learning_rate: float = Field(1e-5, gt=0, description="AdamW learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    adam_eps: float = Field(1e-8, gt=0, description="AdamW epsilon.")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Gradient clipping by global norm (None = off).")
    clip_range: float = Field(0.2, gt=0, description="ε of the clipped surrogate.")
    clip_range_value: float | None = Field(0.2, gt=0, description="Value clipping around V_old (None = off).")
    vf_coef: float = Field(0.1, ge=0, description="Weight of the value loss.")
    ent_coef: float = Field(0.0, ge=0, description="Weight of the entropy bonus.")
    gamma: float = Field(1.0, ge=0, le=1, description="Discount γ.")
    lam: float = Field(0.95, ge=0, le=1, description="GAE λ.")
    whiten_advantages: bool = Field(True, description="Whiten advantages over the batch.")
    target_approx_kl: float | None = Field(None, gt=0, description="Stop this iteration's PPO epochs once a "
                                           "minibatch's approx_kl exceeds this.")

    # --- model
    dtype: str = Field("float32", description="Weights dtype: float32, bfloat16 or float16.")
    freeze_layers: int = Field(0, description="Freeze the embeddings and the first N transformer blocks "
                               "(negative: all but the last |N|).")
    lora: bool = Field(False, description="Train LoRA adapters; the reference is the adapter-free model.")
    lora_r: int = Field(8, ge=1, description="LoRA rank.")
    lora_alpha: int = Field(16, ge=1, description="LoRA alpha.")
    critic: Literal["shared", "separate"] = Field("shared", description="'shared': value head on the policy's "
                                                  "backbone; 'separate': on its own copy of the backbone.")
    value_head_std: float = Field(0.0, ge=0, description="Init std of the value head (0 = zeros).")

    # --- checkpoints and logging
    save_every: int = Field(1, ge=1, description="Checkpoint every N iterations (and at the end).")
    keep_checkpoints: int = Field(2, ge=1, description="Checkpoints kept on disk.")
    resume: bool = Field(False, description="Continue from the newest checkpoint in output/checkpoints.")
    tensorboard: bool = Field(True, description="Also log to TensorBoard when it is installed.")
    progress: bool = Field(True, description="Show a progress bar.")

    @model_validator(mode="after")
    def _check(self) -> "PPOConfig":
        if self.minibatch_size > self.batch_size:
            raise ValueError(f"minibatch_size ({self.minibatch_size}) > batch_size ({self.batch_size})")
        if self.batch_size % self.minibatch_size:
            raise ValueError(f"batch_size ({self.batch_size}) must be a multiple of minibatch_size "
                             f"({self.minibatch_size})")
        if self.minibatch_size % self.grad_accum_steps:
            raise ValueError(f"minibatch_size ({self.minibatch_size}) must be a multiple of grad_accum_steps "
                             f"({self.grad_accum_steps})")
        if self.lora and self.critic == "separate":
            raise ValueError("critic='separate' with lora is not supported; use the shared value head")
        if self.kl_estimator != "k1":  # E_π[k ∇log π] = ∇KL holds for k1 only (docs/ppo.md, "KL")
            raise ValueError(f"kl_estimator={self.kl_estimator!r} as the reward penalty biases the policy gradient "
                             "away from the KL's; use 'k1' (k3 is what ppo/kl_ref reports anyway)")
        return self


class NonFiniteError(FloatingPointError):
    """NaN/inf in logits, rewards, values or the loss; names the step and the last good checkpoint."""


RESUME_SAFE = {"iterations", "resume", "progress", "tensorboard", "save_every", "keep_checkpoints"}


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


def _latest_checkpoint(ckpt_dir: Path) -> Path | None:
    done = sorted(p for p in ckpt_dir.glob("iter-*") if p.is_dir() and (p / "state.json").exists())
    return done[-1] if done else None


def run_ppo(cfg: PPOConfig, reward_fn: Callable[[list[str], list[str]], Sequence[float]] | None = None,
            prompts: list | None = None) -> Path:
    """Train; return the output directory (the final policy loads from it with ``from_pretrained``).

    ``reward_fn`` overrides ``cfg.reward``; ``prompts`` (``Prompt`` records or strings) overrides
    ``cfg.prompts``. On CPU, denormal floats are flushed to zero for the run (see
    ``rankloop.models.flush_denormals``).
    """
    from rankloop.models import flush_denormals

    with flush_denormals():
        return _run_ppo(cfg, reward_fn, prompts)


def _run_ppo(cfg: PPOConfig, reward_fn, prompts) -> Path:
    import torch
    from accelerate import Accelerator
    from safetensors.torch import load_file, save_file

    from rankloop.config import save_config
    from rankloop.io import read_prompts, write_json
    from rankloop.models import (adamw, apply_lora, count_parameters, freeze_bottom, load_causal_lm, load_tokenizer,
                                 prefer_cpu_attention)
    from rankloop.records import Prompt
    from rankloop.rl.kl import AdaptiveKLController, FixedKLController, kl_k1, kl_k3
    from rankloop.rl.loss import (entropy_from_logits, explained_variance, gae, kl_penalised_rewards,
                                  logprobs_from_logits, masked_mean, masked_whiten, policy_loss, value_loss)
    from rankloop.rl.rewards import call_reward, load_reward
    from rankloop.rl.rollout import PolicyWithValue, Reference, Rollout, forward_in_chunks, make_critic
    from rankloop.sampling import generate, prompt_text

    # Several processes and no GPU (torchrun / accelerate launch on CPU): data-parallel over gloo.
    cpu_ddp = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    accelerator = Accelerator(cpu=cpu_ddp)
    world, rank, main = accelerator.num_processes, accelerator.process_index, accelerator.is_main_process
    device = accelerator.device
    if cfg.batch_size % world or cfg.minibatch_size % (world * cfg.grad_accum_steps):
        raise ConfigError(f"batch_size ({cfg.batch_size}) and minibatch_size ({cfg.minibatch_size}) must be "
                          f"divisible by processes × grad_accum_steps ({world} × {cfg.grad_accum_steps})")
    out_dir = Path(cfg.output)
    ckpt_dir = out_dir / "checkpoints"

    # ---- 0. set-up: prompts, reward, tokenizer, policy + value head, reference, optimiser
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
    # Fail before any training on an over-long prompt, naming it.
    from rankloop.sampling import encode_prompts

    encode_prompts(tokenizer, texts, cfg.max_prompt_tokens, cfg.truncate_prompts)

    torch.manual_seed(cfg.seed)
    lm = load_causal_lm(cfg.policy, dtype=cfg.dtype, tokenizer=tokenizer)
    prefer_cpu_attention(lm, device)  # before any copy: the reference and a critic inherit it
    stop_ids = cfg.stop_token_ids
    if stop_ids is None:
        from rankloop.sampling import default_stop_ids

        stop_ids = default_stop_ids(lm, tokenizer)
    critic = make_critic(lm) if cfg.critic == "separate" else None
    separate_ref = cfg.reference is not None and cfg.reference != cfg.policy
    if cfg.lora:
        lm = apply_lora(lm, r=cfg.lora_r, alpha=cfg.lora_alpha, task="causal")
    if separate_ref:
        ref_lm = load_causal_lm(cfg.reference, dtype=cfg.dtype, tokenizer=tokenizer)
        prefer_cpu_attention(ref_lm, device)
        reference = Reference(ref_lm, shares_policy=False, pack=cfg.pack)
    elif cfg.lora:  # the adapter-free weights are the reference: no second copy in memory
        reference = Reference(lm, shares_policy=True, pack=cfg.pack)
    else:
        reference = Reference.frozen_copy(lm, pack=cfg.pack)
    if cfg.freeze_layers:
        freeze_bottom(lm.get_base_model() if cfg.lora else lm, cfg.freeze_layers)
    policy = PolicyWithValue(lm, critic=critic, value_head_std=cfg.value_head_std, pack=cfg.pack).to(device)
    policy.eval()  # no dropout: the rollout's log-probs and the update's must be of one distribution
    reference.lm.to(device)
    trainable = [p for p in policy.parameters() if p.requires_grad]
    optimizer = adamw(trainable, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, eps=cfg.adam_eps)
    model, optimizer = accelerator.prepare(policy, optimizer)
    if cfg.kl_control == "adaptive":
        kl_ctl: FixedKLController | AdaptiveKLController = AdaptiveKLController(cfg.kl_coef, cfg.kl_target,
                                                                               cfg.kl_horizon)
    else:
        kl_ctl = FixedKLController(cfg.kl_coef)

    # ---- resume
    start_iter = 0
    last_good: Path | None = None
    if cfg.resume:
        last_good = _latest_checkpoint(ckpt_dir)
    if last_good is not None:
        state = json.loads((last_good / "state.json").read_text())
        saved = {k: v for k, v in state["config"].items() if k not in RESUME_SAFE}
        now = {k: v for k, v in cfg.model_dump().items() if k not in RESUME_SAFE}
        diff = sorted(k for k in now if saved.get(k) != now[k])
        if diff:
            raise ConfigError(f"--resume with a config that differs from the checkpoint's in {diff}; "
                              f"use the original settings (see {last_good / 'state.json'})")
        weights = load_file(str(last_good / "trainable.safetensors"))
        unwrapped = accelerator.unwrap_model(model)
        missing, unexpected = unwrapped.load_state_dict(weights, strict=False)
        names = {n for n, p in unwrapped.named_parameters() if p.requires_grad}
        if unexpected or not names <= set(weights):
            raise RuntimeError(f"{last_good}: checkpoint does not match the model "
                               f"(unexpected {unexpected[:5]}, missing {sorted(names - set(weights))[:5]})")
        optimizer.load_state_dict(torch.load(last_good / "optimizer.pt", map_location=device, weights_only=True))
        kl_ctl.load_state_dict(state["kl_controller"])
        rng = torch.load(last_good / "rng.pt", weights_only=False)
        torch.set_rng_state(rng["torch"])
        random.setstate(rng["python"])
        start_iter = state["iteration"]
    elif main:
        if ckpt_dir.exists():
            shutil.rmtree(ckpt_dir)
        (out_dir / "metrics.jsonl").unlink(missing_ok=True)
    accelerator.wait_for_everyone()
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out_dir / "ppo_config.json")
        if last_good is not None:  # drop metrics rows past the checkpoint we resume from
            mpath = out_dir / "metrics.jsonl"
            if mpath.exists():
                keep = [ln for ln in mpath.read_text().splitlines()
                        if ln.strip() and json.loads(ln).get("iteration", 0) <= start_iter]
                mpath.write_text("".join(ln + "\n" for ln in keep))
    tb = None
    if main and cfg.tensorboard:
        try:
            from torch.utils.tensorboard import SummaryWriter

            tb = SummaryWriter(str(out_dir / "tensorboard"))
        except Exception:  # tensorboard is optional
            tb = None

    def fail(what: str, iteration: int, step: str) -> NonFiniteError:
        where = str(last_good) if last_good is not None else "none (no checkpoint written yet)"
        return NonFiniteError(f"non-finite {what} at iteration {iteration + 1}, step '{step}'; stopped. "
                              f"Last good checkpoint: {where} (intact; resume with --resume after fixing "
                              f"the cause)")

    def save_checkpoint(iteration: int) -> Path:
        """Atomic: everything goes into a temp dir that is renamed into place when complete."""
        unwrapped = accelerator.unwrap_model(model)
        for n, p in unwrapped.named_parameters():
            if not torch.isfinite(p).all():
                raise fail(f"weights ({n})", iteration - 1, "checkpoint")
        final = ckpt_dir / f"iter-{iteration:06d}"
        if main:
            tmp = ckpt_dir / f".tmp-iter-{iteration:06d}"
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
            weights = {n: p.detach().cpu().contiguous() for n, p in unwrapped.named_parameters() if p.requires_grad}
            save_file(weights, str(tmp / "trainable.safetensors"))
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save({"torch": torch.get_rng_state(), "python": random.getstate()}, tmp / "rng.pt")
            write_json(tmp / "state.json", {"iteration": iteration, "kl_controller": kl_ctl.state_dict(),
                                            "config": cfg.model_dump()})
            for f in tmp.iterdir():  # flush before the rename makes the checkpoint visible
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
            if final.exists():
                shutil.rmtree(final)
            os.rename(tmp, final)
            for old in sorted(p for p in ckpt_dir.glob("iter-*") if p.is_dir())[:-cfg.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()
        return final

    trainable_n, total_n = count_parameters(accelerator.unwrap_model(model))
    progress = None
    if main and cfg.progress:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        progress = Progress(TextColumn("ppo"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                            TextColumn("{task.fields[info]}"), transient=False)
        progress.start()
        task = progress.add_task("ppo", total=cfg.iterations, completed=start_iter, info="")

    local_n = cfg.batch_size // world
    unwrapped = accelerator.unwrap_model(model)
    try:
        for it in range(start_iter, cfg.iterations):
            t0 = time.perf_counter()
            # ---- 1. prompts: the global batch, and this process's contiguous share of it
            idx = _prompt_indices(len(texts), cfg.seed, it, cfg.batch_size)
            rows = list(range(rank * local_n, (rank + 1) * local_n))
            batch_prompts = [texts[idx[r]] for r in rows]

            # ---- 2. rollout
            try:
                sample = generate(unwrapped.lm, tokenizer, batch_prompts, max_new_tokens=cfg.max_new_tokens,
                                  temperature=cfg.temperature, stop_token_ids=stop_ids,
                                  batch_size=cfg.generation_batch_size, max_prompt_tokens=cfg.max_prompt_tokens,
                                  truncate_prompts=cfg.truncate_prompts,
                                  row_seeds=[_row_seed(cfg.seed, it, r) for r in rows],
                                  policy_stats=cfg.old_logprobs == "sampler")
            except FloatingPointError as e:  # the sampler's own non-finite-logits check
                raise fail(str(e).removeprefix("non-finite "), it, "rollout") from None
            t_gen = time.perf_counter()

            # ---- 3. score
            raw = torch.tensor(call_reward(reward_fn, batch_prompts, sample.texts), dtype=torch.float32)
            if not torch.isfinite(raw).all():
                raise fail("rewards", it, "score")
            scores = raw.clone()
            if cfg.reward_clip is not None:
                scores = scores.clamp(-cfg.reward_clip, cfg.reward_clip)
            if cfg.missing_eos_penalty is not None:
                scores = scores - cfg.missing_eos_penalty * (~sample.finished.cpu()).float()
            t_score = time.perf_counter()

            # ---- 4. forward: reference log-probs (and the policy's, unless the sampler kept them)
            ids, am = sample.input_ids.to(device), sample.attention_mask.to(device)
            resp = sample.response_ids.to(device)
            sampled = None
            if cfg.old_logprobs == "sampler":
                sampled = {"logprobs": sample.logprobs, "entropy": sample.entropy, "hidden": sample.hidden}
            try:
                fw = forward_in_chunks(unwrapped, reference, ids, am, resp, sample.prompt_ids.size(1),
                                       cfg.temperature, cfg.forward_batch_size, sampled=sampled)
            except FloatingPointError as e:
                raise fail(str(e), it, "forward") from None
            t_fwd = time.perf_counter()

            # ---- 5. gather: pad prompts on the left and responses on the right to the global widths
            parts = {
                "prompt_ids": sample.prompt_ids.to(device), "prompt_mask": sample.prompt_mask.to(device),
                "response_ids": resp, "mask": sample.response_mask.to(device),
                "old_logp": fw["old_logp"], "ref_logp": fw["ref_logp"], "values": fw["values"],
                "entropy": fw["entropy"], "scores": scores.to(device), "raw": raw.to(device),
                "finished": sample.finished.to(device).long(),
            }
            if world > 1:
                pad_val = {"prompt_ids": sample.pad_token_id, "response_ids": sample.pad_token_id}
                for k, v in parts.items():
                    if v.dim() == 2:
                        v = accelerator.pad_across_processes(v, dim=1, pad_index=pad_val.get(k, 0),
                                                             pad_first=k.startswith("prompt"))
                    parts[k] = accelerator.gather(v.contiguous())
            P = parts["prompt_ids"].size(1)
            mask = parts["mask"].float()
            ro = Rollout(input_ids=torch.cat([parts["prompt_ids"], parts["response_ids"]], 1),
                         attention_mask=torch.cat([parts["prompt_mask"], parts["mask"]], 1),
                         response_ids=parts["response_ids"], mask=mask, old_logp=parts["old_logp"],
                         ref_logp=parts["ref_logp"], values=parts["values"], entropy=parts["entropy"],
                         scores=parts["scores"], finished=parts["finished"].bool(), prompt_len=P)

            # ---- 6. penalise: per-token KL penalty, score on the last token
            beta = kl_ctl.value
            rewards, kl = kl_penalised_rewards(ro.scores, ro.old_logp, ro.ref_logp, mask, beta, cfg.kl_estimator)

            # ---- 7. advantages: GAE, whitened over the whole batch
            advantages, returns = gae(rewards, ro.values, mask, cfg.gamma, cfg.lam)
            if cfg.whiten_advantages:
                advantages = masked_whiten(advantages, mask)

            # ---- 8. update: PPO epochs over shuffled minibatches
            stats = {"pg": 0.0, "vf": 0.0, "clip": 0.0, "vclip": 0.0, "akl": 0.0, "ent": 0.0, "gn": 0.0, "n": 0}
            epochs_done, stopped_early = 0, False
            N = cfg.batch_size
            micro = cfg.minibatch_size // world // cfg.grad_accum_steps
            for epoch in range(cfg.ppo_epochs):
                g = torch.Generator().manual_seed(_row_seed(cfg.seed, it, 10_000 + epoch))
                perm = torch.randperm(N, generator=g)
                for mb_start in range(0, N, cfg.minibatch_size):
                    mb = perm[mb_start:mb_start + cfg.minibatch_size]
                    n_tokens = mask[mb].sum()  # whole minibatch, all processes
                    mine = mb[rank::world]
                    # pg, vf, value clip, approx_kl, clip_frac: this process's share of the minibatch means
                    acc = torch.zeros(5, device=device)
                    for a in range(cfg.grad_accum_steps):
                        rows_a = mine[a * micro:(a + 1) * micro].to(device)
                        sub = ro.select(rows_a)
                        adv_a = advantages[rows_a][:, :sub.mask.size(1)]
                        ret_a = returns[rows_a][:, :sub.mask.size(1)]
                        sync = a == cfg.grad_accum_steps - 1
                        ctx = accelerator.no_sync(model) if (not sync and world > 1) else contextlib.nullcontext()
                        with ctx:
                            logits, values = model(sub.input_ids, sub.attention_mask, sub.prompt_len,
                                                   cfg.temperature)
                            if not torch.isfinite(logits).all():
                                raise fail("logits", it, f"update epoch {epoch + 1}")
                            if not torch.isfinite(values).all():
                                raise fail("values", it, f"update epoch {epoch + 1}")
                            logp = logprobs_from_logits(logits, sub.response_ids)
                            # Each process's share is scaled by world so DDP's gradient mean is the sum.
                            denom = n_tokens / world
                            pg, clip_frac, akl = policy_loss(logp, sub.old_logp, adv_a, sub.mask, cfg.clip_range,
                                                             denom)
                            vf, vclip = value_loss(values.float(), sub.values, ret_a, sub.mask,
                                                   cfg.clip_range_value, denom)
                            loss = pg + cfg.vf_coef * vf
                            if cfg.ent_coef:
                                ent = masked_mean(entropy_from_logits(logits), sub.mask, denom)
                                loss = loss - cfg.ent_coef * ent
                            if not torch.isfinite(loss):
                                raise fail("loss", it, f"update epoch {epoch + 1}")
                            accelerator.backward(loss)
                        acc += torch.stack([pg.detach(), vf.detach(), vclip, akl, clip_frac]).float() / world
                    gn = 0.0
                    if cfg.max_grad_norm is not None:
                        gn = float(accelerator.clip_grad_norm_(trainable, cfg.max_grad_norm))
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    if world > 1:
                        acc = accelerator.reduce(acc, "sum")
                    mb_pg, mb_vf, mb_vclip, mb_akl, mb_clip = acc.tolist()
                    stats["pg"] += mb_pg
                    stats["vf"] += mb_vf
                    stats["vclip"] += mb_vclip
                    stats["akl"] += mb_akl
                    stats["clip"] += mb_clip
                    stats["gn"] += gn
                    stats["n"] += 1
                    if cfg.target_approx_kl is not None and mb_akl > cfg.target_approx_kl:
                        stopped_early = True
                        break
                epochs_done += 1
                if stopped_early:
                    break
            t_upd = time.perf_counter()

            # ---- 9. KL control, metrics, checkpoint
            seq_kl_k3 = (kl_k3(ro.old_logp, ro.ref_logp) * mask).sum(1)  # (N,) ≥ 0
            seq_kl_k1 = (kl_k1(ro.old_logp, ro.ref_logp) * mask).sum(1)
            kl_ref = float(seq_kl_k3.mean())
            kl_ctl.update(kl_ref, N)
            n = max(stats["n"], 1)
            metrics = {
                "iteration": it + 1,
                "objective/reward": float(parts["raw"].mean()),
                "objective/reward_std": float(parts["raw"].std()) if N > 1 else 0.0,
                "objective/score": float(ro.scores.mean()),
                "objective/reward_penalised": float((rewards * mask).sum(1).mean()),
                "objective/entropy": float(masked_mean(ro.entropy, mask)),
                "objective/kl_k1": float(seq_kl_k1.mean()),
                "objective/eos_frac": float(ro.finished.float().mean()),
                "ppo/kl_ref": kl_ref,
                "ppo/approx_kl": stats["akl"] / n,
                "ppo/clip_frac": stats["clip"] / n,
                "ppo/policy_loss": stats["pg"] / n,
                "ppo/value_loss": stats["vf"] / n,
                "ppo/value_clip_frac": stats["vclip"] / n,
                "ppo/grad_norm": stats["gn"] / n,
                "ppo/epochs": epochs_done,
                "ppo/early_stop": stopped_early,
                "value/explained_variance": float(explained_variance(ro.values, returns, mask)),
                "value/mean": float(masked_mean(ro.values, mask)),
                "response/length": float(mask.sum(1).mean()),
                "kl_coef": beta,
                "kl_coef_next": kl_ctl.value,
                "time/rollout": t_gen - t0,
                "time/score": t_score - t_gen,
                "time/forward": t_fwd - t_score,
                "time/update": t_upd - t_fwd,
                "time/iteration": t_upd - t0,
                "params/trainable": trainable_n,
                "params/total": total_n,
            }
            if main:
                with open(out_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
                    f.write(json.dumps(metrics) + "\n")
                if tb is not None:
                    for k, v in metrics.items():
                        if isinstance(v, (int, float)) and k != "iteration":
                            tb.add_scalar(k, v, it + 1)
            if (it + 1) % cfg.save_every == 0 or it + 1 == cfg.iterations:
                last_good = save_checkpoint(it + 1)
            if progress is not None:
                progress.update(task, advance=1, info=f"reward {metrics['objective/reward']:+.3f}  "
                                f"kl {kl_ref:.3f}  β {beta:.4f}")
    finally:
        if progress is not None:
            progress.stop()
        if tb is not None:
            tb.close()

    # ---- final policy: loadable with from_pretrained, value head beside it
    if main:
        final_lm = unwrapped.lm
        if cfg.lora:
            final_lm.save_pretrained(str(out_dir / "adapter"))
            final_lm = final_lm.merge_and_unload()
        final_lm.save_pretrained(str(out_dir))
        tokenizer.save_pretrained(str(out_dir))
        save_file({k: v.detach().cpu().contiguous() for k, v in unwrapped.value_state_dict().items()},
                  str(out_dir / "value_head.safetensors"))
    accelerator.wait_for_everyone()
    return out_dir
