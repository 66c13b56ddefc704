"""``rankloop quickstart``: the whole RLHF loop on an embedded default, offline, on a laptop CPU.

1. pre-train a small causal LM on the generated corpus (``rankloop.pretrain``; cached for later runs);
2. write the training and held-out prompts (``rankloop.corpus.make_prompts``);
3. run the loop (``rankloop.loop``): K = 4 candidates per training prompt → simulated labelers
   (the gold preference plus noise tuned to 73% agreement) through the labeling app → reward
   model → PPO with the adaptive KL controller → evaluation on held-out prompts;
4. write the report (``rankloop.report``): ``report.html`` and a printed summary table.

``--labelers human`` starts the labeling app with the project loaded and continues when the
rankings are in. ``--tiny`` is the reduced size CI runs (under two minutes).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from rankloop.config import Config
from rankloop.pretrain import TINY_PRETRAIN, PretrainConfig

if TYPE_CHECKING:
    from rankloop.loop import LoopConfig


class QuickstartConfig(Config):
    """The quickstart's sizes. ``tiny`` swaps in the CI sizes."""

    output: str = Field("rankloop-quickstart", description="Run directory.")
    tiny: bool = Field(False, description="Reduced size for CI (< 2 minutes).")
    labelers: Literal["simulated", "human"] = Field("simulated", description="Simulated labelers or people.")
    rounds: int = Field(1, ge=1, description="Loop rounds.")
    train_prompts: int = Field(96, ge=1, description="Training prompts (each gets K candidates in a round).")
    eval_prompts: int = Field(48, ge=1, description="Held-out prompts for the evaluation.")
    k: int = Field(4, ge=2, description="Candidates per prompt.")
    ppo_iterations: int = Field(40, ge=1, description="RL iterations per round (PPO, RLOO or GRPO).")
    algorithm: Literal["ppo", "rloo", "grpo", "dpo"] = Field("ppo", description="The policy's learner each round "
                                                             "(see rankloop.loop.LoopConfig.algorithm).")
    demonstrations: bool = Field(False, description="Round 0: simulated demonstrators write answers through the "
                                 "labeling app, SFT on them; the SFT model then starts the policy and is the "
                                 "reference.")
    demo_prompts: int = Field(48, ge=1, description="Training prompts sent for demonstrations.")
    sft_epochs: float = Field(3, gt=0, description="SFT epochs on the demonstrations.")
    rm_epochs: float = Field(4, gt=0, description="Reward-model epochs per round.")
    port: int = Field(8000, description="Port of the labeling app with --labelers human.")
    seed: int = Field(0, description="Seed of prompts, sampling, labelers and training.")
    threads: int | None = Field(None, ge=1, description="torch intra-op threads (None: torch's default).")
    progress: bool = Field(True, description="Show progress bars.")

    def sized(self) -> "QuickstartConfig":
        if not self.tiny:
            return self
        return self.model_copy(update=dict(train_prompts=min(self.train_prompts, 48),
                                           eval_prompts=min(self.eval_prompts, 24),
                                           ppo_iterations=min(self.ppo_iterations, 10), rm_epochs=min(self.rm_epochs, 4),
                                           demo_prompts=min(self.demo_prompts, 24),
                                           # tiny matrices gain nothing from a second thread, and lose
                                           # much when the cores are shared
                                           threads=self.threads or 1))

    def pretrain_config(self) -> PretrainConfig:
        return PretrainConfig(**TINY_PRETRAIN) if self.tiny else PretrainConfig()


def loop_config(qs: QuickstartConfig, policy: Path, run: Path) -> "LoopConfig":
    """The quickstart's loop. Its reward-model and PPO settings are pinned here in full, also where
    they equal the loop's defaults (``rankloop.loop.REWARD_DEFAULTS`` / ``PPO_DEFAULTS``): the
    quickstart's results are recorded (tests/golden/quickstart.json) and must not move when those
    defaults do."""
    from rankloop.loop import (
        DemonstrationSettings,
        DPOStage,
        GRPOStage,
        LabelingSettings,
        LoopConfig,
        PPOStage,
        RewardStage,
        RLOOStage,
        SamplingSettings,
        SFTStage,
    )

    tiny = qs.tiny
    # The other learners, pinned as PPO is: the same responses per iteration as PPO's batch (prompts
    # × 4 samples), one pass over them, PPO's learning rate and EOS penalty; their own KL defaults.
    group = dict(iterations=qs.ppo_iterations, batch_size=4 if tiny else 8, samples_per_prompt=4, minibatch_size=8,
                 epochs=1, learning_rate=3e-4 if tiny else 1e-4, missing_eos_penalty=1.0, save_every=5)
    extra: dict = {}
    if qs.algorithm == "rloo":
        extra["rloo"] = RLOOStage(**group, kl_coef=0.1)
    elif qs.algorithm == "grpo":
        extra["grpo"] = GRPOStage(**group, kl_coef=0.04)
    elif qs.algorithm == "dpo":
        extra["dpo"] = DPOStage(epochs=2, lr=3e-4 if tiny else 1e-4, batch_size=8, max_length=128, loss="dpo",
                                beta=0.1, kl_prompts=16)
    if qs.demonstrations:
        extra["demonstrations"] = DemonstrationSettings(
            enabled=True, prompts=qs.demo_prompts, mode=qs.labelers, demonstrators=2, overlap=1, drafts=4, sigma=0.3,
            project_prefix="quickstart",
            sft=SFTStage(epochs=qs.sft_epochs, lr=3e-4, batch_size=8, max_length=128, scheduler="cosine",
                         warmup_steps=2))
    return LoopConfig(
        output=str(run), policy=str(policy), prompts=str(run / "prompts.jsonl"),
        eval_prompts=str(run / "eval_prompts.jsonl"), rounds=qs.rounds, k=qs.k,
        sampling=SamplingSettings(max_new_tokens=40 if tiny else 48),
        labeling=LabelingSettings(mode=qs.labelers, labelers=4, overlap=2 if qs.labelers == "simulated" else 1,
                                  port=qs.port,
                                  project_prefix="quickstart"),
        reward=RewardStage(epochs=qs.rm_epochs, lr=3e-4 if tiny else 2e-4, batch_size=8, max_length=128,
                           scheduler="cosine", warmup_steps=5),
        # A firm KL leash (β₀ = 0.2 adaptive, target 3 nats): looser settings reach a higher proxy
        # reward but a lower gold score on this task (see docs/quickstart.md).
        ppo=PPOStage(iterations=qs.ppo_iterations, batch_size=16 if tiny else 32, minibatch_size=8, ppo_epochs=4,
                     learning_rate=3e-4 if tiny else 1e-4, kl_control="adaptive", kl_coef=0.2, kl_target=3.0,
                     kl_horizon=200, missing_eos_penalty=1.0, save_every=5),
        eval_samples=2, seed=qs.seed, threads=qs.threads, progress=qs.progress, algorithm=qs.algorithm, **extra,
    )


def run_quickstart(qs: QuickstartConfig) -> dict:
    """Run (or resume) the quickstart; return the summary (also in ``<output>/summary.json``)."""
    from rankloop.corpus import make_prompts
    from rankloop.io import write_json, write_jsonl
    from rankloop.loop import PeakRSS, console, run_loop
    from rankloop.pretrain import pretrain, pretrained_dir
    from rankloop.report import summarise, write_report

    qs = qs.sized()
    run = Path(qs.output)
    run.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    timings: list[dict] = []

    # 1. the base model (cached)
    pcfg = qs.pretrain_config().model_copy(update={"threads": qs.threads})
    cached = (pretrained_dir(pcfg) / "DONE").exists()
    console.rule("pre-training" + (" (cached)" if cached else ""))
    t0 = time.perf_counter()
    with PeakRSS() as rss:
        policy = pretrain(pcfg, progress=qs.progress)
    timings.append({"stage": "pre-train" + (" (cached)" if cached else ""), "artifact": str(policy), "skipped": cached,
                    "seconds": round(time.perf_counter() - t0, 3), "peak_rss_mib": round(rss.peak / 2**20, 1)})
    console.print(f"base model: {policy}")

    # 2. prompts
    train, held_out = make_prompts(seed=qs.seed, n_train=qs.train_prompts, n_eval=qs.eval_prompts)
    write_jsonl(run / "prompts.jsonl", train)
    write_jsonl(run / "eval_prompts.jsonl", held_out)

    # 3. the loop
    cfg = loop_config(qs, policy, run)
    run_loop(cfg, timings)

    # 4. the report
    total = time.perf_counter() - t_start
    summary = summarise(run, timings=timings, total_seconds=total)
    summary["pretrained"] = str(policy)
    summary["tiny"] = qs.tiny
    write_json(run / "summary.json", summary)
    write_report(run, summary)
    return summary
