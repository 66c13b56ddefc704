"""``DPOConfig``: every setting of ``rankloop train-dpo``.

Kept apart from the trainer (``rankloop.dpo.train``) so the CLI can build its flags from it without
importing torch. The data, batching, optimiser, checkpoint and LoRA fields mean what they mean for
``train-rm`` (``rankloop.reward.config.RewardTrainConfig``): the two trainers share one runtime."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from rankloop.config import LOGPROB_CHUNK_HELP, TrainerConfig
from rankloop.io import PreferenceFormat
from rankloop.records import AllBadPolicy, UnsafePolicy


class DPOConfig(TrainerConfig):
    """``rankloop train-dpo``: every field can come from ``--config FILE.yaml`` or a CLI flag."""

    logprob_chunk: int = Field(0, ge=0, description=LOGPROB_CHUNK_HELP)  # (precision helper: memory)

    data: str = Field(description="Training preferences: rankings.jsonl, TRL pairs or HH-RLHF (.jsonl or .jsonl.gz).")
    model: str = Field(description="The policy to start from: a causal LM (Hugging Face id or local path).")
    output: str = Field(description="Output directory: the final policy, metrics.jsonl, checkpoints/, the reference log-probs.")
    reference: str | None = Field(None, description="The reference policy π_ref (default: the starting model; "
                                  "under LoRA the starting model is the policy with its adapter off, no second copy).")
    eval_data: str | None = Field(None, description="Held-out preferences: implicit-reward accuracy and margin, "
                                  "chosen log-probs, KL to the reference on their prompts.")
    format: PreferenceFormat = Field("auto", description="Input format; auto detects it from the first row.")
    loss: Literal["dpo", "pl", "ipo"] = Field("dpo", description="dpo: pairwise DPO over all C(K,2) pairs; "
                                              "pl: Plackett–Luce listwise DPO (DPO App. A.3); ipo: IPO (Azar et al. 2023).")
    beta: float = Field(0.1, gt=0, description="β: the strength of the implicit KL to the reference (IPO's τ).")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="Conservative DPO's ε: each label taken as flipped "
                                   "with this probability (loss dpo only).")
    use_margin: bool = Field(True, description="Subtract a row's 'margin' from its implicit-reward differences (loss dpo only).")
    epochs: float = Field(1.0, gt=0, description="Passes over the training rankings (fractions allowed).")
    batch_size: int = Field(8, gt=0, description="Rankings (prompts) per micro-batch per process.")
    lr: float = Field(1e-6, gt=0, description="Peak AdamW learning rate (1e-6: the DPO paper's and TRL's default).")
    max_length: int = Field(512, gt=1, description="Tokens per candidate (prompt + response): the response keeps its "
                            "start, the prompt its end.")
    lora: bool = Field(False, description="Train LoRA adapters (peft) instead of the full policy; saved merged.")
    disable_dropout: bool = Field(True, description="Set every dropout to 0, so policy and reference log-probs are "
                                  "deterministic (as TRL's DPOTrainer does).")
    pack: bool = Field(True, description="Forward the candidates without padding: a ranking's prompt once and its K "
                       "responses as branches of one packed tree — same log-probs, fewer tokens.")
    share_prefix: bool = Field(True, description="With pack: forward the tokens a ranking's K candidates share once.")
    group_by_length: bool = Field(True, description="Group rankings of similar length into a batch to cut padding.")
    seed: int = Field(0, description="Seed for the data order and the KL samples.")
    eval_batch_size: int = Field(16, gt=0, description="Rankings per forward pass for the reference log-probs and evaluation.")
    kl_prompts: int = Field(32, ge=0, description="Held-out prompts sampled (one response each) for the KL to the reference.")
    kl_max_new_tokens: int = Field(32, gt=0, description="Tokens sampled per held-out prompt for the KL.")
    # ---- richer feedback (issue 15 item 1; docs/dpo.md "Flags and strength")
    all_bad: AllBadPolicy = Field("drop", description="An all-bad ranking: drop (default: DPO moves the policy "
                                  "towards each chosen response, and none of these is good) or keep its order.")
    unsafe: UnsafePolicy = Field("never_chosen", description="never_chosen: a candidate flagged unsafe is never the "
                                 "chosen of a pair (taken out of the ranking unless it is last; a ranking flagged unsafe "
                                 "without saying which candidate is dropped); keep: as ranked.")

    @model_validator(mode="after")
    def _loss_options(self) -> "DPOConfig":
        if self.label_smoothing and self.loss != "dpo":
            raise ValueError(f"label_smoothing is conservative DPO's, defined for loss 'dpo' only (loss is {self.loss!r})")
        return self
