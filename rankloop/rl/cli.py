"""``rankloop ppo`` (registered on the ``rankloop`` app by ``rankloop.cli``).

torch and transformers are imported inside the command so ``rankloop --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("ppo")
    def ppo(
        policy: Optional[str] = typer.Option(None, "--policy", help="Initial policy (HF id or path)."),
        reference: Optional[str] = typer.Option(None, "--reference", help="Frozen reference for the KL penalty "
                                                "(default: the initial policy)."),
        reward: Optional[str] = typer.Option(None, "--reward", help="Reward-model directory, or module:function / file.py:function "
                                             "scoring (prompts, responses) -> list[float]; e.g. rankloop.rl.rewards:vader_positive."),
        prompts: Optional[Path] = typer.Option(None, "--prompts", help="Prompts JSONL."),
        output: Optional[Path] = typer.Option(None, "--output", help="Output directory."),
        config: Optional[Path] = typer.Option(None, "--config", help="YAML/JSON with PPOConfig fields; flags override it."),
        resume: bool = typer.Option(False, "--resume", help="Continue from the newest checkpoint in OUTPUT/checkpoints."),
        iterations: Optional[int] = typer.Option(None, help="PPO iterations."),
        batch_size: Optional[int] = typer.Option(None, help="Prompts per iteration."),
        minibatch_size: Optional[int] = typer.Option(None, help="Rows per optimiser step."),
        grad_accum_steps: Optional[int] = typer.Option(None, help="Micro-batches per minibatch."),
        ppo_epochs: Optional[int] = typer.Option(None, help="PPO epochs per iteration."),
        max_new_tokens: Optional[int] = typer.Option(None, help="Response length limit."),
        temperature: Optional[float] = typer.Option(None, help="Sampling temperature."),
        learning_rate: Optional[float] = typer.Option(None, "--lr", "--learning-rate", help="AdamW learning rate."),
        kl_coef: Optional[float] = typer.Option(None, help="Initial/fixed KL coefficient β."),
        kl_control: Optional[str] = typer.Option(None, help="fixed | adaptive."),
        kl_target: Optional[float] = typer.Option(None, help="Adaptive control: target KL per response (nats)."),
        kl_horizon: Optional[float] = typer.Option(None, help="Adaptive control: horizon in samples."),
        missing_eos_penalty: Optional[float] = typer.Option(None, help="Penalty for responses that never stop."),
        target_approx_kl: Optional[float] = typer.Option(None, help="Early-stop PPO epochs above this approx_kl."),
        freeze_layers: Optional[int] = typer.Option(None, help="Freeze embeddings + first N blocks."),
        lora: Optional[bool] = typer.Option(None, "--lora/--no-lora", help="Train LoRA adapters."),
        critic: Optional[str] = typer.Option(None, help="shared | separate value network."),
        max_prompt_tokens: Optional[int] = typer.Option(None, help="Longest prompt in tokens."),
        truncate_prompts: Optional[bool] = typer.Option(None, "--truncate-prompts/--no-truncate-prompts",
                                                        help="Keep the end of over-long prompts instead of failing."),
        seed: Optional[int] = typer.Option(None, help="Random seed."),
        save_every: Optional[int] = typer.Option(None, help="Checkpoint every N iterations."),
        progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help="Progress bar."),
    ) -> None:
        """Fine-tune a policy with PPO under a per-token KL penalty against the frozen original."""
        from rich.console import Console

        from rankloop.config import load_config
        from rankloop.rl.ppo import NonFiniteError, PPOConfig, run_ppo
        from rankloop.rl.rewards import RewardError
        from rankloop.sampling import PromptTooLongError

        err = Console(stderr=True)
        overrides = dict(policy=policy, reference=reference, reward=reward, prompts=str(prompts) if prompts else None,
                         output=str(output) if output else None, resume=resume or None, iterations=iterations,
                         batch_size=batch_size, minibatch_size=minibatch_size, grad_accum_steps=grad_accum_steps,
                         ppo_epochs=ppo_epochs, max_new_tokens=max_new_tokens, temperature=temperature,
                         learning_rate=learning_rate, kl_coef=kl_coef, kl_control=kl_control, kl_target=kl_target,
                         kl_horizon=kl_horizon, missing_eos_penalty=missing_eos_penalty,
                         target_approx_kl=target_approx_kl, freeze_layers=freeze_layers, lora=lora, critic=critic,
                         max_prompt_tokens=max_prompt_tokens, truncate_prompts=truncate_prompts, seed=seed,
                         save_every=save_every, progress=progress)
        cfg = load_config(PPOConfig, config, **overrides)
        try:
            out = run_ppo(cfg)
        except NonFiniteError as e:
            err.print(f"[bold red]error:[/] {e}", highlight=False)
            raise typer.Exit(3)
        except (RewardError, PromptTooLongError) as e:
            err.print(f"[bold red]error:[/] {e}", highlight=False)
            raise typer.Exit(2)
        err.print(f"policy written to {out}", highlight=False)
