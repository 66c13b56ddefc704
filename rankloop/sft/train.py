"""Supervised fine-tuning on demonstrations (InstructGPT's step 1).

The loss is the masked next-token loss of ``rankloop.sft.loss``: response tokens only, the prompt
masked; for conversations the assistant turns only. The trained model is a plain ``from_pretrained``
directory, the ``--policy`` of ``rankloop ppo`` and — left as PPO's default reference — the anchor
of its KL penalty (π^SFT).

Batching. ``batch_size`` demonstrations per micro-batch per process; an optimizer step takes
``batch_size × grad_accum × num_processes`` demonstrations (a "global batch"), whose order is a pure
function of ``(seed, epoch)``. Every micro-batch's loss is ``Σ token nll · num_processes / N``, N
the trained tokens of the whole global batch, so gradient accumulation and data parallelism give
the update of one big batch, and ``--resume`` needs only the step number to find its place.

Packing. A micro-batch's demonstrations are laid end to end in rows with a block-diagonal causal
mask (``rankloop.packing``) when that removes ≥ 10 % of the padded positions: each token sees what
it sees in its own padded row, so the loss and gradients are those of the padded batch. The output
layer runs only at the positions that predict a trained token.

Checkpoints (``output/checkpoints/step-NNNNNNNN``) are written to a temporary directory and renamed
into place, so a run killed at any moment leaves its last complete checkpoint intact; each loads
with ``from_pretrained`` (LoRA merged) and holds ``trainer_state.pt`` for ``--resume``.
"""

from __future__ import annotations

import functools
import json
import random
import time
from pathlib import Path
from typing import NamedTuple

import torch
from rich.console import Console
from torch import nn
from transformers import AutoConfig

from rankloop.config import ConfigError, save_config, weights_dtype
from rankloop.io import DataError, ReadStats
from rankloop.models import (apply_lora, backbone_of, count_parameters, enable_gradient_checkpointing, freeze_bottom,
                             load_causal_lm, load_tokenizer, model_max_positions, unwrap_model)
from rankloop.packing import pack_segments, supports_packing, worth_packing
from rankloop.records import Demonstration
from rankloop.runtime import (EpochCache, RunDir, StepPlan, build_training, full_state_dict, is_fsdp,
                              open_supervised_run, optimizer_step, plan_steps, progress_bar, save_checkpoint,
                              save_final, split_batch, tracking)
from rankloop.sft.config import SFTConfig
from rankloop.sft.data import (EncodedDemo, NoChatTemplateError, encode_rows, needs_template, read_demonstrations,
                               resolve_chat_template, row_summary)
from rankloop.ops import head_logprobs
from rankloop.sft.loss import perplexity, sft_loss, target_positions

__all__ = ["SFTConfig", "train_sft"]

RESUME_SAFE = {"resume", "progress", "tensorboard", "save_every", "keep_checkpoints", "eval_every",
               "eval_batch_size", "log_every"}


# ---------------------------------------------------------------- typed records of the loop


class SFTData(NamedTuple):
    """The tokenised demonstrations."""

    tokenizer: object
    train: list[EncodedDemo]
    eval_set: list[EncodedDemo] | None
    max_length: int  # tokens per demonstration: the config's, capped by the model's positions
    skipped: int  # malformed training rows skipped (``skip_invalid``)
    rejected: int  # demonstrations a reviewer rejected: never trained on


class TokenBatch(NamedTuple):
    """A micro-batch as the model reads it, and the N positions whose logits the loss reads.

    Padded: ``input_ids`` (B, T) right-padded, ``attention_mask`` (B, T). Packed: ``input_ids`` (R, L),
    ``attention_mask`` the (R, 1, L, L) block-diagonal causal bias. Either way ``position_ids``
    restart at 0 for each demonstration, and (``read_row``, ``read_col``) (N,) predict ``targets`` (N,)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    read_row: torch.Tensor
    read_col: torch.Tensor
    targets: torch.Tensor
    packed: bool

    def to(self, device) -> "TokenBatch":
        return TokenBatch(*(t.to(device) for t in self[:6]), self.packed)


class StepSums(NamedTuple):
    """Sums over logged micro-batches (and processes): ``micro_step`` returns them as a (3,) tensor
    in this order, so one all-reduce carries them."""

    nll: float  # Σ token nll of the trained tokens
    targets: float  # trained tokens
    tokens: float  # every token forwarded (prompt and response, no padding)


def collate(encoded: list[EncodedDemo], idx: list[int], pad_id: int, pack: int | None,
            dtype: torch.dtype = torch.float32) -> TokenBatch:
    """The demonstrations ``idx`` as one ``TokenBatch``; with ``pack`` (the model's hidden size) laid
    end to end in rows when that saves at least 10 % of the padded positions."""
    rows = [encoded[i] for i in idx]
    lengths = [len(r.ids) for r in rows]
    padded_positions = len(rows) * max(lengths)
    if pack is not None and worth_packing(sum(lengths), padded_positions):
        segments = [(r.ids, list(range(len(r.ids))), [0] * len(r.ids)) for r in rows]
        batch, start = pack_segments(segments, pad_id, causal=True, hidden_size=pack)
        if worth_packing(batch.input_ids.numel(), padded_positions):
            trained = torch.zeros(batch.input_ids.shape, dtype=torch.bool)
            for r, (row, col) in zip(rows, start):
                trained[row, col:col + len(r.ids)] = torch.tensor(r.trained)
            # A segment's first token is never a target: its predecessor in the row is another segment.
            for row, col in start:
                trained[row, col] = False
            read_row, read_col = trained.nonzero(as_tuple=True)
            return TokenBatch(batch.input_ids, batch.attention_bias(dtype), batch.position_ids, read_row,
                              read_col - 1, batch.input_ids[read_row, read_col], packed=True)
    ids = torch.full((len(rows), max(lengths)), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    trained = torch.zeros(ids.shape, dtype=torch.bool)
    for b, r in enumerate(rows):
        ids[b, :len(r.ids)] = torch.tensor(r.ids)
        mask[b, :len(r.ids)] = 1
        trained[b, :len(r.ids)] = torch.tensor(r.trained)
    read_row, read_col = target_positions(trained)
    position_ids = torch.arange(ids.shape[1]).expand_as(ids)
    return TokenBatch(ids, mask, position_ids, read_row, read_col, ids[read_row, read_col + 1], packed=False)


class NextTokenLogits(nn.Module):
    """The causal LM's logits at the read positions only, (N, V): the backbone over the whole batch,
    the output layer only where a trained token is predicted. One module, so DDP wraps it whole.

    Given ``targets`` (N,) it returns their negative log-likelihoods (N,) instead, the output layer
    taken ``logprob_chunk`` tokens at a time (``rankloop.ops.head_logprobs``): the (N, V) logits
    are never held whole, in the forward or the backward."""

    def __init__(self, lm: nn.Module, logprob_chunk: int = 0):
        super().__init__()
        self.lm = lm
        self.logprob_chunk = logprob_chunk

    def forward(self, input_ids, attention_mask, position_ids, read_row, read_col, targets=None) -> torch.Tensor:
        hidden = backbone_of(self.lm)(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                      use_cache=False).last_hidden_state  # (B, T, H)
        head = unwrap_model(self.lm).get_output_embeddings()
        if targets is not None:
            return -head_logprobs(hidden[read_row, read_col], head, targets, self.logprob_chunk)[0]  # (N,)
        return head(hidden[read_row, read_col])  # (N, V)


# ---------------------------------------------------------------- the loop


def train_sft(cfg: SFTConfig) -> Path:
    """Fine-tune, checkpoint and save; returns the output directory (``from_pretrained`` loads it)."""
    acc, console, run, guard = open_supervised_run(cfg, fsdp=True)
    main = acc.is_main_process

    # 1. Set-up: where to start ---------------------------------------------------------------
    resume_from = check_start(cfg, run, console)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    # 2. Data: read, validate, render and tokenise each demonstration once; cut it into steps ----
    data = load_data(cfg, console)
    plan = plan_steps(cfg, [len(e.ids) for e in data.train], acc.num_processes, "demonstrations")

    # 3. Model, optimizer, schedule; --resume restores all three and the RNG -------------------
    model, optimizer, scheduler, start = build_training(cfg, data.tokenizer, plan, resume_from, console, build_model)
    net, optimizer = acc.prepare(NextTokenLogits(model, cfg.logprob_chunk), optimizer)
    pack = pack_width(cfg, model, console if main else None)
    dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
    guard.last_good = resume_from
    run.begin(resumed_at=start)
    if main:
        save_config(cfg, run.out / "train_config.json")
    trainable, total = count_parameters(model)
    console.print(
        f"train-sft: {len(data.train)} demonstrations ({sum(e.n_targets for e in data.train):,} trained tokens), "
        f"{plan.total_steps} steps of {plan.global_batch} demonstrations on {acc.num_processes} process(es); "
        f"{trainable:,} of {total:,} parameters trainable")

    # 4. Train: one optimizer step per global batch ---------------------------------------------
    params = [p for p in model.parameters() if p.requires_grad]
    net.train()
    sums = torch.zeros(3, device=acc.device)  # StepSums since the last log
    tokens_total = 0.0
    epochs = EpochCache(cfg, plan, acc.num_processes)
    t_log = t_train = time.perf_counter()
    bar = progress_bar("train-sft", enabled=main and cfg.progress, console=console)
    with tracking(acc), bar:
        task = bar.add_task("train", total=plan.total_steps, completed=start, info="")
        for step in range(start, plan.total_steps):
            # 4a. This step's global batch: a function of (seed, epoch, step) only.
            batch = epochs.of(step)
            # 4b. Forward, masked next-token loss, backward — micro-batch by micro-batch; 4c. update.
            #     The loss is normalised by the whole step's trained tokens.
            parts = split_batch(batch, acc.num_processes * cfg.grad_accum)
            n_targets = sum(data.train[i].n_targets for i in batch)
            mine = [parts[m * acc.num_processes + acc.process_index] for m in range(cfg.grad_accum)]
            grad_norm = optimizer_step(
                acc, net, [functools.partial(micro_step, net, acc, data.train, idx, n_targets,
                                             data.tokenizer.pad_token_id, pack, dtype, cfg.logprob_chunk)
                     for idx in mine],
                sums, optimizer, scheduler, params, cfg.max_grad_norm, guard, step)
            done = step + 1
            # 4d. Log, evaluate, checkpoint.
            if done % cfg.log_every == 0 or done == plan.total_steps:
                s = StepSums(*acc.reduce(sums.clone(), reduction="sum").tolist())
                tokens_total += s.tokens
                row = step_metrics(s, done, plan, scheduler.get_last_lr()[0], grad_norm, time.perf_counter() - t_log)
                acc.log(row, step=done)
                bar.update(task, info=f"loss {row['loss']:.4f}")
                sums.zero_()
                t_log = time.perf_counter()
            if cfg.eval_every and done % cfg.eval_every == 0 and done != plan.total_steps:
                evaluate(acc, net, data, cfg, done, pack, dtype)
            if cfg.save_every and done % cfg.save_every == 0 and done != plan.total_steps:
                guard.last_good = save_checkpoint(run, model, optimizer, scheduler, data.tokenizer, cfg, done, guard)
            bar.update(task, completed=done)
        train_seconds = time.perf_counter() - t_train

        # 5. Evaluate and save ----------------------------------------------------------------------
        final_eval = evaluate(acc, net, data, cfg, plan.total_steps, pack, dtype)
    weights = full_state_dict(acc, model) if is_fsdp(acc) else None  # FSDP: gathered by every process
    if main:
        summary = {"steps": plan.total_steps, "demonstrations": len(data.train), "skipped": data.skipped,
                   "rejected": data.rejected, "trained_tokens_per_epoch": sum(e.n_targets for e in data.train),
                   "tokens_per_epoch": sum(len(e.ids) for e in data.train), "tokens_forwarded": tokens_total,
                   "trainable_parameters": trainable, "parameters": total, "resumed_at": start,
                   "train_loop_seconds": round(train_seconds, 3)}
        if final_eval is not None:
            summary["eval"] = final_eval
            console.print(f"eval loss {final_eval['loss']:.4f}, perplexity {final_eval['perplexity']:.3f} "
                          f"on {len(data.eval_set)} demonstrations")
        save_final(model, data.tokenizer, run.out, {"train_config.json": cfg, "train_summary.json": summary},
                   state_dict=weights)
        console.print(f"saved the fine-tuned model to {run.out}")
    acc.wait_for_everyone()
    return run.out


# ---------------------------------------------------------------- 1.–3. set-up


def check_start(cfg: SFTConfig, run: RunDir, console: Console) -> Path | None:
    """The checkpoint to resume from (None: from the beginning)."""
    latest = run.resume_point(cfg.resume, console)
    if latest is not None:  # the settings that decide the results must be the checkpoint's
        saved = json.loads((latest / "train_config.json").read_text(encoding="utf-8"))
        now = cfg.model_dump()
        diff = sorted(k for k in now if k not in RESUME_SAFE and saved.get(k) != now[k])
        if diff:
            raise ConfigError(f"--resume with a config that differs from the checkpoint's in {diff}; "
                              f"use the original settings (see {latest / 'train_config.json'})")
    return latest


def load_sft_tokenizer(cfg: SFTConfig, conversations: bool):
    """The model's tokenizer (padding with EOS where it has no pad token: padding is masked anyway),
    with ``cfg.chat_template`` installed; a clear error where conversations meet no template."""
    tok = load_tokenizer(cfg.model, padding_side="right")
    if cfg.chat_template is not None:
        try:
            tok.chat_template = resolve_chat_template(cfg.chat_template)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    if conversations and not getattr(tok, "chat_template", None):
        raise ConfigError(
            f"the tokenizer of {cfg.model} has no chat template, and {cfg.data} holds conversations (messages): "
            "pass --chat-template hh (rankloop's '\\n\\nHuman: … \\n\\nAssistant: …' rendering), a Jinja file or a "
            "template; it is saved with the fine-tuned model's tokenizer, so sampling and PPO render prompts alike")
    if tok.eos_token_id is None:
        raise ConfigError(f"the tokenizer of {cfg.model} has no EOS token, so a demonstration cannot end with one "
                          "and the model would never learn to stop; give the tokenizer an eos_token")
    return tok


def load_data(cfg: SFTConfig, console: Console) -> SFTData:
    stats = ReadStats()
    rows = read_demonstrations(cfg.data, fmt=cfg.format, skip_invalid=cfg.skip_invalid, stats=stats)
    eval_rows = None
    if cfg.eval_data:
        eval_rows = read_demonstrations(cfg.eval_data, skip_invalid=cfg.skip_invalid, stats=ReadStats())
    tok = load_sft_tokenizer(cfg, needs_template(rows + (eval_rows or [])))
    rejected = sum(isinstance(r, Demonstration) and r.review == "rejected" for r in rows)
    rows = [r for r in rows if not (isinstance(r, Demonstration) and r.review == "rejected")]
    context = model_max_positions(AutoConfig.from_pretrained(cfg.model))
    max_length = min(cfg.max_length, context)
    train = _encode(rows, tok, max_length, cfg.data, cfg.skip_invalid, stats, context)
    if stats.skipped:
        console.print(f"skipped {stats.skipped} of {stats.rows} rows of {cfg.data} (--skip-invalid); "
                      f"first: {stats.reasons[0]}")
    if rejected:
        console.print(f"{rejected} demonstrations a reviewer rejected are not trained on")
    if not train:
        raise DataError(cfg.data, None, "no valid demonstrations to train on")
    console.print(f"train-sft: read {row_summary(rows)} from {cfg.data}")
    eval_set = None
    if eval_rows is not None:
        eval_rows = [r for r in eval_rows if not (isinstance(r, Demonstration) and r.review == "rejected")]
        eval_set = _encode(eval_rows, tok, max_length, cfg.eval_data, cfg.skip_invalid, ReadStats(), context)
    return SFTData(tok, train, eval_set, max_length, stats.skipped, rejected)


def _encode(rows, tok, max_length, path, skip_invalid, stats, context) -> list[EncodedDemo]:
    try:
        return encode_rows(rows, tok, max_length, path, skip_invalid, stats, context)
    except NoChatTemplateError:  # (load_sft_tokenizer checks first; kept for callers of encode_rows)
        raise ConfigError(f"{path} holds conversations and the tokenizer has no chat template: "
                          "pass --chat-template") from None


def build_model(cfg: SFTConfig, tokenizer, weights_from: str | None = None):
    """The causal LM, frozen / LoRA-wrapped as configured.

    Unlike PPO, SFT keeps SDPA for tiny heads on CPU (no ``prefer_cpu_attention``): over
    demonstrations of up to 512 tokens, eager attention's (rows, heads, L, L) matrices made a
    stories260K epoch ~14x slower (23.7 s against 1.7 s, packed) and its peak RSS 952 MiB against
    519 MiB (measured on a loaded machine: the ratio, not the seconds)."""
    model = load_causal_lm(weights_from or cfg.model, dtype=weights_dtype(cfg.dtype, cfg.precision),
                           tokenizer=tokenizer)
    if cfg.freeze_layers:
        freeze_bottom(model, cfg.freeze_layers)
    if cfg.lora:
        targets = None  # peft's "all-linear"
        if cfg.freeze_layers:  # no adapters on frozen blocks: they must stay exactly as loaded
            targets = [n for n, mod in model.named_modules()
                       if isinstance(mod, nn.Linear) and mod.weight.requires_grad and mod is not model.get_output_embeddings()]
        model = apply_lora(model, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout, task="causal",
                           target_modules=targets)
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    return model


def pack_width(cfg: SFTConfig, model, console: Console | None) -> int | None:
    """The hidden size ``collate`` packs for, or None to pad (this model's attention takes no 4D mask)."""
    base = unwrap_model(model)
    if cfg.pack and supports_packing(base):
        return int(getattr(base.config, "hidden_size", None) or getattr(base.config, "n_embd"))
    if cfg.pack and console is not None:
        console.print("[yellow]pack: this model's attention takes no block-diagonal mask; padding instead[/]")
    return None


# ---------------------------------------------------------------- 4. the step, metrics, evaluation, checkpoints


def micro_step(net, acc, encoded: list[EncodedDemo], idx: list[int], n_global: int, pad_id: int, pack: int | None,
               dtype: torch.dtype, logprob_chunk: int = 0) -> torch.Tensor:
    """Forward the demonstrations ``idx``, take the masked next-token loss and backward
    ``Σ nll · num_processes / n_global`` — this micro-batch's share of the mean over the optimizer
    step's ``n_global`` trained tokens (DDP then averages over processes). Returns the (3,)
    ``StepSums`` of the micro-batch."""
    b = collate(encoded, idx, pad_id, pack, dtype).to(acc.device)
    if logprob_chunk:  # the (N,) nll from the output layer in chunks: never the whole (N, V) logits
        nll = net(b.input_ids, b.attention_mask, b.position_ids, b.read_row, b.read_col, b.targets)
        loss, nll_sum = nll.sum() / (n_global / acc.num_processes), nll.detach().sum()
    else:
        logits = net(b.input_ids, b.attention_mask, b.position_ids, b.read_row, b.read_col)  # (N, V)
        loss, nll_sum = sft_loss(logits, b.targets, n_global / acc.num_processes)
    acc.backward(loss)
    tokens = float(sum(len(encoded[i].ids) for i in idx))
    return torch.stack([nll_sum, torch.tensor(float(b.targets.numel()), device=acc.device),
                        torch.tensor(tokens, device=acc.device)])


def step_metrics(s: StepSums, done: int, plan: StepPlan, lr: float, grad_norm, seconds: float) -> dict:
    """One training row of ``metrics.jsonl`` (means over the steps since the last row)."""
    loss = s.nll / max(s.targets, 1)
    row = {"step": done, "epoch": round(done / plan.steps_per_epoch, 4), "loss": loss,
           "sft/perplexity": perplexity(loss), "sft/trained_tokens": int(s.targets), "sft/tokens": int(s.tokens),
           "sft/tokens_per_s": s.tokens / max(seconds, 1e-9), "lr": lr}
    if grad_norm is not None:
        row["grad_norm"] = float(grad_norm)
    return row


@torch.no_grad()
def eval_loss(net, encoded: list[EncodedDemo], pad_id: int, batch_size: int, pack: int | None, dtype,
              device) -> dict:
    """Mean next-token loss per trained token over ``encoded`` and its perplexity."""
    was_training = net.training
    net.eval()
    nll = n = 0.0
    for s in range(0, len(encoded), batch_size):
        b = collate(encoded, list(range(s, min(s + batch_size, len(encoded)))), pad_id, pack, dtype).to(device)
        _, total = sft_loss(net(b.input_ids, b.attention_mask, b.position_ids, b.read_row, b.read_col), b.targets)
        nll += float(total)
        n += b.targets.numel()
    net.train(was_training)
    loss = nll / max(n, 1)
    return {"loss": loss, "perplexity": perplexity(loss), "tokens": int(n)}


def evaluate(acc, net, data: SFTData, cfg: SFTConfig, step: int, pack: int | None, dtype) -> dict | None:
    """Loss and perplexity on the held-out set (main process), logged as ``eval/*`` rows."""
    if data.eval_set is None:
        return None
    m = None
    # Under FSDP a forward pass is collective: every process evaluates (the same rows, the same result).
    if acc.is_main_process or is_fsdp(acc):
        with acc.autocast():  # the unwrapped module: autocast as in training (a no-op in float32)
            m = eval_loss(acc.unwrap_model(net), data.eval_set, data.tokenizer.pad_token_id, cfg.eval_batch_size, pack,
                          dtype, acc.device)
    if acc.is_main_process:
        acc.log({"step": step, "eval/loss": m["loss"], "eval/perplexity": m["perplexity"]}, step=step)
    acc.wait_for_everyone()
    return m


