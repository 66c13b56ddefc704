"""``rankloop train-sft`` (torch is imported inside the command)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    app.command("train-sft")(train_sft)


def train_sft(
    data: Optional[str] = typer.Option(None, "--data", help="Demonstrations: rankloop's demonstrations.jsonl or TRL's "
                                       "SFT formats (text; prompt/completion; messages), .jsonl or .jsonl.gz."),
    model: Optional[str] = typer.Option(None, "--model", help="The pre-trained causal LM: Hugging Face id or local path."),
    output: Optional[str] = typer.Option(None, "--output", help="Output directory (final model, metrics.jsonl, checkpoints/)."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML file with any SFTConfig field; flags override it."),
    eval_data: Optional[str] = typer.Option(None, "--eval-data", help="Held-out demonstrations: loss and perplexity."),
    fmt: Optional[str] = typer.Option(None, "--format", help="demonstrations | text | prompt_completion | messages (default: detected)."),
    chat_template: Optional[str] = typer.Option(None, "--chat-template", help="For conversations where the tokenizer has no "
                                                "template: 'hh', a Jinja file or the template itself."),
    epochs: Optional[float] = typer.Option(None, "--epochs", help="Passes over the data [1]."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Stop after N optimizer steps."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Demonstrations per micro-batch per process [8]."),
    grad_accum: Optional[int] = typer.Option(None, "--grad-accum", help="Micro-batches per optimizer step [1]."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate [2e-5]."),
    max_length: Optional[int] = typer.Option(None, "--max-length", help="Tokens per demonstration; longer is an error [1024]."),
    freeze_layers: Optional[int] = typer.Option(None, "--freeze-layers", help="Freeze embeddings + first N blocks [0]."),
    lora: Optional[bool] = typer.Option(None, "--lora/--no-lora", help="Train LoRA adapters (saved merged)."),
    lora_r: Optional[int] = typer.Option(None, "--lora-r", help="LoRA rank [8]."),
    lora_alpha: Optional[int] = typer.Option(None, "--lora-alpha", help="LoRA alpha [16]."),
    pack: Optional[bool] = typer.Option(None, "--pack/--no-pack", help="Forward demonstrations without padding (same loss) [pack]."),
    save_every: Optional[int] = typer.Option(None, "--save-every", help="Checkpoint every N steps [0: final only]."),
    eval_every: Optional[int] = typer.Option(None, "--eval-every", help="Evaluate every N steps [0: end only]."),
    log_every: Optional[int] = typer.Option(None, "--log-every", help="Metrics row every N steps [10]."),
    resume: Optional[bool] = typer.Option(None, "--resume/--no-resume", help="Continue from the latest complete checkpoint."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed [0]."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="float32 | bfloat16 | float16 [float32]."),
    skip_invalid: Optional[bool] = typer.Option(None, "--skip-invalid/--no-skip-invalid", help="Skip and count malformed rows."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar."),
) -> None:
    """Fine-tune a causal LM on demonstrations (SFT): loss on the response tokens only."""
    from rich.console import Console

    from rankloop.config import load_config
    from rankloop.io import DataError
    from rankloop.runtime import NonFiniteError
    from rankloop.sft.config import SFTConfig
    from rankloop.sft.train import train_sft as run

    cfg = load_config(
        SFTConfig, config, data=data, model=model, output=output, eval_data=eval_data, format=fmt,
        chat_template=chat_template, epochs=epochs, max_steps=max_steps, batch_size=batch_size, grad_accum=grad_accum,
        lr=lr, max_length=max_length, freeze_layers=freeze_layers, lora=lora, lora_r=lora_r, lora_alpha=lora_alpha,
        pack=pack, save_every=save_every, eval_every=eval_every, log_every=log_every, resume=resume, seed=seed,
        dtype=dtype, skip_invalid=skip_invalid, progress=False if no_progress else None,
    )
    try:
        run(cfg)
    except NonFiniteError as e:
        Console(stderr=True).print(f"[bold red]error:[/] {e}", highlight=False)
        raise typer.Exit(3)
    except DataError as e:
        if not cfg.skip_invalid and e.line is not None:
            raise DataError(e.path, e.line, f"{e.message} (pass --skip-invalid to skip and count bad rows)") from None
        raise
