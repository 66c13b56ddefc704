"""``rankloop quickstart`` and ``rankloop loop`` (registered on the ``rankloop`` app by ``rankloop.cli``).

Heavy imports (torch, transformers) happen inside the commands so ``--help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def quickstart(
    output: Path = typer.Option(Path("rankloop-quickstart"), "--output", "-o", help="run directory"),
    tiny: bool = typer.Option(False, "--tiny", help="reduced size for CI (under two minutes)"),
    labelers: str = typer.Option("simulated", help="'simulated' (gold preference + noise, through the labeling "
                                 "app) or 'human' (start the app and wait for people)"),
    rounds: Optional[int] = typer.Option(None, help="loop rounds (default 1)"),
    ppo_iterations: Optional[int] = typer.Option(None, help="PPO iterations per round"),
    port: int = typer.Option(8000, help="labeling app port with --labelers human"),
    seed: int = typer.Option(0),
    threads: Optional[int] = typer.Option(None, help="torch threads (default: torch's; 1 helps on a busy machine)"),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML with any QuickstartConfig field"),
    no_progress: bool = typer.Option(False, "--no-progress", help="no progress bars"),
) -> None:
    """The whole RLHF loop on an embedded default, offline, on a CPU: pre-train a small LM on a generated
    corpus (cached), sample K=4 candidates, simulated labelers rank them through the labeling app, train
    the reward model, PPO with adaptive KL, and a report (report.html + a summary table)."""
    from rankloop.config import load_config
    from rankloop.quickstart import QuickstartConfig, run_quickstart

    if labelers not in ("simulated", "human"):
        raise typer.BadParameter("--labelers must be 'simulated' or 'human'")
    qs = load_config(QuickstartConfig, config, output=str(output), tiny=tiny or None, labelers=labelers,
                     rounds=rounds, ppo_iterations=ppo_iterations, port=port, seed=seed, threads=threads,
                     progress=False if no_progress else None)
    run_quickstart(qs)


def loop(
    config: Path = typer.Option(..., "--config", help="YAML with the LoopConfig fields (see examples/loop.yaml)"),
    rounds: Optional[int] = typer.Option(None, help="override the number of rounds"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="override the run directory"),
    labelers: Optional[str] = typer.Option(None, help="override labeling.mode: 'simulated' or 'human'"),
    no_report: bool = typer.Option(False, "--no-report", help="skip report.html"),
    no_progress: bool = typer.Option(False, "--no-progress", help="no progress bars"),
) -> None:
    """Iterated online RLHF on any model: each round samples from the current policy, sends the items to
    labeling (simulated or people), retrains the reward model on all rankings so far and continues PPO
    from the latest policy. Every stage writes its artifact; re-running the same command resumes."""
    import yaml

    from rankloop.config import ConfigError, load_config
    from rankloop.loop import LoopConfig, run_loop
    from rankloop.report import summarise, write_report

    overrides: dict = {"rounds": rounds, "output": str(output) if output else None,
                       "progress": False if no_progress else None}
    if labelers is not None:
        if labelers not in ("simulated", "human"):
            raise typer.BadParameter("--labelers must be 'simulated' or 'human'")
        if not config.exists():
            raise ConfigError(f"{config}: config file not found")
        lab = (yaml.safe_load(config.read_text()) or {}).get("labeling") or {}
        overrides["labeling"] = {**lab, "mode": labelers}
    cfg = load_config(LoopConfig, config, **overrides)
    # Relative paths in the YAML are relative to the YAML's folder.
    base = config.resolve().parent
    fix = {}
    for key in ("prompts", "eval_prompts", "rm_eval_data"):
        v = getattr(cfg, key)
        if v and not Path(v).is_absolute() and not Path(v).exists() and (base / v).exists():
            fix[key] = str(base / v)
    if fix:
        cfg = cfg.model_copy(update=fix)
    run = run_loop(cfg)
    if not no_report:
        write_report(run, summarise(run))


def register(app: typer.Typer) -> None:
    app.command("quickstart")(quickstart)
    app.command("loop")(loop)
