"""``RewardTrainConfig``: every setting of ``rankloop train-rm`` (and of the loop's reward stage).

Kept apart from the trainer (``rankloop.reward.train``) so the CLI can build its flags from it
without importing torch."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rankloop.config import TrainerConfig
from rankloop.io import PreferenceFormat
from rankloop.records import AllBadPolicy, UnsafePolicy


class RewardTrainConfig(TrainerConfig):
    """``rankloop train-rm``: every field can come from ``--config FILE.yaml`` or a CLI flag."""

    data: str = Field(description="Training preferences: rankings.jsonl, TRL pairs or HH-RLHF (.jsonl or .jsonl.gz).")
    model: str = Field(description="Backbone: a Hugging Face id or local path (causal LM, encoder or a reward model).")
    output: str = Field(description="Output directory: the final model, metrics.jsonl, checkpoints/.")
    eval_data: str | None = Field(None, description="Held-out preferences evaluated every eval_every steps and at the end.")
    format: PreferenceFormat = Field("auto", description="Input format; auto detects it from the first row.")
    epochs: float = Field(1.0, gt=0, description="Passes over the training rankings (fractions allowed).")
    batch_size: int = Field(8, gt=0, description="Rankings (prompts) per micro-batch per process.")
    lr: float = Field(1e-5, gt=0, description="Peak AdamW learning rate (InstructGPT used 9e-6 for its 6B RM).")
    max_length: int = Field(512, gt=1, description="Tokens per candidate (prompt + response); longer texts lose their start.")
    loss: Literal["bt", "pl"] = Field("bt", description="bt: all-pairs Bradley–Terry (InstructGPT eq. 1); pl: Plackett–Luce listwise.")
    use_margin: bool = Field(True, description="Subtract a row's 'margin' from its pair differences (bt only).")
    lora: bool = Field(False, description="Train LoRA adapters (peft) instead of the full backbone; the head trains in full.")
    disable_dropout: bool = Field(True, description="Set every dropout to 0: deterministic scores, as TRL's RewardTrainer does.")
    pack: bool = Field(True, description="Forward the candidates without padding: laid end to end in rows, "
                       "attention kept within each candidate by a block-diagonal mask — same scores, fewer tokens.")
    share_prefix: bool = Field(True, description="With pack, causal backbones: forward the tokens a ranking's K "
                               "candidates share (the prompt) once, not K times — same scores, fewer tokens.")
    group_by_length: bool = Field(True, description="Group rankings of similar length into a batch to cut padding.")
    seed: int = Field(0, description="Seed for the head's initialisation and the data order.")
    eval_batch_size: int = Field(32, gt=0, description="Sequences per forward pass when scoring for evaluation.")
    normalise_on: str = Field("train", description="Reference set for the stored offset/scale (mean 0, std 1): "
                              "'train', 'eval', 'none' or a preference file.")
    normalise_max: int = Field(2000, gt=0, description="At most this many reference rankings are scored for normalisation.")

    # ---- richer feedback (issue 15 item 1; docs/reward.md "Flags, strength and ratings")
    all_bad: AllBadPolicy = Field("keep", description="An all-bad ranking: keep its order (a reward model learns "
                                  "relative quality, the least bad still scores above the worst) or drop it.")
    unsafe: UnsafePolicy = Field("never_chosen", description="never_chosen: a candidate flagged unsafe is never the "
                                 "better of a pair (taken out of the ranking unless it is last; a ranking flagged unsafe "
                                 "without saying which candidate is dropped); keep: as ranked.")
    ratings: str | None = Field(None, description="ratings.jsonl (Likert 1–7 per candidate, from the labeling "
                                "export): each labeler's scores of one prompt's candidates become a ranking "
                                "(best score first, equal scores tied) added to the training data.")
