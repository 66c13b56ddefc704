"""``RewardTrainConfig``: every setting of ``rankloop train-rm`` (and of the loop's reward stage).

Kept apart from the trainer (``rankloop.reward.train``) so the CLI can build its flags from it
without importing torch."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rankloop.config import Config
from rankloop.io import PreferenceFormat


class RewardTrainConfig(Config):
    """``rankloop train-rm``: every field can come from ``--config FILE.yaml`` or a CLI flag."""

    data: str = Field(description="Training preferences: rankings.jsonl, TRL pairs or HH-RLHF (.jsonl or .jsonl.gz).")
    model: str = Field(description="Backbone: a Hugging Face id or local path (causal LM, encoder or a reward model).")
    output: str = Field(description="Output directory: the final model, metrics.jsonl, checkpoints/.")
    eval_data: str | None = Field(None, description="Held-out preferences evaluated every eval_every steps and at the end.")
    format: PreferenceFormat = Field("auto", description="Input format; auto detects it from the first row.")
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
