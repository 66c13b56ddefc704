"""``rankloop quickstart``: InstructGPT's whole recipe on an embedded default, offline, on a laptop CPU.

1. pre-train a small causal LM on the generated corpus (``rankloop.pretrain``; cached for later runs);
2. write the training and held-out prompts (``rankloop.corpus.make_prompts``);
3. run the loop (``rankloop.loop``):
   round 0 — simulated demonstrators write answers through the labeling app's API, SFT on the
   accepted ones (the SFT model is then the policy's start and the KL reference);
   rounds 1 and 2 — K = 4 candidates per training prompt from the latest policy → simulated
   labelers (the gold preference plus noise tuned to 73% agreement) through the labeling app →
   reward model → the learner (PPO with the adaptive KL controller by default; ``--algorithm``)
   → evaluation on held-out prompts;
4. write the report (``rankloop.report``): ``report.html`` and a printed summary table with the
   gold score per stage and round.

``--no-demonstrations --rounds 1`` is the quickstart as it was before (pre-train → one round of
PPO; its results are recorded in tests/golden/quickstart.json). ``--labelers human`` starts the
labeling app with the project loaded and continues when the demonstrations / rankings are in.
``--tiny`` is the reduced size CI runs.
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
    tiny: bool = Field(False, description="Reduced size for CI (about 2.5 minutes on a quiet 2-core machine).")
    labelers: Literal["simulated", "human"] = Field("simulated", description="Simulated labelers or people.")
    rounds: int = Field(2, ge=1, description="Loop rounds of rankings → reward model → learner, each sampling from "
                        "the latest policy.")
    train_prompts: int = Field(96, ge=1, description="Training prompts (each gets K candidates in a round).")
    eval_prompts: int = Field(48, ge=1, description="Held-out prompts for the evaluation.")
    k: int = Field(4, ge=2, description="Candidates per prompt.")
    ppo_iterations: int = Field(40, ge=1, description="RL iterations per round (PPO, RLOO or GRPO).")
    algorithm: Literal["ppo", "rloo", "grpo", "dpo"] = Field("ppo", description="The policy's learner each round "
                                                             "(see rankloop.loop.LoopConfig.algorithm).")
    demonstrations: bool = Field(True, description="Round 0: simulated demonstrators write answers through the "
                                 "labeling app, SFT on them; the SFT model then starts the policy and is the "
                                 "reference.")
    demo_prompts: int = Field(48, ge=1, description="Training prompts sent for demonstrations.")
    sft_epochs: float = Field(3, gt=0, description="SFT epochs on the demonstrations.")
    compare: bool = Field(False, description="Also run the learners' comparison (PPO, RLOO, GRPO, offline and "
                          "iterative DPO at three KL strengths, seeds seed and seed+1, from the same rankings and "
                          "reward model; rankloop.compare) in <output>/compare; the report shows its table and "
                          "gold-vs-KL plot. Long: bench/learners.py runs the same.")
    compare_sft: bool = Field(False, description="Also compare pre-trained vs SFT vs SFT+PPO vs PPO without SFT at "
                              "the same label budget in labeler-seconds (see compare_sft_budget); the report shows it.")
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
    group = {"iterations": qs.ppo_iterations, "batch_size": 4 if tiny else 8, "samples_per_prompt": 4,
             "minibatch_size": 8, "epochs": 1, "learning_rate": 3e-4 if tiny else 1e-4, "missing_eos_penalty": 1.0,
             "save_every": 5}
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


# ---------------------------------------------------------------- the label budget (issue 12.4)

# What one label costs a person, in labeler-seconds. Assumed, not measured (the quickstart's answers
# are about 18 words, TARGET_WORDS):
# - writing one demonstration ≈ 60 s: read the prompt (≈ 5 s) and compose ≈ 18 words at ≈ 20
#   words per minute, the rate people compose (not copy) text at a keyboard (Karat et al. 1999
#   measured 13–19 wpm for composition by keyboard), ≈ 55 s;
# - ranking one set of K = 4 ≈ 30 s: read 4 × 18 = 72 words at ≈ 240 wpm, the mean silent
#   reading rate of adults (Brysbaert 2019), ≈ 18 s, and order them, ≈ 12 s.
# So one demonstration costs about two rankings of four. Both are set per call (compare_sft_budget).
DEMO_SECONDS = 60.0
RANK_SECONDS = 30.0


def budget_arms(budget_s: float, demo_s: float = DEMO_SECONDS, rank_s: float = RANK_SECONDS,
                overlap: int = 2) -> list[dict]:
    """The four policies compared at one label budget: how many demonstrations and rankings each
    buys. Rankings come ``overlap`` per labeled prompt, as the loop labels them."""
    def rankings(seconds: float) -> int:
        return int(seconds // rank_s) // overlap * overlap

    half = budget_s / 2
    arms = [{"arm": "pre-trained", "demonstrations": 0, "rankings": 0},
            {"arm": "SFT", "demonstrations": int(budget_s // demo_s), "rankings": 0},
            {"arm": "SFT+PPO", "demonstrations": int(half // demo_s), "rankings": rankings(half)},
            {"arm": "PPO without SFT", "demonstrations": 0, "rankings": rankings(budget_s)}]
    for a in arms:
        a["labeler_seconds"] = a["demonstrations"] * demo_s + a["rankings"] * rank_s
    return arms


def compare_sft_budget(qs: QuickstartConfig, policy: Path, run: Path, budget_s: float | None = None,
                       demo_s: float = DEMO_SECONDS, rank_s: float = RANK_SECONDS) -> dict:
    """Pre-trained vs SFT vs SFT+PPO vs PPO without SFT, each bought with the same label budget
    (default: one quickstart round of rankings, ``train_prompts × 2 × rank_s``), each one round of
    the quickstart's loop (or round 0 only, for SFT) in ``run/budget/<arm>``, measured on the same
    held-out prompts by the gold preference. Returns (and writes to ``run/budget/budget.json``)
    the arms with their counts, labeler-seconds, gold score, win rate against the pre-trained
    model, and KL from each arm's reference (SFT's KL is from the pre-trained model)."""
    from rankloop.io import write_json, write_jsonl
    from rankloop.loop import read_demonstrations_stage, read_eval, read_rounds, run_loop

    qs = qs.sized()
    overlap = 2 if qs.labelers == "simulated" else 1
    budget = budget_s if budget_s is not None else qs.train_prompts * overlap * rank_s
    arms = budget_arms(budget, demo_s, rank_s, overlap)
    prompts, held = (run / "prompts.jsonl").read_text(), (run / "eval_prompts.jsonl").read_text()
    n_train = sum(1 for x in prompts.splitlines() if x.strip())
    for a in arms[1:]:  # the pre-trained arm is every run's evaluation of the initial policy
        d = run / "budget" / a["arm"].replace(" ", "-").replace("+", "-")
        d.mkdir(parents=True, exist_ok=True)
        (d / "prompts.jsonl").write_text(prompts)
        (d / "eval_prompts.jsonl").write_text(held)
        demos, labeled = a["demonstrations"], a["rankings"] // overlap
        if demos > n_train or labeled > n_train:
            raise ValueError(f"label budget {budget:.0f} s buys {demos} demonstrations / {labeled} labeled prompts "
                             f"for '{a['arm']}', more than the {n_train} training prompts")
        arm_qs = qs.model_copy(update={"demonstrations": demos > 0, "demo_prompts": max(demos, 1), "rounds": 1,
                                       "output": str(d)})
        # SFT alone: round 0 only; the others: one round, labeling `labeled` prompts
        cfg = loop_config(arm_qs, policy, d).model_copy(update={"rounds": 1 if labeled else 0,
                                                                "prompts_per_round": labeled or None})
        run_loop(cfg)
        rounds = read_rounds(d)
        ev = rounds[-1].eval if rounds else read_demonstrations_stage(d)[2]
        a.update(run=str(d), gold=None if ev is None else ev.gold,
                 win_rate_vs_pretrained=None if ev is None else ev.win_rate_vs_initial,
                 kl_from_reference=None if ev is None else ev.kl_from_initial)
        initial = read_eval(d / "eval" / "initial.json")
    arms[0].update(gold=None if initial is None else initial.gold, win_rate_vs_pretrained=0.5,
                   kl_from_reference=0.0)
    out = {"budget_labeler_seconds": budget, "demonstration_seconds": demo_s, "ranking_seconds": rank_s, "k": qs.k,
           "overlap": overlap, "eval_prompts": qs.eval_prompts, "tiny": qs.tiny, "seed": qs.seed, "arms": arms}
    write_json(run / "budget" / "budget.json", out)
    write_jsonl(run / "budget" / "arms.jsonl", arms)
    return out


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
    if qs.compare_sft:
        summary["sft_budget"] = compare_sft_budget(qs, policy, run)
    if qs.compare:
        from rankloop.compare import CompareConfig, compare_learners, frontier_png

        console.rule("the learners' comparison")
        cmp = compare_learners(CompareConfig(output=str(run / "compare"), tiny=qs.tiny, seeds=[qs.seed, qs.seed + 1],
                                             threads=qs.threads, progress=qs.progress))
        frontier_png(cmp, run / "compare" / "frontier.png")
        summary["learners"] = {k: v for k, v in cmp.items() if k != "arms"}
    write_json(run / "summary.json", summary)
    write_report(run, summary)
    return summary
