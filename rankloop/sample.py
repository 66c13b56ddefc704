"""``rankloop sample``: K candidates per prompt from a policy, for the labeling app.

``SampleConfig`` is the command's every setting; ``write_candidates`` runs it (torch is imported
there, so the config can be read without it).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from rankloop.config import Config, ConfigError, Dtype


class SampleConfig(Config):
    """``rankloop sample``: every field can come from ``--config FILE.yaml`` or a flag."""

    model: str = Field(description="Policy: a Hugging Face id or a local path.")
    prompts: str = Field(description="Prompts JSONL (rankloop's prompt format).")
    output: str = Field(description="candidates.jsonl to write.")
    k: int = Field(4, ge=1, description="Candidates per prompt.")
    max_new_tokens: int = Field(64, ge=1, description="Response length limit in tokens.")
    min_new_tokens: int = Field(1, ge=0, description="Tokens before a stop token may end a response (an empty "
                                "response cannot be labeled).")
    temperature: float = Field(1.0, ge=0, description="Sampling temperature (0 = greedy).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass (1 = off).")
    top_k: int = Field(0, ge=0, description="Top-k filter (0 = off).")
    stop_token_ids: list[int] | None = Field(None, description="Tokens that end a response (default: the model's "
                                             "generation-config EOS ids).")
    seed: int = Field(0, description="Random seed.")
    batch_size: int = Field(32, ge=1, description="Rows decoded together.")
    policy_name: str | None = Field(None, description="Name recorded in each candidate (default: the model).")
    round: int = Field(0, ge=0, description="Labeling round recorded in each candidate.")
    max_prompt_tokens: int | None = Field(None, ge=1, description="Longest prompt in tokens (default: no "
                                          "limit).")
    truncate_prompts: bool = Field(False, description="Keep the end of over-long prompts instead of failing.")
    device: str = Field("auto", description="Where to run: auto (cuda when available, else cpu), cpu, cuda, "
                        "cuda:N, mps.")
    dtype: Dtype = Field("float32", description="The dtype the matmuls run in, as in every command; sampling has no "
                         "optimizer, so the weights are simply loaded in it (bfloat16 is very slow on CPUs without "
                         "native support).")


def resolve_device(device: str) -> str:
    """``auto`` → cuda when available, else cpu; a device this machine cannot use is a ``ConfigError``."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as e:
        raise ConfigError(f"--device {device!r} is not usable here: {e}") from None
    return device


def write_candidates(cfg: SampleConfig) -> tuple[int, int]:
    """Sample ``cfg.k`` candidates per prompt and write them to ``cfg.output``; (candidates, prompts)."""
    from rankloop.io import read_prompts, write_jsonl
    from rankloop.sampling import sample_candidates

    device = resolve_device(cfg.device)
    rows = read_prompts(cfg.prompts)
    cands = sample_candidates(cfg.model, rows, cfg.k, max_new_tokens=cfg.max_new_tokens,
                              min_new_tokens=cfg.min_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                              top_k=cfg.top_k, stop_token_ids=cfg.stop_token_ids, seed=cfg.seed,
                              batch_size=cfg.batch_size, policy_name=cfg.policy_name, round=cfg.round,
                              max_prompt_tokens=cfg.max_prompt_tokens, truncate_prompts=cfg.truncate_prompts,
                              device=device, dtype=cfg.dtype)
    return write_jsonl(Path(cfg.output), cands), len(rows)
