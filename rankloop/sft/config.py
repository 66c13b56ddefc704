"""``SFTConfig``: every setting of ``rankloop train-sft`` (and of the loop's SFT stage).

Kept apart from the trainer (``rankloop.sft.train``) so the CLI can build its flags from it
without importing torch."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rankloop.config import LOGPROB_CHUNK_HELP, TrainerConfig


class SFTConfig(TrainerConfig):
    """``rankloop train-sft``: every field can come from ``--config FILE.yaml`` or a CLI flag."""

    logprob_chunk: int = Field(0, ge=0, description=LOGPROB_CHUNK_HELP)  # (precision helper: memory)

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
    batch_size: int = Field(8, gt=0, description="Demonstrations per micro-batch per process.")
    lr: float = Field(2e-5, gt=0, description="Peak AdamW learning rate (TRL's SFTTrainer default: 2e-5).")
    max_length: int = Field(1024, gt=1, description="Tokens per demonstration (prompt + response), capped by the "
                            "model's context; a longer one is an error (or a counted skip with skip_invalid).")
    lora: bool = Field(False, description="Train LoRA adapters (peft) instead of the full model; saved merged.")
    pack: bool = Field(True, description="Forward the demonstrations without padding: laid end to end in rows, "
                       "attention kept within each by a block-diagonal mask — the same loss, fewer tokens.")
    group_by_length: bool = Field(False, description="Group demonstrations of similar length into a batch (cuts "
                                  "padding with pack off; with pack on, mixed lengths are what fill the rows).")
    seed: int = Field(0, description="Seed for the data order (and dropout, where the model has it).")
    eval_batch_size: int = Field(16, gt=0, description="Demonstrations per forward pass when evaluating.")
