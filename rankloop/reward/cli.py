"""``rankloop train-rm`` and ``rankloop eval-rm`` (torch is imported inside the commands)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    app.command("train-rm")(train_rm)
    app.command("eval-rm")(eval_rm)


def train_rm(
    data: Optional[str] = typer.Option(None, "--data", help="Training preferences: rankings.jsonl, TRL pairs or HH-RLHF (.jsonl/.jsonl.gz)."),
    model: Optional[str] = typer.Option(None, "--model", help="Backbone: Hugging Face id or local path."),
    output: Optional[str] = typer.Option(None, "--output", help="Output directory (final model, metrics.jsonl, checkpoints/)."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML file with any of these fields; flags override it."),
    eval_data: Optional[str] = typer.Option(None, "--eval-data", help="Held-out preferences, evaluated at the end (and every --eval-every steps)."),
    fmt: Optional[str] = typer.Option(None, "--format", help="rankings | trl | hh (default: detected)."),
    epochs: Optional[float] = typer.Option(None, "--epochs", help="Passes over the data [1]."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Stop after N optimizer steps."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Rankings (prompts) per micro-batch per process [8]."),
    grad_accum: Optional[int] = typer.Option(None, "--grad-accum", help="Micro-batches per optimizer step [1]."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate [1e-5]."),
    max_length: Optional[int] = typer.Option(None, "--max-length", help="Tokens per candidate; longer texts keep their end [512]."),
    loss: Optional[str] = typer.Option(None, "--loss", help="bt (all-pairs Bradley–Terry) | pl (Plackett–Luce) [bt]."),
    freeze_layers: Optional[int] = typer.Option(None, "--freeze-layers", help="Freeze embeddings + first N blocks [0]."),
    lora: Optional[bool] = typer.Option(None, "--lora/--no-lora", help="Train LoRA adapters (saved merged)."),
    lora_r: Optional[int] = typer.Option(None, "--lora-r", help="LoRA rank [8]."),
    lora_alpha: Optional[int] = typer.Option(None, "--lora-alpha", help="LoRA alpha [16]."),
    save_every: Optional[int] = typer.Option(None, "--save-every", help="Checkpoint every N steps [0: final only]."),
    eval_every: Optional[int] = typer.Option(None, "--eval-every", help="Evaluate every N steps [0: end only]."),
    resume: Optional[bool] = typer.Option(None, "--resume/--no-resume", help="Continue from the latest complete checkpoint."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed [0]."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="float32 | bfloat16 | float16 [float32]."),
    skip_invalid: Optional[bool] = typer.Option(None, "--skip-invalid/--no-skip-invalid", help="Skip and count malformed rows."),
    normalise_on: Optional[str] = typer.Option(None, "--normalise-on", help="train | eval | none | FILE: reference set for mean 0, std 1 [train]."),
    pack: Optional[bool] = typer.Option(None, "--pack/--no-pack", help="Forward candidates without padding (same scores) [pack]."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar."),
) -> None:
    """Train a reward model on K-way rankings (or pairs): one forward per candidate, all pairs from its K scores."""
    from rankloop.config import load_config
    from rankloop.io import DataError
    from rankloop.reward.train import RewardTrainConfig, train_reward_model

    cfg = load_config(
        RewardTrainConfig, config, data=data, model=model, output=output, eval_data=eval_data, format=fmt,
        epochs=epochs, max_steps=max_steps, batch_size=batch_size, grad_accum=grad_accum, lr=lr,
        max_length=max_length, loss=loss, freeze_layers=freeze_layers, lora=lora, lora_r=lora_r,
        lora_alpha=lora_alpha, save_every=save_every, eval_every=eval_every, resume=resume, seed=seed,
        dtype=dtype, skip_invalid=skip_invalid, normalise_on=normalise_on, pack=pack, progress=False if no_progress else None,
    )
    try:
        train_reward_model(cfg)
    except DataError as e:
        if not cfg.skip_invalid and e.line is not None:
            raise DataError(e.path, e.line, f"{e.message} (pass --skip-invalid to skip and count bad rows)") from None
        raise


def eval_rm(
    model: str = typer.Option(..., "--model", help="Reward model directory (from train-rm) or id."),
    data: str = typer.Option(..., "--data", help="Held-out preferences (any supported format)."),
    output: Optional[Path] = typer.Option(None, "--output", help="Write the metrics as JSON here."),
    batch_size: int = typer.Option(32, "--batch-size", help="Sequences per forward pass."),
    max_length: Optional[int] = typer.Option(None, "--max-length", help="Tokens per candidate [the training value]."),
    fmt: Optional[str] = typer.Option(None, "--format", help="rankings | trl | hh (default: detected)."),
    skip_invalid: bool = typer.Option(False, "--skip-invalid", help="Skip and count malformed rows."),
    raw: bool = typer.Option(False, "--raw", help="Report raw scores (ignore the stored normalisation)."),
) -> None:
    """Pairwise accuracy, exact-ranking accuracy, Kendall's tau, mean margin and score statistics."""
    import json

    from rankloop.io import DataError
    from rankloop.reward.eval import evaluate_reward_model

    try:
        m = evaluate_reward_model(model, data, batch_size=batch_size, max_length=max_length, fmt=fmt,
                                  skip_invalid=skip_invalid, normalise=not raw, output=output)
    except DataError as e:
        if not skip_invalid and e.line is not None:
            raise DataError(e.path, e.line, f"{e.message} (pass --skip-invalid to skip and count bad rows)") from None
        raise
    typer.echo(json.dumps(m, indent=2))
