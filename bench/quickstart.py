"""Benchmark of ``rankloop quickstart``: time and memory per phase, the outcome, and active vs random
choice of what to label. Writes ``bench/results/quickstart.json`` and prints a table.

    python bench/quickstart.py            # full size, pre-training included (fresh cache)
    python bench/quickstart.py --tiny     # the CI size
    python bench/quickstart.py --cached   # reuse ~/.cache/rankloop's pre-trained model

Phases: pre-training, each loop stage (sample, select, label, reward model, PPO, evaluate) and the
report; for each the wall time and the peak RSS of the process during it. Outcome: the final
policy's win rate against the pre-trained one by the gold preference on held-out prompts, and the
KL between them.

Active vs random (same label budget): from the pre-trained policy's K = 4 candidates for a pool of
prompts, ``seed_prompts`` are labeled at random (simulated labelers through the labeling app) and a
reward model is trained; then ``budget`` more prompts are chosen by each method — random, ``spread``
(the RM's own pairwise doubt) and ``ensemble`` (disagreement of bootstrap reward heads) — labeled
the same way, and a reward model is trained on seed + chosen. The figure is each RM's pairwise
accuracy on the held-out gold rankings, over several seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run_quickstart_phase(args, work: Path) -> dict:
    from rankloop.quickstart import QuickstartConfig, run_quickstart

    t0 = time.perf_counter()
    summary = run_quickstart(QuickstartConfig(output=str(work / "quickstart"), tiny=args.tiny, progress=False,
                                              threads=args.threads))
    total = time.perf_counter() - t0
    return {"summary": summary, "wall_s": total}


def active_vs_random(args, run: Path, work: Path) -> dict:
    """Equal label budgets; RM accuracy on held-out gold rankings per selection method."""
    from rankloop.active import select_prompts
    from rankloop.corpus import make_prompts
    from rankloop.io import read_candidates, write_jsonl
    from rankloop.loop import LabelingSettings, LoopConfig, SamplingSettings, step_label, step_reward
    from rankloop.sampling import sample_candidates

    qs = json.loads((run / "loop_config.json").read_text())
    policy, gold_eval = qs["policy"], run / "eval" / "gold_rankings.jsonl"
    n_pool = 64 if args.tiny else 192
    seed_n, budget = (16, 16) if args.tiny else (32, 32)
    pool, _ = make_prompts(seed=0, n_train=n_pool, n_eval=1)
    pool = [p.model_copy(update={"id": f"pool-{i:04d}"}) for i, p in enumerate(pool)]
    d = work / "active"
    d.mkdir(parents=True, exist_ok=True)
    cands_path = d / "candidates.jsonl"
    if not cands_path.exists():
        cands = sample_candidates(policy, pool, 4, max_new_tokens=qs["sampling"]["max_new_tokens"], seed=123,
                                  policy_name="initial")
        write_jsonl(cands_path, cands)
    cands = read_candidates(cands_path)
    # One noise level for every arm, calibrated on the whole pool: an arm that picks close calls
    # must not get them labeled with less noise.
    from rankloop.corpus import gold_scores
    from rankloop.simulate import calibrate_sigma

    texts: dict[str, list[str]] = {}
    for c in cands:
        texts.setdefault(c.prompt_id, []).append(c.text)
    by_id = {p.id: p for p in pool}
    sigma = calibrate_sigma([gold_scores([by_id[k]] * len(v), v) for k, v in texts.items()], 0.73)
    results: dict[str, list[float]] = {"random": [], "spread": [], "ensemble": []}
    seeds = [0] if args.tiny else list(range(args.active_seeds))
    for seed in seeds:
        sd = d / f"seed-{seed}"
        sd.mkdir(exist_ok=True)
        cfg = LoopConfig(output=str(sd), policy=policy, prompts=str(run / "prompts.jsonl"), k=4, seed=seed,
                         sampling=SamplingSettings(**qs["sampling"]),
                         labeling=LabelingSettings(labelers=4, overlap=1, project_prefix=f"active-{seed}", sigma=sigma),
                         reward=qs["reward"], progress=False)
        import random

        rng = random.Random(seed)
        seed_prompts = rng.sample(pool, seed_n)
        rest = [p for p in pool if p.id not in {q.id for q in seed_prompts}]
        step_label(cfg, 0, seed_prompts, cands, sd / "seed_rankings.jsonl")
        step_reward(cfg, sd / "seed_rankings.jsonl", None, sd / "rm_seed")
        for i, method in enumerate(results):
            chosen, info = select_prompts(rest, cands, budget, method=method, reward_model=sd / "rm_seed",
                                          labeled=[sd / "seed_rankings.jsonl"], seed=seed)
            md = sd / method
            md.mkdir(exist_ok=True)
            step_label(cfg, 1 + i, chosen, cands, md / "rankings.jsonl")
            data = md / "all.jsonl"
            data.write_text((sd / "seed_rankings.jsonl").read_text() + (md / "rankings.jsonl").read_text())
            res = step_reward(cfg, data, gold_eval, md / "rm")
            results[method].append(res.rm_accuracy)
            print(f"  seed {seed} {method:8s} RM accuracy {res.rm_accuracy:.3f}", flush=True)
    out = {"sigma": sigma, "label_budget_prompts": seed_n + budget, "seed_prompts": seed_n, "chosen_prompts": budget,
           "pool_prompts": n_pool, "seeds": len(seeds), "heldout_rankings": sum(1 for _ in gold_eval.open())}
    for m, accs in results.items():
        out[f"rm_acc_{m}"] = statistics.mean(accs)
        out[f"rm_acc_{m}_per_seed"] = accs
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="the CI size")
    ap.add_argument("--cached", action="store_true", help="reuse the cached pre-trained model")
    ap.add_argument("--active-seeds", type=int, default=3, help="seeds of the active-vs-random comparison")
    ap.add_argument("--skip-active", action="store_true")
    ap.add_argument("--active-only", type=Path, default=None, metavar="RUN",
                    help="only the active-vs-random comparison, on a finished quickstart run directory; "
                    "merged into the existing results file")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--work", type=Path, default=None, help="work directory (default: a temporary one)")
    ap.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "quickstart.json")
    args = ap.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="rankloop-bench-"))
    if args.active_only is not None:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        t0 = time.perf_counter()
        res = active_vs_random(args, args.active_only, work)
        res["wall_s"] = round(time.perf_counter() - t0, 1)
        res["load_average_at_end"] = os.getloadavg()
        old = json.loads(args.output.read_text()) if args.output.exists() else {}
        old["active_vs_random"] = res
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(old, indent=2) + "\n")
        print(json.dumps(res, indent=2))
        return
    if not args.cached:
        os.environ["RANKLOOP_CACHE"] = str(work / "cache")  # pre-training is part of the measured run
    import torch

    load_start = os.getloadavg()
    if args.threads:
        torch.set_num_threads(args.threads)
    res = run_quickstart_phase(args, work)
    s = res["summary"]
    out = {
        "size": "tiny" if args.tiny else "full",
        "machine": {"cpus": os.cpu_count(), "torch_threads": args.threads or torch.get_num_threads(),
                    "load_average_at_start": load_start, "load_average_at_end": os.getloadavg(),
                    "note": "load averages above the core count mean other jobs shared the CPU: times are contended"},
        "pretrain_cached": bool(args.cached),
        "total_wall_s": round(res["wall_s"], 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "phases": [{"phase": t["stage"], "wall_s": t.get("seconds"), "peak_rss_mib": t.get("peak_rss_mib")}
                   for t in s.get("timings", [])],
        "gold_win_rate_vs_pretrained": s.get("win_rate_vs_initial"),
        "final_kl": s.get("final_kl"),
        "initial_gold": s.get("initial_gold"),
        "final_gold": s.get("final_gold"),
        "rm_accuracy": s.get("rm_accuracy"),
    }
    if not args.skip_active:
        t0 = time.perf_counter()
        out["active_vs_random"] = active_vs_random(args, Path(s["run"]), work)
        out["active_vs_random"]["wall_s"] = round(time.perf_counter() - t0, 1)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    if "active_vs_random" not in out and args.output.exists():  # keep a separately measured comparison
        old = json.loads(args.output.read_text())
        if "active_vs_random" in old:
            out["active_vs_random"] = old["active_vs_random"]
    args.output.write_text(json.dumps(out, indent=2) + "\n")

    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"quickstart ({out['size']}) — {args.output}")
    t.add_column("phase")
    t.add_column("wall s", justify="right")
    t.add_column("peak RSS MiB", justify="right")
    for p in out["phases"]:
        t.add_row(p["phase"], f"{p['wall_s']:.1f}", f"{p['peak_rss_mib']:.0f}")
    t.add_row("[bold]total[/]", f"{out['total_wall_s']:.1f}", f"{out['peak_rss_mib']:.0f}")
    Console().print(t)
    print(f"gold win rate vs pre-trained {out['gold_win_rate_vs_pretrained']}, final KL {out['final_kl']}")
    if "active_vs_random" in out:
        a = out["active_vs_random"]
        print(f"RM accuracy at {a['label_budget_prompts']} labeled prompts: random {a['rm_acc_random']:.3f}, "
              f"spread {a['rm_acc_spread']:.3f}, ensemble {a['rm_acc_ensemble']:.3f}")


if __name__ == "__main__":
    main()
