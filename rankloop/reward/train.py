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

import functools
import random
import time
from pathlib import Path
from typing import NamedTuple

import torch
from rich.console import Console
from transformers import AutoConfig

from rankloop.config import ConfigError, save_config, weights_dtype
from rankloop.io import DataError, ReadStats, read_preferences, read_ratings
from rankloop.models import (apply_lora, count_parameters, enable_gradient_checkpointing, freeze_bottom, is_causal_scorer,
                             load_sequence_scorer, load_tokenizer, model_max_positions)
from rankloop.packing import PackedBatch, worth_packing
from rankloop.records import RankedExample, apply_flags, orderings_from_ratings
from rankloop.reward.config import RewardTrainConfig
from rankloop.reward.eval import EncodedRanking, encode_examples, ranking_metrics, score_encoded
from rankloop.reward.loss import pair_metrics, ranking_loss
from rankloop.reward.model import Normalisation, ScoreModule, pad_batch
from rankloop.reward.packing import can_pack, pack_rankings
from rankloop.runtime import (EpochCache, RunDir, build_training, full_state_dict, gathered, is_fsdp,
                              open_supervised_run, optimizer_step, plan_steps, progress_bar, save_checkpoint,
                              save_final, split_batch, tracking)

__all__ = ["RewardTrainConfig", "train_reward_model"]

# ---------------------------------------------------------------- data order


class RankingBatch(NamedTuple):
    """Whole rankings as one forward batch of N = Σ_b K_b candidates, and the (B, K) layout the
    losses read. Exactly one of (input_ids, attention_mask) and packed is set."""

    input_ids: torch.Tensor | None  # (N, T) right-padded
    attention_mask: torch.Tensor | None  # (N, T)
    packed: PackedBatch | None  # the same N candidates without padding
    index: torch.Tensor  # (B, K) each slot's candidate in N (padding → 0)
    ranks: torch.Tensor  # (B, K) rank of each candidate, 0 = best, ties equal
    mask: torch.Tensor  # (B, K) real slots
    margin: torch.Tensor | None  # (B,) or None
    text_class: torch.Tensor  # (B, K) candidates with the same text share a class: they make no pair


def collate(encoded, idx: list[int], pad_id: int, use_margin: bool = True, pack: dict | None = None,
            reads: list[list[list[int]]] | None = None) -> RankingBatch:
    """The rankings ``idx`` of ``encoded`` as one ``RankingBatch``; given ``pack`` (the keyword
    arguments of ``pack_rankings`` beyond the ids) the candidates are packed when that saves enough,
    read at the positions ``reads`` (per ranking, per candidate; default: where the score is read)."""
    rows = [encoded[i] for i in idx]
    k = max(len(r.ids) for r in rows)
    input_ids = attention_mask = packed = None
    if pack is not None:
        packed = pack_rankings([r.ids for r in rows], pad_id, **pack, reads=reads)
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
    return RankingBatch(input_ids, attention_mask, packed, index, ranks, mask, margin, text_class)


# ---------------------------------------------------------------- model


def build_model(cfg: RewardTrainConfig, tokenizer, weights_from: str | None = None):
    """The HF sequence-classification model, frozen / LoRA-wrapped as configured."""
    torch.manual_seed(cfg.seed)  # the fresh head's initialisation
    model = load_sequence_scorer(weights_from or cfg.model, dtype=weights_dtype(cfg.dtype, cfg.precision),
                                 tokenizer=tokenizer)
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
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    return model


# ---------------------------------------------------------------- the loop


class RewardData(NamedTuple):
    """The tokenised rankings, each candidate encoded once."""

    tokenizer: object
    train: list[EncodedRanking]
    eval_set: list[EncodedRanking] | None
    max_length: int  # tokens per candidate: the config's, capped by the model's positions
    skipped: int  # malformed training rows skipped (``skip_invalid``)
    tied_only: int = 0  # training rankings left out: one tie group, so no pair and no loss


class RankingSums(NamedTuple):
    """Sums over logged micro-batches (and processes): ``micro_step`` returns them as a (5,) tensor
    in this order, so one all-reduce carries them."""

    loss: float  # Σ per-ranking loss
    rankings: float
    correct: float  # correctly ordered pairs
    margin: float  # Σ score margin over pairs
    pairs: float


def train_reward_model(cfg: RewardTrainConfig) -> Path:
    """Train, checkpoint, normalise and save; returns the output directory (loads with
    ``from_pretrained`` / ``RewardScorer.from_pretrained``)."""
    acc, console, run, guard = open_supervised_run(cfg, fsdp=True)
    main = acc.is_main_process

    # 1. Set-up: where to start ---------------------------------------------------------------
    resume_from = check_start(cfg, run, console)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    # 2. Data: read, validate, tokenise each candidate once; cut it into steps ------------------
    data = load_data(cfg, console)
    plan = plan_steps(cfg, [e.max_len for e in data.train], acc.num_processes, "rankings")

    # 3. Model, optimizer, schedule; --resume restores all three and the RNG -------------------
    model, optimizer, scheduler, start = build_training(cfg, data.tokenizer, plan, resume_from, console, build_model)
    scorer, optimizer = acc.prepare(ScoreModule(model), optimizer)
    pack = pack_settings(cfg, model, console if main else None)
    guard.last_good = resume_from
    run.begin(resumed_at=start)
    if main:
        save_config(cfg, run.out / "train_config.json")
    trainable, total = count_parameters(model)
    console.print(
        f"train-rm: {len(data.train)} rankings ({sum(len(e.ids) for e in data.train)} candidates), "
        f"{plan.total_steps} steps of {plan.global_batch} rankings on {acc.num_processes} process(es); "
        f"loss {cfg.loss}; {trainable:,} of {total:,} parameters trainable"
    )

    # 4. Train: one optimizer step per global batch ---------------------------------------------
    params = [p for p in model.parameters() if p.requires_grad]
    scorer.train()
    batches = EpochCache(cfg, plan, acc.num_processes)
    sums = torch.zeros(5, device=acc.device)  # RankingSums since the last log
    t_log = t_train = time.perf_counter()
    bar = progress_bar("train-rm", enabled=main and cfg.progress, console=console)
    with tracking(acc), bar:
        task = bar.add_task("train", total=plan.total_steps, completed=start, info="")
        for step in range(start, plan.total_steps):
            # 4a. This step's global batch: a function of (seed, epoch, step) only.
            batch = batches.of(step)
            parts = split_batch(batch, acc.num_processes * cfg.grad_accum)
            # 4b. Forward each candidate once, all pair losses from the K scores, backward; 4c. update.
            mine = [parts[m * acc.num_processes + acc.process_index] for m in range(cfg.grad_accum)]
            grad_norm = optimizer_step(
                acc, scorer, [functools.partial(micro_step, scorer, acc, data.train, idx, len(batch), cfg.loss,
                                                data.tokenizer.pad_token_id, cfg.use_margin, pack) for idx in mine],
                sums, optimizer, scheduler, params, cfg.max_grad_norm, guard, step)
            done = step + 1
            # 4d. Log, evaluate, checkpoint.
            if done % cfg.log_every == 0 or done == plan.total_steps:
                s = RankingSums(*acc.reduce(sums.clone(), reduction="sum").tolist())
                row = {
                    "step": done, "epoch": round(done / plan.steps_per_epoch, 4),
                    "loss": s.loss / max(s.rankings, 1), "reward/accuracy": s.correct / max(s.pairs, 1),
                    "reward/margin": s.margin / max(s.pairs, 1), "lr": scheduler.get_last_lr()[0],
                    "steps_per_s": cfg.log_every / max(time.perf_counter() - t_log, 1e-9),
                }
                if cfg.max_grad_norm is not None:
                    row["grad_norm"] = float(grad_norm)
                acc.log(row, step=done)
                bar.update(task, info=f"loss {row['loss']:.4f} acc {row['reward/accuracy']:.3f}")
                sums.zero_()
                t_log = time.perf_counter()
            if cfg.eval_every and done % cfg.eval_every == 0 and done != plan.total_steps:
                with gathered(acc, scorer):  # FSDP: evaluation calls the model inside the prepared wrapper
                    evaluate(acc, model, data, cfg, done)
            if cfg.save_every and done % cfg.save_every == 0 and done != plan.total_steps:
                guard.last_good = save_checkpoint(run, model, optimizer, scheduler, data.tokenizer, cfg, done, guard)
            bar.update(task, completed=done)
        train_seconds = time.perf_counter() - t_train

        # 5. Evaluate, fit the normalisation (Ziegler et al. 2019 §2: mean 0, std 1), save ---------------------------
        with gathered(acc, scorer):
            final_eval = evaluate(acc, model, data, cfg, plan.total_steps)
    norm = weights = None
    if main or is_fsdp(acc):  # under FSDP a forward pass is collective: every process fits (the same result)
        with acc.autocast(), gathered(acc, scorer):
            norm = fit_normalisation(cfg, model, data, acc.device)
    if is_fsdp(acc):
        weights = full_state_dict(acc, model)  # every process: the gather is collective
    if main:
        summary = {"steps": plan.total_steps, "rankings": len(data.train), "skipped": data.skipped,
                   "trainable_parameters": trainable, "parameters": total, "resumed_at": start,
                   "train_loop_seconds": round(train_seconds, 3)}
        if data.tied_only:  # (a key only when there were some: the golden runs have none)
            summary["tied_only"] = data.tied_only
        if final_eval is not None:
            summary["eval"] = {k: v for k, v in final_eval.items() if k != "scores"}
        final = save_final(model, data.tokenizer, run.out, {"train_config.json": cfg, "train_summary.json": summary},
                           state_dict=weights)
        if norm is not None:
            norm.save(final)
        if final_eval is not None:
            console.print(f"eval pairwise accuracy {final_eval['pairwise_accuracy']:.4f} on {len(data.eval_set)} rankings")
        console.print(f"saved reward model to {final}")
    acc.wait_for_everyone()
    return run.out


# ---------------------------------------------------------------- 1.–3. set-up


def check_start(cfg: RewardTrainConfig, run: RunDir, console: Console) -> Path | None:
    """The checkpoint to resume from (None: from the beginning), after checking the settings that
    would otherwise fail only at the end."""
    resume_from = run.resume_point(cfg.resume, console)
    if cfg.normalise_on not in ("train", "eval", "none") and not Path(cfg.normalise_on).exists():
        raise ConfigError(f"normalise_on: {cfg.normalise_on} is neither train, eval, none nor an existing file")
    if cfg.normalise_on == "eval" and not cfg.eval_data:
        raise ConfigError("normalise_on: 'eval' needs eval_data")
    return resume_from


def load_data(cfg: RewardTrainConfig, console: Console, encode=encode_examples) -> RewardData:
    """Read ``cfg.data`` (and ``cfg.eval_data``) in any preference format, drop (and count) the
    training rankings that are one tie group — they have no pair, so averaging their zero loss in
    would only thin the step's gradient — and tokenise with ``encode(examples, tokenizer, max_length)``."""
    tok = load_tokenizer(cfg.model, padding_side="right")
    fmt = None if cfg.format == "auto" else cfg.format
    stats = ReadStats()
    examples = read_preferences(cfg.data, fmt=fmt, skip_invalid=cfg.skip_invalid, stats=stats)
    if stats.skipped:
        console.print(f"skipped {stats.skipped} of {stats.rows} rows of {cfg.data} (--skip-invalid); first: {stats.reasons[0]}")
    examples = with_feedback(cfg, examples, console)
    ranked = [ex for ex in examples if len(ex.ranking.order) > 1]
    tied_only = len(examples) - len(ranked)
    if tied_only:
        console.print(f"left out {tied_only} of {len(examples)} rankings of {cfg.data}: all candidates tied (no pair to learn from)")
    if not ranked:
        raise DataError(cfg.data, None, "no valid rankings to train on" if not examples else
                        "every ranking is one tie group: no preference to learn from")
    max_length = min(cfg.max_length, model_max_positions(AutoConfig.from_pretrained(cfg.model)))
    train = encode(ranked, tok, max_length)
    eval_set = None
    if cfg.eval_data:
        read = read_preferences(cfg.eval_data, skip_invalid=cfg.skip_invalid, stats=ReadStats())
        eval_ex = apply_flags(read, all_bad=cfg.all_bad, unsafe=cfg.unsafe)
        if read and not eval_ex:
            raise DataError(cfg.eval_data, None, f"no ranking left to evaluate on after the labelers' flags "
                            f"(all_bad={cfg.all_bad}, unsafe={cfg.unsafe}): every one is all-bad or unsafe")
        eval_set = encode(eval_ex, tok, max_length)
    return RewardData(tok, train, eval_set, max_length, stats.skipped, tied_only)


def with_feedback(cfg, examples: list[RankedExample], console: Console) -> list[RankedExample]:
    """The labeler's flags applied (``cfg.all_bad``, ``cfg.unsafe``: ``records.apply_flags``) and,
    for a reward model given ``ratings``, the orderings its Likert scores make added (issue 15 item 1).
    Without flags in the data and without ratings this returns ``examples`` itself."""
    kept = apply_flags(examples, all_bad=cfg.all_bad, unsafe=cfg.unsafe)
    if len(kept) != len(examples) or any(a is not b for a, b in zip(kept, examples)):
        changed = sum(1 for a, b in zip(kept, examples) if a is not b) if len(kept) == len(examples) else None
        console.print(f"flags (all_bad={cfg.all_bad}, unsafe={cfg.unsafe}): {len(examples) - len(kept)} of "
                      f"{len(examples)} rankings left out" + (f", {changed} with unsafe candidates taken out" if changed else ""))
    ratings_path = getattr(cfg, "ratings", None)
    if ratings_path:
        stats = ReadStats()
        ratings = read_ratings(ratings_path, skip_invalid=cfg.skip_invalid, stats=stats, need_texts=True)
        orderings = orderings_from_ratings(ratings)
        console.print(f"ratings: {len(orderings)} within-prompt orderings from {len(ratings)} Likert ratings of {ratings_path}")
        if not orderings and ratings:
            console.print("[yellow]ratings: no labeler gave two candidates of a prompt different scores: no ordering[/]")
        kept = kept + orderings
    return kept


def pack_settings(cfg: RewardTrainConfig, model, console: Console | None) -> dict | None:
    """``pack_rankings`` keyword arguments, or None to pad (this backbone cannot take packed rows)."""
    if cfg.pack and can_pack(model):
        return {"causal": is_causal_scorer(model), "share_prefix": cfg.share_prefix,
                "hidden_size": getattr(model.config, "hidden_size", 1024)}
    if cfg.pack and console is not None:
        console.print("[yellow]pack: this backbone's attention or head cannot take packed rows; padding instead[/]")
    return None


# ---------------------------------------------------------------- 4. one micro-batch, evaluation, checkpoints


def micro_step(scorer, acc, encoded, idx: list[int], n_global: int, loss: str, pad_id: int, use_margin: bool = True,
               pack: dict | None = None) -> torch.Tensor:
    """Forward each candidate of the rankings ``idx`` once, take every pair loss from their K
    scores, and backward ``Σ per-ranking loss · num_processes / n_global`` — the share of this
    micro-batch in the mean over the optimizer step's ``n_global`` rankings (DDP then averages
    over processes). Returns the (5,) ``RankingSums`` of the micro-batch."""
    device = acc.device
    b = collate(encoded, idx, pad_id, use_margin, pack)
    if b.packed is not None:
        flat = scorer(packed=b.packed.to(device))  # (N,) one score per candidate
    else:
        flat = scorer(b.input_ids.to(device), b.attention_mask.to(device))
    s = flat[b.index.to(device)]  # (B, K)
    ranks, mask = b.ranks.to(device), b.mask.to(device)
    margin = b.margin.to(device) if b.margin is not None else None
    text_class = b.text_class.to(device)
    per = ranking_loss(loss, s, ranks, mask, margin, text_class)  # (B,)
    acc.backward(per.sum() * acc.num_processes / n_global)
    pm = pair_metrics(s.detach(), ranks, mask, text_class)
    return torch.stack([per.detach().sum(), torch.tensor(float(len(idx)), device=device),
                        pm["correct"], pm["margin"], pm["pairs"]])


def evaluate(acc, model, data: RewardData, cfg: RewardTrainConfig, step: int) -> dict | None:
    """Ranking metrics on the held-out set (main process), logged as ``eval/*`` rows."""
    if data.eval_set is None:
        return None
    m = None
    if acc.is_main_process or is_fsdp(acc):  # FSDP: every process evaluates (a forward pass is collective)
        with acc.autocast():  # the unprepared model: autocast as in training (a no-op in float32)
            raw = score_encoded(model, data.eval_set, data.tokenizer.pad_token_id, cfg.eval_batch_size, acc.device)
        m = ranking_metrics(raw, [e.ranks for e in data.eval_set], [e.text_class for e in data.eval_set])
    if acc.is_main_process:
        acc.log({"step": step, "eval/pairwise_accuracy": m["pairwise_accuracy"],
                 "eval/exact_ranking_accuracy": m["exact_ranking_accuracy"], "eval/kendall_tau": m["kendall_tau"],
                 "eval/margin": m["mean_margin"]}, step=step)
    acc.wait_for_everyone()
    return m


def fit_normalisation(cfg: RewardTrainConfig, model, data: RewardData, device) -> Normalisation | None:
    """Offset and scale making the reference set's scores mean 0, std 1."""
    ref = cfg.normalise_on
    if ref == "none":
        return None
    if ref == "train":
        enc = data.train
    elif ref == "eval":
        if data.eval_set is None:
            raise ValueError("normalise_on='eval' needs eval_data")
        enc = data.eval_set
    else:
        enc = encode_examples(read_preferences(ref, skip_invalid=True), data.tokenizer, data.max_length)
    enc = enc[: cfg.normalise_max]
    raw = score_encoded(model, enc, data.tokenizer.pad_token_id, cfg.eval_batch_size, device)
    return Normalisation.fit(torch.tensor([v for s in raw for v in s]), reference=ref)
