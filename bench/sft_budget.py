"""The label-budget comparison of issue 12.4: pre-trained vs SFT vs SFT+PPO vs PPO without SFT, at
the same label budget counted in labeler-seconds, on held-out prompts by the gold preference.

    python bench/sft_budget.py --quick      # the CI sizes (quickstart --tiny's model and prompts)
    python bench/sft_budget.py              # the quickstart's full sizes
    python bench/sft_budget.py --seeds 0 1 2 --demo-seconds 90 --rank-seconds 30

Each arm is one round of the quickstart's loop (``rankloop.quickstart.compare_sft_budget``): SFT on
budget / demo_seconds demonstrations; SFT+PPO on half the budget in demonstrations and half in
rankings; PPO on budget / rank_seconds rankings from the pre-trained model. The assumed costs and
where they come from are in ``rankloop.quickstart`` (DEMO_SECONDS, RANK_SECONDS). Writes
``bench/results/sft_budget.json`` (with the load average: on a shared machine the times, not the
scores, are contended) and prints a table; ``rankloop quickstart --compare-sft`` puts the same
table in the quickstart's report.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> dict:
    from rankloop.corpus import make_prompts
    from rankloop.io import write_json, write_jsonl
    from rankloop.pretrain import pretrain
    from rankloop.quickstart import DEMO_SECONDS, RANK_SECONDS, QuickstartConfig, compare_sft_budget

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="quickstart --tiny sizes")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--demo-seconds", type=float, default=DEMO_SECONDS)
    ap.add_argument("--rank-seconds", type=float, default=RANK_SECONDS)
    ap.add_argument("--budget", type=float, default=None, help="labeler-seconds (default: one quickstart round of "
                    "rankings, train prompts x 2 x rank seconds)")
    ap.add_argument("--work", type=Path, default=None, help="run directory (default: a temporary one)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "sft_budget.json")
    args = ap.parse_args(argv)

    load_before = os.getloadavg()
    t0 = time.perf_counter()
    tmp = None
    if args.work is None:
        tmp = tempfile.TemporaryDirectory()
        args.work = Path(tmp.name)
    per_seed = []
    for seed in args.seeds:
        qs = QuickstartConfig(output=str(args.work / f"seed-{seed}"), tiny=args.quick, seed=seed, progress=False).sized()
        run = Path(qs.output)
        run.mkdir(parents=True, exist_ok=True)
        policy = pretrain(qs.pretrain_config().model_copy(update={"threads": qs.threads}), progress=False)
        train, held = make_prompts(seed=seed, n_train=qs.train_prompts, n_eval=qs.eval_prompts)
        write_jsonl(run / "prompts.jsonl", train)
        write_jsonl(run / "eval_prompts.jsonl", held)
        per_seed.append(compare_sft_budget(qs, policy, run, args.budget, args.demo_seconds, args.rank_seconds))
    arms = []
    for i, a in enumerate(per_seed[0]["arms"]):
        golds = [s["arms"][i]["gold"] for s in per_seed]
        wins = [s["arms"][i]["win_rate_vs_pretrained"] for s in per_seed]
        arms.append({k: a[k] for k in ("arm", "demonstrations", "rankings", "labeler_seconds")} | {
            "gold_mean": statistics.fmean(golds), "gold_by_seed": golds, "win_rate_mean": statistics.fmean(wins),
            "kl_from_reference_by_seed": [s["arms"][i]["kl_from_reference"] for s in per_seed]})
    out = {k: per_seed[0][k] for k in ("budget_labeler_seconds", "demonstration_seconds", "ranking_seconds", "k",
                                       "overlap", "eval_prompts", "tiny")}
    out.update(seeds=args.seeds, arms=arms, wall_s=round(time.perf_counter() - t0, 1),
               load_average_before=load_before, load_average_after=os.getloadavg(),
               note="one shared 2-core machine: wall time contended; scores are seeded and do not depend on load")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, out)
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"same label budget: {out['budget_labeler_seconds']:.0f} labeler-seconds (demonstration "
                    f"{out['demonstration_seconds']:.0f} s, ranking of {out['k']} {out['ranking_seconds']:.0f} s)")
    for col in ("policy", "demos", "rankings", "gold (mean)", "win vs pre-trained"):
        t.add_column(col, justify="right")
    for a in arms:
        t.add_row(a["arm"], str(a["demonstrations"]), str(a["rankings"]), f"{a['gold_mean']:.3f}",
                  f"{a['win_rate_mean']:.3f}")
    Console().print(t)
    print(f"wrote {args.out} ({out['wall_s']:.0f} s, load average {load_before[0]:.1f} → {out['load_average_after'][0]:.1f})")
    if tmp is not None:
        tmp.cleanup()
    return json.loads(args.out.read_text())


if __name__ == "__main__":
    main()
