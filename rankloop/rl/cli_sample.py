"""``rankloop sample``: K candidates per prompt for the labeling app.

torch and transformers are imported inside the command so ``rankloop --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("sample")
    def sample(
        model: str = typer.Option(..., "--model", help="Policy: a Hugging Face id or a local path."),
        prompts: Path = typer.Option(..., "--prompts", help="Prompts JSONL."),
        output: Path = typer.Option(..., "--output", help="candidates.jsonl to write."),
        k: int = typer.Option(4, "--k", help="Candidates per prompt."),
        max_new_tokens: int = typer.Option(64, help="Response length limit in tokens."),
        temperature: float = typer.Option(1.0, help="Sampling temperature (0 = greedy)."),
        top_p: float = typer.Option(1.0, help="Nucleus sampling mass (1 = off)."),
        top_k: int = typer.Option(0, help="Top-k filter (0 = off)."),
        stop_token_ids: Optional[str] = typer.Option(None, help="Comma-separated stop ids (default: the model's EOS ids)."),
        seed: int = typer.Option(0, help="Random seed."),
        batch_size: int = typer.Option(32, help="Rows decoded together."),
        policy_name: Optional[str] = typer.Option(None, help="Name recorded in each candidate (default: --model)."),
        round: int = typer.Option(0, "--round", help="Labeling round recorded in each candidate."),
        max_prompt_tokens: Optional[int] = typer.Option(None, help="Longest prompt in tokens."),
        truncate_prompts: bool = typer.Option(False, help="Keep the end of over-long prompts instead of failing."),
        device: str = typer.Option("auto", help="Where to run: auto (cuda when available, else cpu), cpu, cuda, "
                                   "cuda:N, mps."),
        dtype: str = typer.Option("float32", help="Weights dtype: float32, bfloat16 or float16 (bfloat16 is very "
                                  "slow on CPUs without native support)."),
    ) -> None:
        """Write K sampled candidates per prompt (candidates.jsonl) for ranking."""
        import time

        from rich.console import Console

        from rankloop.io import read_prompts, write_jsonl
        from rankloop.sampling import PromptTooLongError, sample_candidates

        err = Console(stderr=True)
        import torch

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            torch.empty(0, device=device)
        except (RuntimeError, AssertionError) as e:
            err.print(f"[bold red]error:[/] --device {device!r} is not usable here: {e}", highlight=False)
            raise typer.Exit(2)
        rows = read_prompts(prompts)
        stops = [int(s) for s in stop_token_ids.split(",")] if stop_token_ids else None
        t0 = time.perf_counter()
        try:
            cands = sample_candidates(model, rows, k, max_new_tokens=max_new_tokens, temperature=temperature,
                                      top_p=top_p, top_k=top_k, stop_token_ids=stops, seed=seed,
                                      batch_size=batch_size, policy_name=policy_name, round=round,
                                      max_prompt_tokens=max_prompt_tokens, truncate_prompts=truncate_prompts,
                                      device=device, dtype=dtype)
        except PromptTooLongError as e:
            err.print(f"[bold red]error:[/] {e}", highlight=False)
            raise typer.Exit(2)
        n = write_jsonl(output, cands)
        err.print(f"wrote {n} candidates for {len(rows)} prompts to {output} in {time.perf_counter() - t0:.1f}s",
                  highlight=False)
