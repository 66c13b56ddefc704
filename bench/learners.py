"""The learners' comparison on the quickstart task (issue 14, item 4): PPO, RLOO, GRPO, offline DPO
and iterative DPO from the same pre-trained policy, rankings and reward model, at three KL
strengths each, over several seeds — the gold-vs-KL frontier of each learner. See rankloop/compare.py.

    python bench/learners.py            # the quickstart's size, seeds 0 and 1
    python bench/learners.py --quick    # the CI size (--tiny), seeds 0 and 1 (a few minutes)

Writes bench/results/learners[_quick].json, docs/img/learners[_quick].png and prints the table.
A finished arm is not re-run (its arm.json is read back); remove --work to start over.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    from rankloop.compare import (
        LEARNERS,
        CompareConfig,
        compare_learners,
        frontier_png,
        table,
    )

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the quickstart's CI size (--tiny)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--learners", nargs="+", default=list(LEARNERS), choices=LEARNERS)
    ap.add_argument("--iter-rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--work", default=None, help="work directory (default: bench/runs/learners[_quick])")
    args = ap.parse_args()
    tag = "_quick" if args.quick else ""
    work = Path(args.work or ROOT / "bench" / "runs" / f"learners{tag}")
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    summary = compare_learners(CompareConfig(output=str(work), tiny=args.quick, seeds=args.seeds,
                                             learners=args.learners, iter_rounds=args.iter_rounds,
                                             threads=args.threads),
                               on_arm=lambda a: print(f"  {a.learner} β={a.kl_strength:g} seed {a.seed}: win "
                                                      f"{a.win_rate}, KL {a.kl}, {a.learn_seconds:.0f}s", flush=True))
    summary["machine"] = {"cpus": os.cpu_count(), "load_average_at_start": load0,
                          "load_average_at_end": os.getloadavg(),
                          "note": "load averages above the core count mean other jobs shared the CPU: "
                                  "seconds are contended; win rates and KL are not affected by load"}
    summary["size"] = "tiny" if args.quick else "quickstart"
    summary["total_wall_s"] = round(time.perf_counter() - t0, 1)
    out = ROOT / "bench" / "results" / f"learners{tag}.json"
    out.write_text(json.dumps(summary, indent=1))
    png = frontier_png(summary, ROOT / "docs" / "img" / f"learners{tag}.png")
    print(table(summary))
    if summary["verdict"]:
        v = summary["verdict"]
        print(f"\nbest: {v['best']} (β={v['best_kl_strength']:g}) win rate {v['win_rate']:.3f}, "
              f"{v['lead']:+.3f} over {v['runner_up']} — "
              + {True: "outside the seeds' spread", False: "inside the seeds' spread",
                 None: "one seed: no spread to compare"}[v["outside_seed_spread"]])
    print(f"wrote {out} and {png}")


if __name__ == "__main__":
    main()
