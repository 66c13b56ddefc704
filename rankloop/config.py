"""Typed configs: one pydantic model per entry point, loaded from YAML and overridden by the CLI.

A config is saved beside every artifact and inside every checkpoint (``config.json``), so a run
can be reproduced or resumed from its own directory.

``load_config`` is the whole path from a file plus overrides to a validated config; the CLI
(``rankloop.cli.typed``) uses its parts: ``read_config_file``, ``merge_config`` (nested
overrides, e.g. one ``labeling.mode`` inside the file's ``labeling:`` mapping) and
``validate_config``, whose errors name a flag when the bad value came from one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Mapping, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

C = TypeVar("C", bound=BaseModel)

Loc = tuple[str, ...]


class Config(BaseModel):
    """Base for every entry point's config: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


# ---------------------------------------------------------------- precision and memory (every trainer)
# One meaning of ``dtype`` in every command (train-rm, train-sft, train-dpo, ppo, rloo, grpo, sample):
# the dtype the matmuls run in. ``precision`` says how a trainer gets there; docs/gpu.md.

Dtype = Literal["float32", "bfloat16", "float16"]
Precision = Literal["autocast", "weights"]

DTYPE_HELP = ("The dtype the matmuls run in: float32, bfloat16 or float16 (see precision). log-softmax, KL, GAE, "
              "whitening and every loss are computed in float32 whatever it is.")
PRECISION_HELP = ("How a trainer applies a low dtype: 'autocast' = float32 weights (the optimizer's master "
                  "weights) with the forward under autocast in dtype (float16 adds dynamic loss scaling; "
                  "GPU only); 'weights' = every weight stored in dtype (half the weight memory) and AdamW "
                  "stepping float32 master copies of the trainable ones (bfloat16 only). No effect with float32.")
CHECKPOINTING_HELP = ("Recompute each transformer block's activations in the backward pass instead of keeping "
                      "them (less memory, one more forward per block; the same gradients).")
LOGPROB_CHUNK_HELP = ("Compute the LM head, log-softmax and the picked token's log-prob this many tokens at a "
                      "time (backward too), so the update never holds the whole (tokens, vocabulary) logits; "
                      "0 = all at once (the default: exact same arithmetic as before, no recomputed head).")


def weights_dtype(dtype: str, precision: str) -> str:
    """The dtype the weights are loaded in: ``dtype`` for precision 'weights', float32 for autocast."""
    return dtype if precision == "weights" else "float32"


def mixed_precision(dtype: str, precision: str) -> str:
    """accelerate's ``mixed_precision`` for the trainer's settings: 'bf16'/'fp16' under autocast, else 'no'."""
    if precision != "autocast" or dtype == "float32":
        return "no"
    return {"bfloat16": "bf16", "float16": "fp16"}[dtype]


def check_precision(dtype: str, precision: str) -> None:
    """float16 weights would need loss scaling on float32 master gradients, which torch's GradScaler
    refuses for float16 gradients: float16 is trained under autocast only."""
    if dtype == "float16" and precision == "weights":
        raise ValueError("dtype=float16 with precision='weights' is not supported (float16 weights need loss "
                         "scaling on float32 master gradients); use precision='autocast' or dtype='bfloat16'")


class TrainerConfig(Config):
    """The settings train-rm, train-sft and train-dpo share, meaning the same in each: run length,
    AdamW and its schedule, freezing and LoRA, the dtype, bad rows, checkpoints and logging
    (``rankloop.runtime``'s supervised trainers' pieces read them)."""

    # --- run length and optimiser
    max_steps: int | None = Field(None, gt=0, description="Stop after this many optimizer steps (overrides epochs).")
    grad_accum: int = Field(1, gt=0, description="Micro-batches accumulated per optimizer step.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    scheduler: Literal["constant", "linear", "cosine"] = Field("linear", description="Learning-rate schedule after warm-up.")
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps.")
    max_grad_norm: float | None = Field(1.0, description="Clip the global gradient norm to this (None: no clipping).")

    # --- model
    freeze_layers: int = Field(0, description="Freeze the embeddings and the first N blocks (negative: all but the last |N|).")
    lora_r: int = Field(8, gt=0, description="LoRA rank.")
    lora_alpha: int = Field(16, gt=0, description="LoRA alpha (scale = alpha / r).")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout.")
    # --- precision and memory (docs/gpu.md): the same fields, meaning the same, on RLConfig
    dtype: Dtype = Field("float32", description=DTYPE_HELP)
    precision: Precision = Field("autocast", description=PRECISION_HELP)
    gradient_checkpointing: bool = Field(False, description=CHECKPOINTING_HELP)

    # --- data, checkpoints and logging
    skip_invalid: bool = Field(False, description="Skip (and count) malformed rows instead of stopping at the first.")
    save_every: int = Field(0, ge=0, description="Checkpoint every N optimizer steps (0: only the final model).")
    keep_checkpoints: int = Field(2, gt=0, description="Complete checkpoints kept (oldest removed first).")
    resume: bool = Field(False, description="Continue from the latest complete checkpoint in output/checkpoints.")
    log_every: int = Field(10, gt=0, description="Write metrics every N optimizer steps.")
    eval_every: int = Field(0, ge=0, description="Evaluate on eval_data every N steps (0: at the end only).")
    tensorboard: bool = Field(True, description="Also log to TensorBoard (output/tensorboard) when it is installed.")
    progress: bool = Field(True, description="Show a progress bar.")

    @model_validator(mode="after")
    def _check_precision(self):
        check_precision(self.dtype, self.precision)
        return self


class ConfigError(ValueError):
    pass


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML (or JSON) config file; a clear ``ConfigError`` naming the file otherwise."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: config file not found")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of field: value")
    return loaded


def merge_config(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` on top; a mapping merges into a mapping key by key (recursively),
    anything else replaces the value."""
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_config(out[key], value)
        else:
            out[key] = value
    return out


def validate_config(cls: type[C], data: Mapping[str, Any], source: str | Path | None = None,
                    flags: Mapping[Loc, str] | None = None, hints: Mapping[Loc, str] | None = None) -> C:
    """``cls`` from ``data``, or one ``ConfigError`` line listing every problem.

    ``flags`` maps the location of each value given as a command-line flag to that flag's name,
    so an error says ``--iterations: …`` for a flag and ``run.yaml: … iterations: …`` for the
    file. ``hints`` (location → text) is added to a "Field required" error, e.g. how to set it.
    """
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        flags, hints = flags or {}, hints or {}
        msgs, from_file = [], False
        for err in e.errors():
            loc = tuple(map(str, err["loc"]))
            flag = next((flags[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in flags), None)
            from_file |= flag is None
            label = flag or ".".join(loc)
            msg = f"{label}: {err['msg']}" if label else err["msg"]
            if err["type"] == "missing" and loc in hints:
                msg += f" ({hints[loc]})"
            elif isinstance(err.get("input"), (str, int, float)):
                msg += f" (got {err['input']!r})"
            msgs.append(msg)
        where = f"{source}: " if source is not None and from_file else ""
        raise ConfigError(f"{where}invalid {cls.__name__}: {'; '.join(msgs)}") from None


def load_config(cls: type[C], path: str | Path | None = None, **overrides: Any) -> C:
    """Fields from ``path`` (YAML or JSON), then every override that is not ``None``."""
    data = read_config_file(path) if path is not None else {}
    data.update({k: v for k, v in overrides.items() if v is not None})
    return validate_config(cls, data, path)


def save_config(cfg: BaseModel, path: str | Path) -> None:
    from rankloop.io import atomic_write_text

    atomic_write_text(path, cfg.model_dump_json(indent=2) + "\n")
