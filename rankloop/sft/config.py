"""``SFTConfig``: every setting of ``rankloop train-sft`` (and of the loop's SFT stage).

Kept apart from the trainer (``rankloop.sft.train``) so the CLI can build its flags from it
without importing torch."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rankloop.config import Config


class SFTConfig(Config):
    """``rankloop train-sft``: every field can come from ``--config FILE.yaml`` or a CLI flag."""

    data: str = Field(description="Training demonstrations: rankloop's demonstrations.jsonl or TRL's SFT formats "
                      "(text; prompt/completion; conversational messages), .jsonl or .jsonl.gz.")
    model: str = Field(description="The pre-trained causal LM: a Hugging Face id or local path.")
    output: str = Field(description="Output directory: the fine-tuned model (from_pretrained loads it), "
                        "metrics.jsonl, checkpoints/.")
    eval_data: str | None = Field(None, description="Held-out demonstrations: loss and perplexity every "
                                  "eval_every steps and at the end.")
    format: Literal["auto", "demonstrations", "text", "prompt_completion", "messages"] = Field(
        "auto", description="Input format; auto detects it from the first row's keys.")
    chat_template: str | None = Field(None, description="Chat template for conversations when the tokenizer has "
                                      "none (or to replace its own): 'hh' (\\n\\nHuman: … \\n\\nAssistant: …), a "
                                      "Jinja file, or the template itself. Saved with the model's tokenizer.")
    epochs: float = Field(1.0, gt=0, description="Passes over the training demonstrations (fractions allowed).")
    max_steps: int | None = Field(None, gt=0, description="Stop after this many optimizer steps (overrides epochs).")
    batch_size: int = Field(8, gt=0, description="Demonstrations per micro-batch per process.")
    grad_accum: int = Field(1, gt=0, description="Micro-batches accumulated per optimizer step.")
    lr: float = Field(2e-5, gt=0, description="Peak AdamW learning rate (TRL's SFTTrainer default: 2e-5).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    scheduler: Literal["constant", "linear", "cosine"] = Field("linear", description="Learning-rate schedule after warm-up.")
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps.")
    max_grad_norm: float | None = Field(1.0, description="Clip the global gradient norm to this (None: no clipping).")
    max_length: int = Field(1024, gt=1, description="Tokens per demonstration (prompt + response), capped by the "
                            "model's context; a longer one is an error (or a counted skip with skip_invalid).")
    freeze_layers: int = Field(0, description="Freeze the embeddings and the first N blocks (negative: all but the last |N|).")
    lora: bool = Field(False, description="Train LoRA adapters (peft) instead of the full model; saved merged.")
    lora_r: int = Field(8, gt=0, description="LoRA rank.")
    lora_alpha: int = Field(16, gt=0, description="LoRA alpha (scale = alpha / r).")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout.")
    pack: bool = Field(True, description="Forward the demonstrations without padding: laid end to end in rows, "
                       "attention kept within each by a block-diagonal mask — the same loss, fewer tokens.")
    group_by_length: bool = Field(False, description="Group demonstrations of similar length into a batch (cuts "
                                  "padding with pack off; with pack on, mixed lengths are what fill the rows).")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Weight dtype (float32 on CPU).")
    seed: int = Field(0, description="Seed for the data order (and dropout, where the model has it).")
    skip_invalid: bool = Field(False, description="Skip (and count) malformed rows instead of stopping at the first.")
    save_every: int = Field(0, ge=0, description="Checkpoint every N optimizer steps (0: only the final model).")
    keep_checkpoints: int = Field(2, gt=0, description="Complete checkpoints kept (oldest removed first).")
    resume: bool = Field(False, description="Continue from the latest complete checkpoint in output/checkpoints.")
    log_every: int = Field(10, gt=0, description="Write metrics every N optimizer steps.")
    eval_every: int = Field(0, ge=0, description="Evaluate on eval_data every N steps (0: at the end only).")
    eval_batch_size: int = Field(16, gt=0, description="Demonstrations per forward pass when evaluating.")
    tensorboard: bool = Field(True, description="Also log to TensorBoard when it is installed.")
    progress: bool = Field(True, description="Show a progress bar.")
