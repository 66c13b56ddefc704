"""The steps every RL learner's loop is made of (PPO, RLOO, GRPO): set-up and resume, the prompt
batch, sampling (one or K responses per prompt), scoring, the rollout's teacher-forced passes,
minibatches, checkpoints and the final policy.

Each is a plain function of typed values; a learner's loop (``ppo.py``, ``rloo.py``,
``grpo.py``) calls them in numbered order and adds its own advantages and update.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, NamedTuple

from rankloop.config import ConfigError, save_config, weights_dtype
from rankloop.generate import KVCacheGenerator, SamplingParams
from rankloop.io import read_prompts, write_json
from rankloop.models import (adamw, apply_lora, enable_gradient_checkpointing, freeze_bottom, load_causal_lm,
                             load_tokenizer, prefer_cpu_attention)
from rankloop.records import Prompt
from rankloop.rl.config import RLConfig
from rankloop.rl.kl import AdaptiveKLController, FixedKLController
from rankloop.rl.rewards import RewardError, RewardFn, WeightedReward, call_reward, check_reward_meta, load_rewards
from rankloop.rl.rollout import PolicyWithValue, Reference, Rollout, forward_in_chunks, gather_rollout, make_critic
from rankloop.runtime import (FiniteGuard, NonFiniteError, RunDir, full_state_dict, gathered, is_fsdp, rng_state,
                              set_rng_state)
from rankloop.sampling import SampleBatch, default_stop_ids, encode_prompts, prompt_text

RESUME_SAFE = {"iterations", "resume", "progress", "tensorboard", "save_every", "keep_checkpoints"}


# ---------------------------------------------------------------- typed records


class Learner(NamedTuple):
    """What the loop trains and scores with, built once by ``build_learner``."""

    tokenizer: Any
    texts: list[str]  # every prompt, rendered as the policy reads it
    metas: list[dict]  # every prompt's ``meta`` (a verifiable reward's answer)
    ids: list[str]  # every prompt's id
    stop_ids: list[int]
    model: Any  # PolicyWithValue, as prepared by accelerate (DDP-wrapped with several processes; FSDP: sharded)
    policy: Any  # the same PolicyWithValue, unwrapped (no value head for the critic-free learners)
    reference: Reference
    optimizer: Any
    trainable: list  # parameters with requires_grad
    kl_ctl: FixedKLController | AdaptiveKLController
    reward_fn: RewardFn
    autocast: Any = None  # () → the autocast context of the unprepared passes (rollout, reference, reward)
    gathered: Any = None  # () → under FSDP the policy's weights whole for the block (``runtime.gathered``)

    def amp(self):
        return self.autocast() if self.autocast is not None else contextlib.nullcontext()

    def whole(self):
        """The policy's weights whole (FSDP: every process enters; nothing inside is collective)."""
        return self.gathered() if self.gathered is not None else contextlib.nullcontext()


class PromptBatch(NamedTuple):
    """This process's share of an iteration's prompts."""

    rows: list[int]  # rows of the global batch
    index: list[int]  # each row's index into the prompt set
    texts: list[str]


class Scores(NamedTuple):
    """An iteration's rewards, one per response (this process's rows)."""

    raw: Any  # (B,) the reward as the reward function returned it
    scores: Any  # (B,) what is trained on: clipped, minus the missing-EOS penalty
    components: dict  # name → (B,) each reward's own values, when several are weighted together


# ---------------------------------------------------------------- 0. set-up and resume


def check_divisible(rows: int, minibatch_size: int, grad_accum_steps: int, world: int, what: str = "batch_size") -> None:
    if rows % world or minibatch_size % (world * grad_accum_steps):
        raise ConfigError(f"{what} ({rows}) and minibatch_size ({minibatch_size}) must be "
                          f"divisible by processes × grad_accum_steps ({world} × {grad_accum_steps})")


def kl_controller(kind: str, kl_coef: float, target: float = 6.0, horizon: float = 10000):
    return AdaptiveKLController(kl_coef, target, horizon) if kind == "adaptive" else FixedKLController(kl_coef)


def load_prompts_and_reward(cfg: RLConfig, reward_fn: RewardFn | None, prompts: list | None,
                            reward_device: dict | None = None):
    """The prompt records (or strings) and the reward function (several, weighted, when asked).
    ``reward_device`` (``device``, ``offload_to``) places a reward model (default: the CPU)."""
    reward_device = reward_device or {}
    if prompts is None:
        if cfg.prompts is None:
            raise ConfigError("no prompts: set prompts (a JSONL file)")
        prompts = read_prompts(cfg.prompts)
    if not prompts:
        raise ConfigError("the prompt set is empty")
    if reward_fn is None:
        if cfg.reward is None:
            raise ConfigError("no reward: set reward (a reward-model directory or module:function)")
        reward_fn = load_rewards(cfg.reward, cfg.reward_weights, batch_size=cfg.reward_batch_size,
                                 normalise=cfg.reward_normalise, **reward_device)
    return prompts, reward_fn


def build_learner(cfg: RLConfig, acc, reward_fn: RewardFn | None, prompts: list | None, kl_ctl,
                  critic: str | None = "shared", value_head_std: float = 0.0) -> Learner:
    """Prompts, reward, tokenizer, policy (+ value head unless ``critic`` is None), reference,
    optimiser; ``kl_ctl`` is the learner's KL controller."""
    import torch

    device = acc.device
    # A reward model sits on the policy's device, or with offload on the CPU, moved over for each scoring
    # pass. (On a CPU-only machine both are the CPU, as before.)
    reward_device = ({"device": "cpu", "offload_to": str(device)} if cfg.offload and device.type != "cpu"
                     else {"device": str(device)})
    prompts, reward_fn = load_prompts_and_reward(cfg, reward_fn, prompts, reward_device)
    metas = [p.meta if isinstance(p, Prompt) else {} for p in prompts]
    ids = [p.id if isinstance(p, Prompt) else str(i) for i, p in enumerate(prompts)]
    check_reward_meta(reward_fn, metas, ids)  # before any sampling
    tokenizer = load_tokenizer(cfg.policy, padding_side="left")
    texts = [prompt_text(p, tokenizer) if isinstance(p, Prompt) else str(p) for p in prompts]
    encode_prompts(tokenizer, texts, cfg.max_prompt_tokens, cfg.truncate_prompts)  # fail now on an over-long prompt

    torch.manual_seed(cfg.seed)  # the value head's and LoRA's initialisation
    lm = load_causal_lm(cfg.policy, dtype=weights_dtype(cfg.dtype, cfg.precision), tokenizer=tokenizer)
    prefer_cpu_attention(lm, device)  # before any copy: the reference and a critic inherit it
    stop_ids = cfg.stop_token_ids if cfg.stop_token_ids is not None else default_stop_ids(lm, tokenizer)
    critic_net = make_critic(lm) if critic == "separate" else None
    if cfg.lora:
        lm = apply_lora(lm, r=cfg.lora_r, alpha=cfg.lora_alpha, task="causal")
    reference = build_reference(cfg, lm, tokenizer, device)
    if cfg.freeze_layers:
        freeze_bottom(lm.get_base_model() if cfg.lora else lm, cfg.freeze_layers)
    if cfg.gradient_checkpointing:  # after the reference's copy: it never takes gradients
        enable_gradient_checkpointing(lm)
        if critic_net is not None:
            enable_gradient_checkpointing(critic_net)
    policy = PolicyWithValue(lm, critic=critic_net, value_head_std=value_head_std, pack=cfg.pack,
                             value_head=critic is not None).to(device)
    policy.eval()  # no dropout: the rollout's log-probs and the update's must be of one distribution
    if cfg.offload and device.type != "cpu" and not reference.shares_policy:
        reference.home = torch.device("cpu")  # on the device only for its pass (collect_rollout)
    else:
        reference.lm.to(device)
    trainable = [p for p in policy.parameters() if p.requires_grad]
    optimizer = adamw(trainable, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, eps=cfg.adam_eps)
    model, optimizer = acc.prepare(policy, optimizer)
    # FSDP replaces the parameters by sharded ones (the optimiser is re-pointed by accelerate): the
    # list to clip is the prepared model's. (DDP keeps them: the same objects.)
    trainable = [p for p in acc.unwrap_model(model).parameters() if p.requires_grad]
    return Learner(tokenizer, texts, metas, ids, stop_ids, model, acc.unwrap_model(model), reference, optimizer,
                   trainable, kl_ctl, reward_fn, acc.autocast, lambda: gathered(acc, model))


def open_run(cfg: RLConfig, learner: Learner, acc, name: str) -> tuple[RunDir, FiniteGuard, int]:
    """The run directory, the non-finite guard and the first iteration: the newest checkpoint's
    when resuming (restored into ``learner``), else 0 (an earlier run's checkpoints and metrics
    go). The config is saved as ``<name>_config.json``."""
    run = RunDir(cfg.output, acc, prefix="iter", complete="state.json", keep=cfg.keep_checkpoints)
    guard = FiniteGuard("iteration")
    guard.last_good = run.latest() if cfg.resume else None
    start = restore(cfg, learner, acc, guard.last_good) if guard.last_good is not None else 0
    run.begin(resumed_at=start)
    if acc.is_main_process:
        save_config(cfg, run.out / f"{name}_config.json")
    return run, guard, start


def build_reference(cfg: RLConfig, lm, tokenizer, device) -> Reference:
    """π_ref: another model (``cfg.reference``), the adapter-free weights under LoRA (no second copy
    in memory), or a frozen copy of the initial policy."""
    if cfg.reference is not None and cfg.reference != cfg.policy:
        ref_lm = load_causal_lm(cfg.reference, dtype=weights_dtype(cfg.dtype, cfg.precision), tokenizer=tokenizer)
        prefer_cpu_attention(ref_lm, device)
        return Reference(ref_lm, shares_policy=False, pack=cfg.pack)
    if cfg.lora:
        return Reference(lm, shares_policy=True, pack=cfg.pack)
    return Reference.frozen_copy(lm, pack=cfg.pack)


def restore(cfg: RLConfig, learner: Learner, acc, ckpt: Path) -> int:
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


# ---------------------------------------------------------------- prompts, rollout, score


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


def prompt_batch(texts: list[str], cfg: RLConfig, it: int, rank: int, world: int) -> PromptBatch:
    """This process's rows of the iteration's global batch of prompts (a contiguous share)."""
    idx = _prompt_indices(len(texts), cfg.seed, it, cfg.batch_size)
    local_n = cfg.batch_size // world
    rows = list(range(rank * local_n, (rank + 1) * local_n))
    return PromptBatch(rows, [idx[r] for r in rows], [texts[idx[r]] for r in rows])


def sample_responses(learner: Learner, prompts: list[str], rows: list[int], cfg: RLConfig, it: int,
                     guard: FiniteGuard, k: int = 1) -> SampleBatch:
    """``k`` responses per prompt from the current policy (prompt-major: the k of a prompt are
    adjacent); response j of prompt row r of iteration it draws from its own seeded stream, so the
    samples do not depend on the batch's split over processes."""
    params = SamplingParams(k=k, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                            stop_token_ids=tuple(learner.stop_ids),
                            max_prompt_tokens=cfg.max_prompt_tokens, truncate_prompts=cfg.truncate_prompts,
                            row_seeds=tuple(_row_seed(cfg.seed, it, r * k + j) for r in rows for j in range(k)),
                            logprobs=cfg.old_logprobs == "sampler")
    try:
        # FSDP: the decode loop on the policy's gathered weights, each process its own rows and its own
        # number of steps (nothing collective inside: no per-token all-gather, no lock-step).
        with learner.amp(), learner.whole():
            return KVCacheGenerator(learner.policy.lm, learner.tokenizer, cfg.generation_batch_size).generate(
                prompts, params)
    except FloatingPointError as e:  # the sampler's own non-finite-logits check
        raise guard.error(str(e).removeprefix("non-finite "), it + 1, "rollout") from None


def _last_good(guard: FiniteGuard) -> str:
    return str(guard.last_good) if guard.last_good is not None else "none (no checkpoint written yet)"


def score_responses(learner: Learner, pb: PromptBatch, sample: SampleBatch, cfg: RLConfig, it: int,
                    guard: FiniteGuard) -> Scores:
    """raw (B,): the reward as returned; scores (B,): clipped, minus the missing-EOS penalty. A
    reward that returns the wrong count, a non-number or NaN stops the run naming the prompt and
    the last good checkpoint."""
    import torch

    row_prompts = [pb.texts[i] for i in sample.prompt_index]
    row_meta = [learner.metas[pb.index[i]] for i in sample.prompt_index]
    try:
        with learner.amp():  # a reward model's forward in the run's dtype
            values = call_reward(learner.reward_fn, row_prompts, sample.texts, meta=row_meta)
    except RewardError as e:
        at = f"prompt index {pb.index[sample.prompt_index[e.row]]}, " if e.row is not None else ""
        raise RewardError(f"{e} ({at}iteration {it + 1}, step 'score'); stopped. Last good checkpoint: "
                          f"{_last_good(guard)}", row=e.row) from None
    raw = torch.tensor(values, dtype=torch.float32)
    bad = (~torch.isfinite(raw)).nonzero()
    if len(bad):
        row = int(bad[0])
        raise NonFiniteError(f"{guard.error('rewards', it + 1, 'score')}. First at prompt index "
                             f"{pb.index[sample.prompt_index[row]]} (id {learner.ids[pb.index[sample.prompt_index[row]]]!r}), "
                             f"response {sample.texts[row][:80]!r}")
    components = ({n: torch.tensor(v, dtype=torch.float32) for n, v in learner.reward_fn.last.items()}
                  if isinstance(learner.reward_fn, WeightedReward) else {})
    scores = raw.clone()
    if cfg.reward_clip is not None:
        scores = scores.clamp(-cfg.reward_clip, cfg.reward_clip)
    if cfg.missing_eos_penalty is not None:
        scores = scores - cfg.missing_eos_penalty * (~sample.finished.cpu()).float()
    return Scores(raw, scores, components)


def collect_rollout(learner: Learner, sample: SampleBatch, scores, raw, cfg: RLConfig, acc, it: int,
                    guard: FiniteGuard) -> Rollout:
    """log π_ref from the reference; log π_θold, entropy (and V_θold) from the sampler (or a forward
    pass, ``old_logprobs = "forward"``); then every process gets the whole batch."""
    try:
        # (FSDP: the policy whole, as for sampling; the reference is replicated, a frozen model of its own)
        with learner.amp(), learner.reference.on(acc.device), learner.whole():
            fw = forward_in_chunks(learner.policy, learner.reference, sample.input_ids.to(acc.device),
                                   sample.attention_mask.to(acc.device), sample.response_ids.to(acc.device),
                                   sample.prompt_ids.size(1), cfg.temperature, cfg.forward_batch_size,
                                   sampled=sample if cfg.old_logprobs == "sampler" else None)
    except FloatingPointError as e:
        raise guard.error(str(e), it + 1, "forward") from None
    return gather_rollout(acc, sample, fw, scores, raw)


def gather_rows(acc, x):
    """(B, ...) of this process → (N, ...) of the global batch, in ``gather_rollout``'s row order."""
    return acc.gather(x.to(acc.device).contiguous()) if acc.num_processes > 1 else x.to(acc.device)


# ---------------------------------------------------------------- the update's minibatches


def minibatches(seed: int, it: int, epoch: int, n_rows: int, minibatch_size: int):
    """The row indices of each minibatch of one epoch: a seeded shuffle of the global batch."""
    import torch

    g = torch.Generator().manual_seed(_row_seed(seed, it, 10_000 + epoch))
    perm = torch.randperm(n_rows, generator=g)
    return [perm[s:s + minibatch_size] for s in range(0, n_rows, minibatch_size)]


# ---------------------------------------------------------------- checkpoints, the final policy


def optimizer_update(learner: Learner, acc, means, max_grad_norm: float | None) -> tuple[float, ...]:
    """After a minibatch's backward passes: clip, step, zero the gradients, and sum the minibatch's
    per-process statistics ``means`` (S,) over processes. Returns them with the gradient norm
    before clipping (0.0 without clipping) last."""
    grad_norm = 0.0
    if max_grad_norm is not None:
        grad_norm = float(acc.clip_grad_norm_(learner.trainable, max_grad_norm))
    learner.optimizer.step()
    learner.optimizer.zero_grad(set_to_none=True)
    if acc.num_processes > 1:
        means = acc.reduce(means, "sum")
    return (*means.tolist(), grad_norm)


def save_checkpoint(run: RunDir, learner: Learner, cfg: RLConfig, iteration: int, guard: FiniteGuard) -> Path:
    """The trainable weights, optimiser, RNG and KL controller after ``iteration``, written atomically;
    refused (naming the weight) if any weight is non-finite, so the last good checkpoint stays last.
    Under FSDP every process calls it (the shards are gathered onto the main process) and the
    optimiser state, sharded per process, is not written (``--resume`` is refused there): the
    checkpoint holds the whole trainable weights and says ``"fsdp": true``."""
    import torch
    from safetensors.torch import save_file

    fsdp = is_fsdp(run.acc)
    if fsdp:
        trainable = {n for n, p in learner.policy.named_parameters() if p.requires_grad}
        full = full_state_dict(run.acc, learner.policy)  # every process: the gather is collective
        named = {} if full is None else {n: t for n, t in full.items() if n in trainable}
    else:
        named = {n: p for n, p in learner.policy.named_parameters() if p.requires_grad}
    for name, p in (named.items() if fsdp else learner.policy.named_parameters()):
        guard.check(p, f"weights ({name})", iteration, "checkpoint")

    def write(tmp: Path) -> None:
        weights = {n: p.detach().cpu().contiguous() for n, p in named.items()}
        save_file(weights, str(tmp / "trainable.safetensors"))
        if not fsdp:
            torch.save(learner.optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(rng_state(), tmp / "rng.pt")
        state = {"iteration": iteration, "kl_controller": learner.kl_ctl.state_dict(), "config": cfg.model_dump()}
        if fsdp:
            state["fsdp"] = True
        write_json(tmp / "state.json", state)

    return run.save(iteration, write)


def save_final(learner: Learner, cfg: RLConfig, acc) -> None:
    """The final policy, loadable with ``from_pretrained`` (LoRA merged; the adapter also kept in
    ``adapter/``), its tokenizer, and ``value_head.safetensors`` beside it when there is one. Under FSDP
    every process calls it: the weights are gathered from the shards (``full_state_dict``)."""
    from safetensors.torch import save_file

    out = Path(cfg.output)
    full = full_state_dict(acc, learner.policy) if is_fsdp(acc) else None  # every process: collective
    if acc.is_main_process:
        final_lm = learner.policy.lm
        if full is not None:  # (LoRA is refused under FSDP)
            final_lm.save_pretrained(str(out), state_dict={k.removeprefix("lm."): v for k, v in full.items()
                                                           if k.startswith("lm.")})
        else:
            if cfg.lora:
                final_lm.save_pretrained(str(out / "adapter"))
                final_lm = final_lm.merge_and_unload()
            final_lm.save_pretrained(str(out))
        learner.tokenizer.save_pretrained(str(out))
        if learner.policy.value_head is not None:
            head = (learner.policy.value_state_dict() if full is None else
                    {k: v for k, v in full.items() if k.startswith(("value_head.", "critic."))})
            save_file({k: v.detach().cpu().contiguous() for k, v in head.items()}, str(out / "value_head.safetensors"))
    acc.wait_for_everyone()
