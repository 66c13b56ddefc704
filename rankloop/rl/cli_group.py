"""``rankloop rloo`` and ``rankloop grpo`` (registered on the ``rankloop`` app by ``rankloop.cli``),
thin as ``rankloop ppo``: flags over the typed config, then the learner's run.

torch and transformers are imported inside the commands so ``rankloop --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def _run(name: str, config: Optional[Path], overrides: dict) -> None:
    from rich.console import Console

    from rankloop.config import load_config
    from rankloop.rl.config import GRPOConfig, RLOOConfig
    from rankloop.rl.rewards import RewardError
    from rankloop.runtime import NonFiniteError
    from rankloop.sampling import PromptTooLongError

    err = Console(stderr=True)
    if name == "rloo":
        from rankloop.rl.rloo import run_rloo as run
        cfg = load_config(RLOOConfig, config, **overrides)
    else:
        from rankloop.rl.grpo import run_grpo as run
        cfg = load_config(GRPOConfig, config, **overrides)
    try:
        out = run(cfg)
    except NonFiniteError as e:
        err.print(f"[bold red]error:[/] {e}", highlight=False)
        raise typer.Exit(3)
    except (RewardError, PromptTooLongError) as e:
        err.print(f"[bold red]error:[/] {e}", highlight=False)
        raise typer.Exit(2)
    err.print(f"policy written to {out}", highlight=False)


def _command(app: typer.Typer, name: str, doc: str) -> None:
    @app.command(name, help=doc)
    def command(
        policy: Optional[str] = typer.Option(None, "--policy", help="Initial policy (HF id or path)."),
        reference: Optional[str] = typer.Option(None, "--reference", help="Reference of the KL (default: the policy)."),
        reward: Optional[list[str]] = typer.Option(None, "--reward", help="Reward-model directory or module:function "
                                                   "/ file.py:function; repeat for several (summed with --reward-weight)."),
        reward_weight: Optional[list[float]] = typer.Option(None, "--reward-weight", help="One weight per --reward."),
        prompts: Optional[Path] = typer.Option(None, "--prompts", help="Prompts JSONL."),
        output: Optional[Path] = typer.Option(None, "--output", help="Output directory."),
        config: Optional[Path] = typer.Option(None, "--config", help="YAML/JSON with the config's fields; flags override it."),
        resume: bool = typer.Option(False, "--resume", help="Continue from the newest checkpoint in OUTPUT/checkpoints."),
        iterations: Optional[int] = typer.Option(None, help="Iterations."),
        batch_size: Optional[int] = typer.Option(None, help="Prompts per iteration."),
        samples_per_prompt: Optional[int] = typer.Option(None, "--samples-per-prompt", "-k", help="K responses per prompt."),
        minibatch_size: Optional[int] = typer.Option(None, help="Responses per optimiser step."),
        grad_accum_steps: Optional[int] = typer.Option(None, help="Micro-batches per minibatch."),
        epochs: Optional[int] = typer.Option(None, help="Passes over each iteration's responses."),
        max_new_tokens: Optional[int] = typer.Option(None, help="Response length limit."),
        temperature: Optional[float] = typer.Option(None, help="Sampling temperature."),
        learning_rate: Optional[float] = typer.Option(None, "--lr", "--learning-rate", help="AdamW learning rate."),
        kl_coef: Optional[float] = typer.Option(None, help="β of the KL term."),
        loss_aggregation: Optional[str] = typer.Option(None, help="token | sequence | constant."),
        lora: Optional[bool] = typer.Option(None, "--lora/--no-lora", help="Train LoRA adapters."),
        seed: Optional[int] = typer.Option(None, help="Random seed."),
        save_every: Optional[int] = typer.Option(None, help="Checkpoint every N iterations."),
        progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help="Progress bar."),
    ) -> None:
        one = reward[0] if reward and len(reward) == 1 else None
        overrides = dict(policy=policy, reference=reference, reward=one or (list(reward) if reward else None),
                         reward_weights=list(reward_weight) if reward_weight else None,
                         prompts=str(prompts) if prompts else None, output=str(output) if output else None,
                         resume=resume or None, iterations=iterations, batch_size=batch_size,
                         samples_per_prompt=samples_per_prompt, minibatch_size=minibatch_size,
                         grad_accum_steps=grad_accum_steps, epochs=epochs, max_new_tokens=max_new_tokens,
                         temperature=temperature, learning_rate=learning_rate, kl_coef=kl_coef,
                         loss_aggregation=loss_aggregation, lora=lora, seed=seed, save_every=save_every,
                         progress=progress)
        _run(name, config, overrides)


def register(app: typer.Typer) -> None:
    _command(app, "rloo", "Fine-tune a policy with RLOO: K responses per prompt, leave-one-out baseline, KL in the reward.")
    _command(app, "grpo", "Fine-tune a policy with GRPO: K responses per prompt, group-normalised advantages, KL in the loss.")
