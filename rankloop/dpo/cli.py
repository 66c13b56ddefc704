"""``rankloop train-dpo`` (torch is imported inside the command)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    app.command("train-dpo")(train_dpo)


def train_dpo(
    data: Optional[str] = typer.Option(None, "--data", help="Training preferences: rankings.jsonl, TRL pairs or HH-RLHF (.jsonl/.jsonl.gz)."),
    model: Optional[str] = typer.Option(None, "--model", help="The policy to start from: causal LM id or local path."),
    output: Optional[str] = typer.Option(None, "--output", help="Output directory (final policy, metrics.jsonl, checkpoints/, reference_logps.pt)."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML file with any of these fields; flags override it."),
    reference: Optional[str] = typer.Option(None, "--reference", help="Reference policy [the starting model; under LoRA the adapter off]."),
    eval_data: Optional[str] = typer.Option(None, "--eval-data", help="Held-out preferences: implicit-reward accuracy, chosen log-probs, KL."),
    fmt: Optional[str] = typer.Option(None, "--format", help="rankings | trl | hh (default: detected)."),
    loss: Optional[str] = typer.Option(None, "--loss", help="dpo (all pairs) | pl (Plackett–Luce listwise) | ipo [dpo]."),
    beta: Optional[float] = typer.Option(None, "--beta", help="β, the implicit KL strength (> 0) [0.1]."),
    label_smoothing: Optional[float] = typer.Option(None, "--label-smoothing", help="Conservative DPO's ε (loss dpo) [0]."),
    epochs: Optional[float] = typer.Option(None, "--epochs", help="Passes over the data [1]."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Stop after N optimizer steps."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Rankings (prompts) per micro-batch per process [8]."),
    grad_accum: Optional[int] = typer.Option(None, "--grad-accum", help="Micro-batches per optimizer step [1]."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate [1e-6]."),
    max_length: Optional[int] = typer.Option(None, "--max-length", help="Tokens per candidate (prompt + response) [512]."),
    freeze_layers: Optional[int] = typer.Option(None, "--freeze-layers", help="Freeze embeddings + first N blocks [0]."),
    lora: Optional[bool] = typer.Option(None, "--lora/--no-lora", help="Train LoRA adapters (saved merged); reference = adapter off."),
    lora_r: Optional[int] = typer.Option(None, "--lora-r", help="LoRA rank [8]."),
    lora_alpha: Optional[int] = typer.Option(None, "--lora-alpha", help="LoRA alpha [16]."),
    save_every: Optional[int] = typer.Option(None, "--save-every", help="Checkpoint every N steps [0: final only]."),
    eval_every: Optional[int] = typer.Option(None, "--eval-every", help="Evaluate every N steps [0: end only]."),
    resume: Optional[bool] = typer.Option(None, "--resume/--no-resume", help="Continue from the latest complete checkpoint."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed [0]."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="float32 | bfloat16 | float16 [float32]."),
    skip_invalid: Optional[bool] = typer.Option(None, "--skip-invalid/--no-skip-invalid", help="Skip and count malformed rows."),
    pack: Optional[bool] = typer.Option(None, "--pack/--no-pack", help="Prompt once, K responses as branches of a packed tree [pack]."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar."),
) -> None:
    """DPO on K-way rankings (or pairs), no reward model: all C(K,2) pairs or the Plackett–Luce list from one tree forward per ranking."""
    from rankloop.config import load_config
    from rankloop.dpo.config import DPOConfig
    from rankloop.io import DataError

    cfg = load_config(
        DPOConfig, config, data=data, model=model, output=output, reference=reference, eval_data=eval_data,
        format=fmt, loss=loss, beta=beta, label_smoothing=label_smoothing, epochs=epochs, max_steps=max_steps,
        batch_size=batch_size, grad_accum=grad_accum, lr=lr, max_length=max_length, freeze_layers=freeze_layers,
        lora=lora, lora_r=lora_r, lora_alpha=lora_alpha, save_every=save_every, eval_every=eval_every,
        resume=resume, seed=seed, dtype=dtype, skip_invalid=skip_invalid, pack=pack,
        progress=False if no_progress else None,
    )
    from rankloop.dpo.train import train_dpo as run

    try:
        run(cfg)
    except DataError as e:
        if not cfg.skip_invalid and e.line is not None:
            raise DataError(e.path, e.line, f"{e.message} (pass --skip-invalid to skip and count bad rows)") from None
        raise
