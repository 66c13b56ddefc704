"""Training a reward model on K-way human rankings.

One forward pass per candidate, every pair loss from those K scores, one prompt's ranking kept
together as one batch element (InstructGPT §3.5: shuffling a prompt's pairs apart overfits, and
forwarding each of the C(K, 2) pairs separately costs (K − 1)× the compute).

Batching. ``batch_size`` rankings per micro-batch per process; an optimizer step takes
``batch_size × grad_accum × num_processes`` rankings (a "global batch"). The global batches of an
epoch are a pure function of ``(seed, epoch)``; each is cut into ``num_processes × grad_accum``
micro-batches the same way whatever the cut, and every micro-batch loss is
``Σ per-ranking loss · num_processes / |global batch|``. So gradient accumulation and data
parallelism give the update of one big batch, and ``--resume`` needs only the step number to find
its place in the data.

Checkpoints (``output/checkpoints/step-NNNNNNNN``) are written to a temporary directory and renamed
into place, so a run killed at any moment leaves its last complete checkpoint intact; each loads
with ``from_pretrained`` (LoRA weights merged) and holds ``trainer_state.pt`` for ``--resume``.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import shutil
import time
from pathlib import Path
from typing import Literal

from pydantic import Field

from rankloop.config import Config, save_config

CHECKPOINTS = "checkpoints"
TRAINER_STATE = "trainer_state.pt"


class RewardTrainConfig(Config):
    """``rankloop train-rm``: every field can come from ``--config FILE.yaml`` or a CLI flag."""

    data: str = Field(description="Training preferences: rankings.jsonl, TRL pairs or HH-RLHF (.jsonl or .jsonl.gz).")
    model: str = Field(description="Backbone: a Hugging Face id or local path (causal LM, encoder or a reward model).")
    output: str = Field(description="Output directory: the final model, metrics.jsonl, checkpoints/.")
    eval_data: str | None = Field(None, description="Held-out preferences evaluated every eval_every steps and at the end.")
    format: Literal["auto", "rankings", "trl", "hh"] = Field("auto", description="Input format; auto detects it from the first row.")
    epochs: float = Field(1.0, gt=0, description="Passes over the training rankings (fractions allowed).")
    max_steps: int | None = Field(None, gt=0, description="Stop after this many optimizer steps (overrides epochs).")
    batch_size: int = Field(8, gt=0, description="Rankings (prompts) per micro-batch per process.")
    grad_accum: int = Field(1, gt=0, description="Micro-batches accumulated per optimizer step.")
    lr: float = Field(1e-5, gt=0, description="Peak AdamW learning rate (InstructGPT used 9e-6 for its 6B RM).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    scheduler: Literal["constant", "linear", "cosine"] = Field("linear", description="Learning-rate schedule after warm-up.")
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps.")
    max_grad_norm: float | None = Field(1.0, description="Clip the global gradient norm to this (None: no clipping).")
    max_length: int = Field(512, gt=1, description="Tokens per candidate (prompt + response); longer texts lose their start.")
    loss: Literal["bt", "pl"] = Field("bt", description="bt: all-pairs Bradley–Terry (InstructGPT eq. 1); pl: Plackett–Luce listwise.")
    use_margin: bool = Field(True, description="Subtract a row's 'margin' from its pair differences (bt only).")
    freeze_layers: int = Field(0, description="Freeze the embeddings and the first N blocks (negative: all but the last |N|).")
    lora: bool = Field(False, description="Train LoRA adapters (peft) instead of the full backbone; the head trains in full.")
    lora_r: int = Field(8, gt=0, description="LoRA rank.")
    lora_alpha: int = Field(16, gt=0, description="LoRA alpha (scale = alpha / r).")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout.")
    disable_dropout: bool = Field(True, description="Set every dropout to 0: deterministic scores, as TRL's RewardTrainer does.")
    pack: bool = Field(True, description="Forward the candidates without padding: laid end to end in rows, "
                       "attention kept within each candidate by a block-diagonal mask — same scores, fewer tokens.")
    share_prefix: bool = Field(True, description="With pack, causal backbones: forward the tokens a ranking's K "
                               "candidates share (the prompt) once, not K times — same scores, fewer tokens.")
    group_by_length: bool = Field(True, description="Group rankings of similar length into a batch to cut padding.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Weight dtype (float32 on CPU).")
    seed: int = Field(0, description="Seed for the head's initialisation and the data order.")
    skip_invalid: bool = Field(False, description="Skip (and count) malformed rows instead of stopping at the first.")
    save_every: int = Field(0, ge=0, description="Checkpoint every N optimizer steps (0: only the final model).")
    keep_checkpoints: int = Field(2, gt=0, description="Complete checkpoints kept (oldest removed first).")
    resume: bool = Field(False, description="Continue from the latest complete checkpoint in output/checkpoints.")
    log_every: int = Field(10, gt=0, description="Write metrics every N optimizer steps.")
    eval_every: int = Field(0, ge=0, description="Evaluate on eval_data every N steps (0: at the end only).")
    eval_batch_size: int = Field(32, gt=0, description="Sequences per forward pass when scoring for evaluation.")
    normalise_on: str = Field("train", description="Reference set for the stored offset/scale (mean 0, std 1): "
                              "'train', 'eval', 'none' or a preference file.")
    normalise_max: int = Field(2000, gt=0, description="At most this many reference rankings are scored for normalisation.")
    progress: bool = Field(True, description="Show a progress bar.")


# ---------------------------------------------------------------- data order


def epoch_batches(lengths: list[int], epoch: int, seed: int, global_batch: int, group_by_length: bool,
                  min_size: int = 1) -> list[list[int]]:
    """The global batches (lists of ranking indices) of one epoch: a pure function of its arguments.

    With ``group_by_length`` the shuffled order is cut into windows of 50 batches, each sorted
    (stably) by length bucket of 32 tokens, so a batch pads to similar lengths while rankings of
    similar length still meet different neighbours every epoch; the batch order is then shuffled
    again. A last
    batch smaller than ``min_size`` (one ranking per process and micro-batch) is dropped.
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if group_by_length:
        window = global_batch * 50
        order = [i for w in range(0, len(order), window)
                 for i in sorted(order[w : w + window], key=lambda i: lengths[i] // 32)]
    batches = [order[s : s + global_batch] for s in range(0, len(order), global_batch)]
    if batches and len(batches[-1]) < min_size:
        batches.pop()
    if group_by_length:
        rng.shuffle(batches)
    return batches


def split_batch(batch: list[int], parts: int) -> list[list[int]]:
    """Cut a global batch into ``parts`` near-equal consecutive chunks (part i = micro m·W + rank)."""
    n = len(batch)
    return [batch[i * n // parts : (i + 1) * n // parts] for i in range(parts)]


def collate(encoded, idx: list[int], pad_id: int, use_margin: bool = True, pack: dict | None = None):
    """Whole rankings → one forward batch plus the (B, K) layout the losses read.

    Returns ``input_ids, attention_mask (N, T)`` with N = Σ_b K_b (right-padded) — or, given
    ``pack`` (the keyword arguments of ``pack_rankings`` beyond the ids), ``packed``: a
    ``PackedBatch`` of the same N candidates without padding, when that saves enough — and
    ``index (B, K)`` mapping each slot to its candidate in N (padding → 0), ``ranks (B, K)``,
    ``mask (B, K)``, ``margin (B,)`` or None.
    """
    import torch

    from rankloop.packing import worth_packing
    from rankloop.reward.model import pad_batch
    from rankloop.reward.packing import pack_rankings

    rows = [encoded[i] for i in idx]
    k = max(len(r.ids) for r in rows)
    input_ids = attention_mask = packed = None
    if pack is not None:
        packed = pack_rankings([r.ids for r in rows], pad_id, **pack)
        if not worth_packing(packed.input_ids.numel(), sum(len(r.ids) for r in rows) * max(r.max_len for r in rows)):
            packed = None
    if packed is None:
        input_ids, attention_mask = pad_batch([s for r in rows for s in r.ids], pad_id)
    index = torch.zeros((len(rows), k), dtype=torch.long)
    ranks = torch.zeros((len(rows), k), dtype=torch.long)
    mask = torch.zeros((len(rows), k), dtype=torch.bool)
    text_class = torch.arange(k).repeat(len(rows), 1)  # (B, K): copies of one text make no pair
    pos = 0
    for b, r in enumerate(rows):
        n = len(r.ids)
        index[b, :n] = torch.arange(pos, pos + n)
        ranks[b, :n] = torch.as_tensor(r.ranks)
        text_class[b, :n] = torch.as_tensor(r.text_class if r.text_class is not None else range(n))
        mask[b, :n] = True
        pos += n
    margin = None
    if use_margin and any(r.margin is not None for r in rows):
        margin = torch.tensor([r.margin or 0.0 for r in rows], dtype=torch.float32)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "packed": packed, "index": index,
            "ranks": ranks, "mask": mask, "margin": margin, "text_class": text_class}


# ---------------------------------------------------------------- model


def build_model(cfg: RewardTrainConfig, tokenizer, weights_from: str | None = None):
    """The HF sequence-classification model, frozen / LoRA-wrapped as configured."""
    import torch

    from rankloop.models import apply_lora, freeze_bottom, load_sequence_scorer

    torch.manual_seed(cfg.seed)  # the fresh head's initialisation
    model = load_sequence_scorer(weights_from or cfg.model, dtype=cfg.dtype, tokenizer=tokenizer)
    if cfg.disable_dropout:
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
    if cfg.freeze_layers:
        freeze_bottom(model, cfg.freeze_layers)
    if cfg.lora:
        targets = None  # peft's "all-linear"
        if cfg.freeze_layers:  # no adapters on frozen blocks: they must stay exactly as loaded
            head = {"score", "classifier"}
            targets = [n for n, mod in model.named_modules() if isinstance(mod, torch.nn.Linear)
                       and mod.weight.requires_grad and n.split(".")[-1] not in head]
        model = apply_lora(model, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout, task="reward",
                           target_modules=targets)
    return model


def exportable(model):
    """The plain transformers model to save: LoRA merged into a copy, so training can go on."""
    if hasattr(model, "merge_and_unload"):
        return copy.deepcopy(model).merge_and_unload()
    return model


def save_pretrained_atomic(model, tokenizer, target: Path, extra: dict[str, object] | None = None) -> None:
    """Write a loadable model directory under a temporary name and rename it into place."""
    import torch

    tmp = target.parent / f".tmp-{target.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    exportable(model).save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    for name, obj in (extra or {}).items():
        if name.endswith(".pt"):
            torch.save(obj, tmp / name)
        elif hasattr(obj, "model_dump_json"):
            save_config(obj, tmp / name)
        else:
            (tmp / name).write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
    _fsync_dir(tmp)
    if target.exists():  # only a final output dir; checkpoint names are unique
        old = target.parent / f".old-{target.name}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)


def _fsync_dir(path: Path) -> None:
    for f in path.iterdir():
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())


def latest_checkpoint(output: str | Path) -> Path | None:
    """The newest complete checkpoint (temporary directories are never complete)."""
    root = Path(output) / CHECKPOINTS
    done = sorted(p for p in root.glob("step-*") if (p / TRAINER_STATE).exists()) if root.exists() else []
    return done[-1] if done else None


def _rng_state() -> dict:
    import numpy as np
    import torch

    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def _set_rng_state(state: dict) -> None:
    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


# ---------------------------------------------------------------- the loop


def train_reward_model(cfg: RewardTrainConfig) -> Path:
    """Train, checkpoint, normalise and save; returns the output directory (loads with
    ``from_pretrained`` / ``RewardScorer.from_pretrained``)."""
    import torch
    from accelerate import Accelerator
    from rich.console import Console
    from transformers import get_scheduler

    from rankloop.io import ReadStats, read_preferences, write_json
    from rankloop.models import adamw, count_parameters, load_tokenizer
    from rankloop.reward.eval import encode_examples, ranking_metrics, score_encoded
    from rankloop.reward.model import ScoreModule, is_causal_scorer
    from rankloop.reward.packing import can_pack

    # 1. Set-up ------------------------------------------------------------------------------
    # Several processes and no GPU (torchrun / accelerate launch on CPU): data-parallel over gloo.
    cpu_ddp = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    acc = Accelerator(cpu=cpu_ddp)
    main = acc.is_main_process
    console = Console(stderr=True, quiet=not main)
    out = Path(cfg.output)
    ckpt_root = out / CHECKPOINTS
    if main:
        out.mkdir(parents=True, exist_ok=True)
        for stale in list(ckpt_root.glob(".tmp-*")) if ckpt_root.exists() else []:
            shutil.rmtree(stale, ignore_errors=True)  # a run killed mid-write
    resume_from = latest_checkpoint(out) if cfg.resume else None
    if not cfg.resume and latest_checkpoint(out) is not None:
        from rankloop.config import ConfigError

        raise ConfigError(f"{ckpt_root} holds checkpoints of an earlier run: pass --resume to continue it, "
                          "or choose another --output")
    if cfg.normalise_on not in ("train", "eval", "none") and not Path(cfg.normalise_on).exists():
        from rankloop.config import ConfigError

        raise ConfigError(f"normalise_on: {cfg.normalise_on} is neither train, eval, none nor an existing file")
    if cfg.normalise_on == "eval" and not cfg.eval_data:
        from rankloop.config import ConfigError

        raise ConfigError("normalise_on: 'eval' needs eval_data")
    if cfg.resume and resume_from is None:
        console.print(f"[yellow]--resume: no complete checkpoint in {ckpt_root}; starting from the beginning[/]")
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    # 2. Data: read, validate, tokenise each candidate once ---------------------------------
    tok = load_tokenizer(cfg.model, padding_side="right")
    fmt = None if cfg.format == "auto" else cfg.format
    stats = ReadStats()
    examples = read_preferences(cfg.data, fmt=fmt, skip_invalid=cfg.skip_invalid, stats=stats)
    if stats.skipped:
        console.print(f"skipped {stats.skipped} of {stats.rows} rows of {cfg.data} (--skip-invalid); first: {stats.reasons[0]}")
    if not examples:
        from rankloop.io import DataError

        raise DataError(cfg.data, None, "no valid rankings to train on")
    from transformers import AutoConfig

    from rankloop.reward.model import _model_max_positions

    max_length = min(cfg.max_length, _model_max_positions(AutoConfig.from_pretrained(cfg.model)))
    train = encode_examples(examples, tok, max_length)
    eval_set = None
    if cfg.eval_data:
        eval_stats = ReadStats()
        eval_ex = read_preferences(cfg.eval_data, skip_invalid=cfg.skip_invalid, stats=eval_stats)
        eval_set = encode_examples(eval_ex, tok, max_length)

    world, accum = acc.num_processes, cfg.grad_accum
    global_batch = cfg.batch_size * accum * world
    lengths = [e.max_len for e in train]
    steps_per_epoch = len(epoch_batches(lengths, 0, cfg.seed, global_batch, cfg.group_by_length, world * accum))
    if steps_per_epoch == 0:
        from rankloop.io import DataError

        raise DataError(cfg.data, None, f"{len(train)} rankings are too few for {world} process(es) × {accum} micro-batches")
    total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))

    # 3. Model, optimizer, schedule; --resume restores all three and the RNG ---------------
    state = None
    if resume_from is not None:
        state = torch.load(resume_from / TRAINER_STATE, map_location="cpu", weights_only=False)
    # Full fine-tuning resumes from the checkpoint's own weights; LoRA from the base + adapter state.
    model = build_model(cfg, tok, weights_from=str(resume_from) if state is not None and not cfg.lora else None)
    if state is not None and cfg.lora:
        model.load_state_dict(state["trainable"], strict=False)
    trainable, total = count_parameters(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = adamw(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = get_scheduler(cfg.scheduler, optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=total_steps)
    start_step = 0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        start_step = state["step"]
        console.print(f"resumed from {resume_from} at step {start_step}")
    scorer, optimizer = acc.prepare(ScoreModule(model), optimizer)
    device = acc.device
    pack = None
    if cfg.pack and can_pack(model):
        pack = {"causal": is_causal_scorer(model), "share_prefix": cfg.share_prefix,
                "hidden_size": getattr(model.config, "hidden_size", 1024)}
    elif cfg.pack and main:
        console.print("[yellow]pack: this backbone's attention or head cannot take packed rows; padding instead[/]")

    metrics_path = out / "metrics.jsonl"
    if main:
        save_config(cfg, out / "train_config.json")
        _truncate_metrics(metrics_path, start_step)
    tb = _tensorboard(out) if main else None
    console.print(
        f"train-rm: {len(train)} rankings ({sum(len(e.ids) for e in train)} candidates), {total_steps} steps of "
        f"{global_batch} rankings on {world} process(es); loss {cfg.loss}; {trainable:,} of {total:,} parameters trainable"
    )

    def log(row: dict) -> None:
        if not main:
            return
        with open(metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        if tb is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != "step":
                    tb.add_scalar(k, v, row["step"])

    def evaluate(step: int) -> dict | None:
        if eval_set is None:
            return None
        if main:
            raw = score_encoded(model, eval_set, tok.pad_token_id, cfg.eval_batch_size, device)
            m = ranking_metrics(raw, [e.ranks for e in eval_set], [e.text_class for e in eval_set])
            log({"step": step, "eval/pairwise_accuracy": m["pairwise_accuracy"],
                 "eval/exact_ranking_accuracy": m["exact_ranking_accuracy"], "eval/kendall_tau": m["kendall_tau"],
                 "eval/margin": m["mean_margin"]})
        acc.wait_for_everyone()
        return m if main else None

    def checkpoint(step: int) -> None:
        acc.wait_for_everyone()
        if main:
            trainer_state = {
                "step": step,
                "optimizer": optimizer.optimizer.state_dict() if hasattr(optimizer, "optimizer") else optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": _rng_state(),
                "trainable": {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad} if cfg.lora else None,
            }
            save_pretrained_atomic(model, tok, ckpt_root / f"step-{step:08d}",
                                   {TRAINER_STATE: trainer_state, "train_config.json": cfg})
            for old in sorted(p for p in ckpt_root.glob("step-*"))[: -cfg.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()

    # 4. Train: one optimizer step per global batch ----------------------------------------
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(TextColumn("train-rm"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        TextColumn("{task.fields[info]}"), console=console, disable=not (main and cfg.progress))
    scorer.train()
    epoch_cache: dict[int, list[list[int]]] = {}
    sums = torch.zeros(5, device=device)  # Σ loss, rankings, correct pairs, Σ margin, pairs
    t_log = t_train = time.perf_counter()
    with progress:
        task = progress.add_task("train", total=total_steps, completed=start_step, info="")
        for step in range(start_step, total_steps):
            # 4a. This step's global batch: a function of (seed, epoch, step) only.
            epoch, pos = divmod(step, steps_per_epoch)
            if epoch not in epoch_cache:
                epoch_cache.clear()
                epoch_cache[epoch] = epoch_batches(lengths, epoch, cfg.seed, global_batch, cfg.group_by_length, world * accum)
            batch = epoch_cache[epoch][pos]
            parts = split_batch(batch, world * accum)
            # 4b. Forward each candidate once, all pair losses from the K scores, backward.
            for m in range(accum):
                idx = parts[m * world + acc.process_index]
                sync = m == accum - 1
                with acc.no_sync(scorer) if (not sync and world > 1) else _null():
                    sums += micro_step(scorer, acc, train, idx, len(batch), cfg.loss, tok.pad_token_id, cfg.use_margin,
                                       pack)
            # 4c. Update.
            if cfg.max_grad_norm is not None:
                grad_norm = acc.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            done = step + 1
            # 4d. Log, evaluate, checkpoint.
            if done % cfg.log_every == 0 or done == total_steps:
                tot = acc.reduce(sums.clone(), reduction="sum").tolist()
                row = {
                    "step": done, "epoch": round(done / steps_per_epoch, 4),
                    "loss": tot[0] / max(tot[1], 1), "reward/accuracy": tot[2] / max(tot[4], 1),
                    "reward/margin": tot[3] / max(tot[4], 1), "lr": scheduler.get_last_lr()[0],
                    "steps_per_s": cfg.log_every / max(time.perf_counter() - t_log, 1e-9),
                }
                if cfg.max_grad_norm is not None:
                    row["grad_norm"] = float(grad_norm)
                log(row)
                progress.update(task, info=f"loss {row['loss']:.4f} acc {row['reward/accuracy']:.3f}")
                sums.zero_()
                t_log = time.perf_counter()
            if cfg.eval_every and done % cfg.eval_every == 0 and done != total_steps:
                evaluate(done)
            if cfg.save_every and done % cfg.save_every == 0 and done != total_steps:
                checkpoint(done)
            progress.update(task, completed=done)

    train_seconds = time.perf_counter() - t_train

    # 5. Evaluate, fit the normalisation (Stiennon et al. 2020), save ---------------------
    final_eval = evaluate(total_steps)
    acc.wait_for_everyone()
    if main:
        norm = _fit_normalisation(cfg, model, tok, train, eval_set, device, score_encoded, encode_examples, max_length)
        extra = {"train_config.json": cfg}
        summary = {"steps": total_steps, "rankings": len(train), "skipped": stats.skipped,
                   "trainable_parameters": trainable, "parameters": total, "resumed_at": start_step,
                   "train_loop_seconds": round(train_seconds, 3)}
        if final_eval is not None:
            summary["eval"] = {k: v for k, v in final_eval.items() if k != "scores"}
        extra["train_summary.json"] = summary
        final = save_final(model, tok, out, extra)
        if norm is not None:
            norm.save(final)
        if final_eval is not None:
            console.print(f"eval pairwise accuracy {final_eval['pairwise_accuracy']:.4f} on {len(eval_set)} rankings")
        console.print(f"saved reward model to {final}")
    if tb is not None:
        tb.close()
    acc.wait_for_everyone()
    acc.end_training() if hasattr(acc, "end_training") else None
    return out


def micro_step(scorer, acc, encoded, idx: list[int], n_global: int, loss: str, pad_id: int, use_margin: bool = True,
               pack: dict | None = None):
    """Forward each candidate of the rankings ``idx`` once, take every pair loss from their K
    scores, and backward ``Σ per-ranking loss · num_processes / n_global`` — the share of this
    micro-batch in the mean over the optimizer step's ``n_global`` rankings (DDP then averages
    over processes). Returns the sums ``(Σ loss, rankings, correct pairs, Σ margin, pairs)``."""
    import torch

    from rankloop.reward.loss import pair_metrics, ranking_loss

    device = acc.device
    b = collate(encoded, idx, pad_id, use_margin, pack)
    if b["packed"] is not None:
        flat = scorer(packed=b["packed"].to(device))  # (N,) one score per candidate
    else:
        flat = scorer(b["input_ids"].to(device), b["attention_mask"].to(device))
    s = flat[b["index"].to(device)]  # (B, K)
    ranks, mask = b["ranks"].to(device), b["mask"].to(device)
    margin = b["margin"].to(device) if b["margin"] is not None else None
    text_class = b["text_class"].to(device)
    per = ranking_loss(loss, s, ranks, mask, margin, text_class)  # (B,)
    acc.backward(per.sum() * acc.num_processes / n_global)
    pm = pair_metrics(s.detach(), ranks, mask, text_class)
    return torch.stack([per.detach().sum(), torch.tensor(float(len(idx)), device=device),
                        pm["correct"], pm["margin"], pm["pairs"]])


def save_final(model, tok, out: Path, extra: dict) -> Path:
    """The final model files into ``out`` itself (beside metrics.jsonl and checkpoints/), each file
    replaced atomically: the model is written whole to a temporary sibling directory first."""
    tmp = out / ".final"
    save_pretrained_atomic(model, tok, tmp, extra)
    for f in tmp.iterdir():
        os.replace(f, out / f.name)
    tmp.rmdir()
    return out


def _fit_normalisation(cfg, model, tok, train, eval_set, device, score_encoded, encode_examples, max_length):
    import torch

    from rankloop.io import read_preferences
    from rankloop.reward.model import Normalisation

    ref = cfg.normalise_on
    if ref == "none":
        return None
    if ref == "train":
        enc = train
    elif ref == "eval":
        if eval_set is None:
            raise ValueError("normalise_on='eval' needs eval_data")
        enc = eval_set
    else:
        enc = encode_examples(read_preferences(ref, skip_invalid=True), tok, max_length)
    enc = enc[: cfg.normalise_max]
    raw = score_encoded(model, enc, tok.pad_token_id, cfg.eval_batch_size, device)
    return Normalisation.fit(torch.tensor([v for s in raw for v in s]), reference=ref)


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop rows the killed run wrote after its last checkpoint."""
    if not path.exists():
        return
    if step == 0:
        path.unlink()
        return
    keep = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= step]
    path.write_text("".join(ln + "\n" for ln in keep), encoding="utf-8")


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard is optional
        return None
    return SummaryWriter(str(out / "tensorboard"))


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
