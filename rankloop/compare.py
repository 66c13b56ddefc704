"""The learners' comparison (issue 14, item 4): which learner gets the most true improvement per
unit of KL and per second, on the quickstart task, where the gold preference is known.

Every arm starts from the same pre-trained policy and learns from the same round-0 material — the
same K candidates per prompt, the same simulated rankings (made through the labeling app), the
same reward model: the shared stages are run once per seed and copied into each arm's run
directory, where the loop's stage records (content hashes of config and inputs) make it skip them.
The arms:

- ``ppo``, ``rloo``, ``grpo``: one round against that reward model, each at three KL strengths
  (a fixed β: PPO's and RLOO's per-sequence KL penalty in the reward, GRPO's k3 term in the loss);
  the rollout budget matched (``iterations`` × PPO's batch of responses, as batch/4 prompts × K = 4
  for RLOO and GRPO);
- ``dpo``: offline DPO on those rankings, three β;
- ``dpo-iter``: iterative DPO — the same first round, then ``iter_rounds - 1`` more rounds in
  which the new policy's samples are ranked by the same simulated labelers and DPO retrains on
  every ranking so far. It uses that many times the labels; the table says how many.

Each arm is measured on the held-out prompts by the loop's own evaluation: the gold win rate
against the initial policy (ties count half), the gold score, the proxy (reward-model) score and
the KL from the initial policy (Σ_t log π − log π₀ over the policy's own samples), plus the wall
seconds and peak RSS of its learning stages. Gao et al. (2022) plot gold score against KL for
best-of-n and RL; ``frontier`` is that plot for every learner.
"""

from __future__ import annotations

import json
import shutil
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field

from rankloop.config import Config

LEARNERS = ("ppo", "rloo", "grpo", "dpo", "dpo-iter")
# Three KL strengths per learner, weak → strong. RL learners: a fixed β (PPO's adaptive controller
# would move it); DPO: its β (the implicit KL's strength; the paper's 0.1 in the middle).
KL_STRENGTHS: dict[str, tuple[float, ...]] = {"ppo": (0.02, 0.1, 0.5), "rloo": (0.02, 0.1, 0.5),
                                              "grpo": (0.02, 0.1, 0.5), "dpo": (0.05, 0.1, 0.5),
                                              "dpo-iter": (0.05, 0.1, 0.5)}


class CompareConfig(Config):
    """What the comparison runs. Sizes come from the quickstart (``tiny`` for the CI-sized run)."""

    output: str = Field("rankloop-learners", description="Work directory: one run directory per seed and arm.")
    tiny: bool = Field(False, description="The quickstart's CI sizes (--tiny).")
    seeds: list[int] = Field(default_factory=lambda: [0, 1], description="Seeds (prompts, sampling, labelers, "
                             "training); the spread over them is reported.")
    learners: list[str] = Field(default_factory=lambda: list(LEARNERS), description=f"Arms: {', '.join(LEARNERS)}.")
    iter_rounds: int = Field(3, ge=2, description="Rounds of iterative DPO (dpo-iter).")
    strengths: dict[str, list[float]] | None = Field(None, description="KL strengths per learner (default: "
                                                     "KL_STRENGTHS).")
    iterations: int | None = Field(None, ge=1, description="RL iterations per arm (default: the quickstart's "
                                   "ppo_iterations).")
    threads: int | None = Field(None, ge=1, description="torch intra-op threads.")
    progress: bool = Field(False, description="Progress bars.")


@dataclass
class ArmResult:
    learner: str
    kl_strength: float
    seed: int
    rounds: int
    rankings: int  # rankings the arm learned from (all rounds)
    win_rate: float | None
    gold: float | None
    proxy: float | None
    kl: float | None
    learn_seconds: float  # the learner's stages, every round
    other_seconds: float  # iterated DPO: the later rounds' sampling, labeling and reward model
    peak_rss_mib: float  # of the learner's stages
    per_round: list[dict[str, Any]] = field(default_factory=list)


def _stage_overrides(cfg, learner: str, strength: float, iterations: int) -> dict[str, Any]:
    """The arm's loop-config update: its algorithm and its KL strength, the rest as the quickstart."""
    from rankloop.loop import DPOStage, GRPOStage, PPOStage, RLOOStage

    if learner == "ppo":
        return {"algorithm": "ppo", "ppo": PPOStage(**{**cfg.ppo.given(), "iterations": iterations,
                                                       "kl_control": "fixed", "kl_coef": strength})}
    if learner in ("rloo", "grpo"):
        stage = RLOOStage if learner == "rloo" else GRPOStage
        given = getattr(cfg, learner).given()
        # PPO's rollout budget: its batch_size responses per iteration as 8 prompts × K = 4
        ppo_rows = cfg.ppo.given().get("batch_size", 32)
        return {"algorithm": learner, learner: stage(**{**given, "iterations": iterations, "samples_per_prompt": 4,
                                                        "batch_size": max(1, ppo_rows // 4), "kl_coef": strength})}
    return {"algorithm": "dpo", "dpo": DPOStage(**{**cfg.dpo.given(), "beta": strength})}


def _shared_copy(src: Path, dst: Path) -> None:
    """The shared stages' artifacts (eval set, initial evaluation, round 0 up to the reward model)
    into an arm's run directory: everything but round 0's policy and evaluation."""
    dst.mkdir(parents=True, exist_ok=True)
    for p in src.iterdir():
        if p.name == "round-0":
            (dst / "round-0").mkdir(exist_ok=True)
            for q in p.iterdir():
                if q.name.startswith(("policy", "eval")):
                    continue
                (shutil.copytree if q.is_dir() else shutil.copy2)(q, dst / "round-0" / q.name)
        elif p.name in ("eval", "prompts.jsonl", "eval_prompts.jsonl", "train_prompts.jsonl"):
            (shutil.copytree if p.is_dir() else shutil.copy2)(p, dst / p.name)


LEARNER_STAGES = (": PPO", ": RLOO", ": GRPO", ": DPO")


def _learn_seconds(timings: list[dict]) -> tuple[float, float, float]:
    """(the learner stages' seconds, the other non-evaluation stages' seconds — the shared stages
    for the arm that ran them, the later rounds' sampling, labeling and RM for iterative DPO —, the
    learner stages' peak RSS)."""
    ran = [t for t in timings if not t.get("skipped") and "evaluate" not in t["stage"]
           and not t["stage"].startswith("eval set")]
    learn = [t for t in ran if t["stage"].endswith(LEARNER_STAGES)]
    other = [t for t in ran if t not in learn]
    return (round(sum(t["seconds"] or 0 for t in learn), 2), round(sum(t["seconds"] or 0 for t in other), 2),
            max((t.get("peak_rss_mib") or 0 for t in learn), default=0.0))


def run_arm(base_cfg, shared: Path, out: Path, learner: str, strength: float, seed: int, iterations: int,
            iter_rounds: int) -> ArmResult:
    from rankloop.io import read_preferences
    from rankloop.loop import read_eval, round_dir, run_loop

    if out != shared and not (out / "arm.json").exists():
        _shared_copy(shared, out)
    out.mkdir(parents=True, exist_ok=True)
    rounds = iter_rounds if learner == "dpo-iter" else 1
    cfg = base_cfg.model_copy(update={"output": str(out), "rounds": rounds,
                                      **_stage_overrides(base_cfg, learner, strength, iterations)})
    timings: list[dict] = []
    run_loop(cfg, timings)
    learn_s, other_s, rss = _learn_seconds(timings)
    per_round = []
    for r in range(rounds):
        e = read_eval(round_dir(out, r).eval)
        per_round.append({"round": r, "win_rate": e.win_rate_vs_initial if e else None,
                          "gold": e.gold if e else None, "kl": e.kl_from_initial if e else None})
    last = read_eval(round_dir(out, rounds - 1).eval)
    rankings = len(read_preferences(round_dir(out, rounds - 1).rm_data))
    res = ArmResult(learner=learner, kl_strength=strength, seed=seed, rounds=rounds, rankings=rankings,
                    win_rate=last.win_rate_vs_initial if last else None, gold=last.gold if last else None,
                    proxy=last.proxy if last else None, kl=last.kl_from_initial if last else None,
                    learn_seconds=learn_s, other_seconds=other_s if learner == "dpo-iter" else 0.0,
                    peak_rss_mib=rss, per_round=per_round)
    (out / "arm.json").write_text(json.dumps(asdict(res), indent=1))
    return res


def shared_base(qs, seed: int, work: Path):
    """The seed's pre-trained policy (cached), prompts and base loop config."""
    from rankloop.corpus import make_prompts
    from rankloop.io import write_jsonl
    from rankloop.pretrain import pretrain
    from rankloop.quickstart import loop_config

    qs = qs.model_copy(update={"seed": seed, "output": str(work)}).sized()
    policy = pretrain(qs.pretrain_config().model_copy(update={"threads": qs.threads}), progress=qs.progress)
    base = work
    base.mkdir(parents=True, exist_ok=True)
    train, held_out = make_prompts(seed=seed, n_train=qs.train_prompts, n_eval=qs.eval_prompts)
    write_jsonl(base / "prompts.jsonl", train)
    write_jsonl(base / "eval_prompts.jsonl", held_out)
    cfg = loop_config(qs, policy, base)
    # the comparison starts every learner from the pre-trained model (no SFT) for one round
    if hasattr(cfg, "demonstrations"):
        cfg = cfg.model_copy(update={"demonstrations": cfg.demonstrations.model_copy(update={"enabled": False})})
    cfg = cfg.model_copy(update={"rounds": 1, "progress": qs.progress})
    return qs, cfg, base


def compare_learners(cc: CompareConfig, on_arm=None) -> dict[str, Any]:
    """Run every arm for every seed (resumable: a finished arm is read back); return the summary.
    The first arm of a seed (PPO at the middle strength) runs the shared stages; the others copy them."""
    from rankloop.quickstart import QuickstartConfig

    unknown = set(cc.learners) - set(LEARNERS)
    if unknown:
        raise ValueError(f"unknown learners {sorted(unknown)}; choose from {', '.join(LEARNERS)}")
    work = Path(cc.output)
    arms: list[ArmResult] = []
    t0 = time.perf_counter()
    for seed in cc.seeds:
        seed_dir = work / f"seed-{seed}"
        qs, cfg, _ = shared_base(QuickstartConfig(tiny=cc.tiny, progress=cc.progress, threads=cc.threads),
                                 seed, seed_dir)
        iterations = cc.iterations or qs.ppo_iterations
        strengths = {**KL_STRENGTHS, **(cc.strengths or {})}
        ppo_s = strengths["ppo"]
        first = ("ppo", ppo_s[len(ppo_s) // 2])
        plan = [first] + [(lr, s) for lr in cc.learners for s in strengths[lr] if (lr, s) != first]
        shared = seed_dir / f"{first[0]}-{first[1]:g}"
        for learner, strength in plan:
            out = seed_dir / f"{learner}-{strength:g}"
            if (out / "arm.json").exists():
                res = ArmResult(**json.loads((out / "arm.json").read_text()))
            else:
                res = run_arm(cfg, shared, out, learner, strength, seed, iterations, cc.iter_rounds)
            if learner in cc.learners:
                arms.append(res)
                if on_arm:
                    on_arm(res)
    summary = summarise(arms)
    summary["wall_s"] = round(time.perf_counter() - t0, 1)
    return summary


def _stat(group: Sequence[ArmResult], name: str) -> dict[str, float | None]:
    v = [getattr(a, name) for a in group if getattr(a, name) is not None]
    return {"mean": statistics.fmean(v) if v else None, "min": min(v) if v else None, "max": max(v) if v else None}


def summarise(arms: Sequence[ArmResult]) -> dict[str, Any]:
    """Per learner and strength: the mean over seeds and the spread (min, max); the best learner by
    win rate at each one's best strength, and whether its lead is outside the seeds' spread."""
    rows = []
    keys = sorted({(a.learner, a.kl_strength) for a in arms}, key=lambda k: (LEARNERS.index(k[0]), k[1]))
    for learner, s in keys:
        group = [a for a in arms if a.learner == learner and a.kl_strength == s]

        rows.append({"learner": learner, "kl_strength": s, "seeds": [a.seed for a in group],
                     "rankings": max(a.rankings for a in group), **{k: _stat(group, k) for k in
                     ("win_rate", "gold", "proxy", "kl", "learn_seconds", "other_seconds", "peak_rss_mib")}})
    best: dict[str, dict] = {}
    for r in rows:
        if r["win_rate"]["mean"] is None:
            continue
        if r["learner"] not in best or r["win_rate"]["mean"] > best[r["learner"]]["win_rate"]["mean"]:
            best[r["learner"]] = r
    ranked = sorted(best.values(), key=lambda r: -r["win_rate"]["mean"])
    verdict = None
    if len(ranked) >= 2:
        a, b = ranked[0], ranked[1]
        several = len(a["seeds"]) > 1 and len(b["seeds"]) > 1
        separated = a["win_rate"]["min"] > b["win_rate"]["max"] if several else None
        verdict = {"best": a["learner"], "best_kl_strength": a["kl_strength"], "win_rate": a["win_rate"]["mean"],
                   "runner_up": b["learner"], "runner_up_win_rate": b["win_rate"]["mean"],
                   "lead": a["win_rate"]["mean"] - b["win_rate"]["mean"],
                   "outside_seed_spread": separated}
    return {"rows": rows, "arms": [asdict(a) for a in arms], "verdict": verdict}


def frontier_png(summary: dict[str, Any], path: Path) -> Path:
    """Gold win rate against KL from the initial policy, one line per learner (error bars: the
    seeds' range), the points its three KL strengths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for learner in LEARNERS:
        rs = [r for r in summary["rows"] if r["learner"] == learner and r["kl"]["mean"] is not None
              and r["win_rate"]["mean"] is not None]
        if not rs:
            continue
        rs.sort(key=lambda r: r["kl"]["mean"])
        x = [r["kl"]["mean"] for r in rs]
        y = [r["win_rate"]["mean"] for r in rs]
        yerr = [[r["win_rate"]["mean"] - r["win_rate"]["min"] for r in rs],
                [r["win_rate"]["max"] - r["win_rate"]["mean"] for r in rs]]
        xerr = [[r["kl"]["mean"] - r["kl"]["min"] for r in rs], [r["kl"]["max"] - r["kl"]["mean"] for r in rs]]
        ax.errorbar(x, y, yerr=yerr, xerr=xerr, marker="o", capsize=3, label=learner)
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("KL from the initial policy (nats per response)")
    ax.set_ylabel("gold win rate vs the initial policy")
    ax.set_title("Gold vs KL, per learner (3 KL strengths; bars: seeds' range)")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def table(summary: dict[str, Any]) -> str:
    """The summary as a markdown table (mean over seeds, [min, max])."""

    def f(s: dict, spec: str = ".3f") -> str:
        if s["mean"] is None:
            return "–"
        if s["min"] == s["max"]:
            return format(s["mean"], spec)
        return f"{s['mean']:{spec}} [{s['min']:{spec}}, {s['max']:{spec}}]"

    lines = [("| learner | KL strength | rankings | gold win rate | gold | proxy | KL (nats) | learn s | + label s "
             "| peak RSS MiB |"), "|---|---|---|---|---|---|---|---|---|---|"]
    for r in summary["rows"]:
        lines.append(f"| {r['learner']} | {r['kl_strength']:g} | {r['rankings']} | {f(r['win_rate'])} | "
                     f"{f(r['gold'])} | {f(r['proxy'])} | {f(r['kl'], '.2f')} | {f(r['learn_seconds'], '.0f')} | {f(r['other_seconds'], '.0f')} | "
                     f"{f(r['peak_rss_mib'], '.0f')} |")
    return "\n".join(lines)
