"""``EvalConfig``: the settings of ``rankloop eval-rm`` (``rankloop.reward.eval.evaluate_reward_model``).

Kept apart from ``eval.py``, which imports torch, so the CLI builds its flags without it.
"""

from __future__ import annotations


from pydantic import Field

from rankloop.config import Config
from rankloop.io import PreferenceFormat


class EvalConfig(Config):
    """``rankloop eval-rm``: every field can come from ``--config FILE.yaml`` or a flag."""

    model: str = Field(description="Reward model directory (from train-rm) or Hugging Face id.")
    data: str = Field(description="Held-out preferences: rankings.jsonl, TRL pairs or HH-RLHF (.jsonl/.jsonl.gz).")
    output: str | None = Field(None, description="Also write the metrics as JSON here.")
    format: PreferenceFormat = Field("auto", description="Input format; auto detects it "
                                                              "from the first row.")
    batch_size: int = Field(32, ge=1, description="Sequences per forward pass.")
    max_length: int | None = Field(None, gt=1, description="Tokens per candidate (default: the training value).")
    skip_invalid: bool = Field(False, description="Skip (and count) malformed rows instead of stopping at the first.")
    raw: bool = Field(False, description="Report raw scores (ignore the model's stored normalisation).")
    device: str = Field("cpu", description="Where to score: cpu, cuda, cuda:N, mps, or auto (cuda when available).")
