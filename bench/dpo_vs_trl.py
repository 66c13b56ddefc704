"""rankloop's DPO on K-way rankings against TRL's DPOTrainer fed the expanded pairs.

Same policies (a ~20M-parameter GPT-2 built from a config with a BPE tokenizer trained on the data,
and the pre-trained stories260K Llama in ../shared), the same synthetic K-way rankings (K = 2, 4, 9,
ties allowed; TRL gets every (better, worse) pair of every ranking as prompt/chosen/rejected text),
the same epochs, the same optimiser settings (AdamW, linear schedule, no warm-up, clip 1.0, fp32,
dropout off), β = 0.1, max length 128, and the same number of sequences per forward pass
(rankloop: B rankings × K candidates; TRL: B·K/2 pairs × 2).

Sides, each in its own subprocess (so peak RSS, ru_maxrss, is that side's alone):

- ``rankloop-dpo``: ``train-dpo --loss dpo`` (all C(K,2) pairs from one tree forward per ranking);
- ``rankloop-pl``: ``train-dpo --loss pl`` (the Plackett–Luce list);
- ``trl``: ``DPOTrainer`` at its defaults (the reference model kept, forwarded every step);
- ``trl-precompute``: with ``precompute_ref_log_probs=True``.

Seconds per epoch: rankloop's training loop plus its reference log-prob pass (``train_summary.json``:
``train_loop_seconds + reference_seconds``); TRL: ``trainer.train()``, plus — with precompute, where
the reference pass runs inside ``DPOTrainer.__init__`` — the trainer's construction. The ratio is
rankloop's over the faster TRL configuration. Held-out accuracy: the fraction of held-out pairs whose
implicit rewards β·(log π_θ − log π_ref) order them right, computed by one function
(``rankloop.dpo.train.dataset_logps`` on the same token ids) for every trained policy.

Learning rate, fixed in advance: TRL at ``--lr``; rankloop at ``--lr × sqrt(pairs per rankloop step /
pairs per TRL step)``. At equal epochs rankloop takes fewer, bigger optimizer steps (a step of B
rankings carries B·C(K,2) pairs, TRL's B·K/2), and the square-root rule is the scaling for Adam
(Malladi et al. 2022) — the rule the reward benchmark uses (``bench/reward_vs_trl.py --sqrt-lr``).
At K = 2 the two are equal. The learning rate does not change the time of a step.

    python bench/dpo_vs_trl.py --quick     # one small cell set, 1 epoch (< 5 minutes on a quiet machine)
    python bench/dpo_vs_trl.py             # more data, 2 epochs, 3 repeats

TRL is a benchmark-only dependency (``pip install trl``; measured with 1.16). Writes
bench/results/dpo_vs_trl.json.
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
STORIES = Path(os.environ.get("RANKLOOP_SHARED", ROOT.parent / "shared")) / "models" / "stories260K-hf"
SIDES = ("rankloop-dpo", "rankloop-pl", "trl", "trl-precompute")
BETA, MAX_LENGTH = 0.1, 128


# ---------------------------------------------------------------- set-up (parent process)


def build_gpt2_20m(path: Path, corpus: list[str]) -> Path:
    """A GPT-2 causal LM of ~20M parameters from a config, with a BPE tokenizer trained on the data."""
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config

    from rankloop.models import train_tokenizer

    tok = train_tokenizer(corpus, vocab_size=1024)
    cfg = GPT2Config(vocab_size=len(tok), n_embd=512, n_layer=6, n_head=8, n_positions=256,
                     pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def run_worker(side: str, policy: Path, train: Path, eval_: Path, epochs: float, batch: int, lr: float,
               out: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", side, "--policy", str(policy), "--train", str(train),
           "--eval", str(eval_), "--epochs", str(epochs), "--batch", str(batch), "--lr", str(lr), "--result", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    if proc.returncode != 0:
        raise RuntimeError(f"{side} worker failed:\n{proc.stderr[-4000:]}")
    return json.loads(out.read_text())


# ---------------------------------------------------------------- workers (one subprocess each)


def held_out_accuracy(policy, reference, tok, eval_path: Path) -> float:
    """Pairwise accuracy of the implicit rewards on the held-out rankings (same function for every side)."""
    from rankloop.dpo.train import ResponseLogps, dataset_logps, encode_rankings
    from rankloop.io import read_preferences
    from rankloop.reward.eval import ranking_metrics

    enc = encode_rankings(read_preferences(eval_path), tok, MAX_LENGTH)
    lp = dataset_logps(ResponseLogps(policy), enc, tok.pad_token_id, None, 16)
    rp = dataset_logps(ResponseLogps(reference), enc, tok.pad_token_id, None, 16)
    return ranking_metrics([(BETA * (a - b)).tolist() for a, b in zip(lp, rp)], [e.ranks for e in enc])["pairwise_accuracy"]


def worker_rankloop(a, loss: str) -> dict:
    from rankloop.dpo.config import DPOConfig
    from rankloop.dpo.train import train_dpo
    from rankloop.models import load_causal_lm, load_tokenizer

    with tempfile.TemporaryDirectory() as d:
        cfg = DPOConfig(data=a.train, model=a.policy, output=d, epochs=a.epochs, batch_size=a.batch, lr=a.lr,
                        max_length=MAX_LENGTH, loss=loss, beta=BETA, progress=False, log_every=1000,
                        group_by_length=False, kl_prompts=0)
        train_dpo(cfg)
        s = json.loads((Path(d) / "train_summary.json").read_text())
        tok = load_tokenizer(d)
        acc = held_out_accuracy(load_causal_lm(d, tokenizer=tok), load_causal_lm(a.policy, tokenizer=tok), tok,
                                Path(a.eval))
    return {"seconds": s["train_loop_seconds"] + s["reference_seconds"], "reference_seconds": s["reference_seconds"],
            "acc": acc, "steps": s["steps"]}


def worker_trl(a, precompute: bool) -> dict:
    import torch
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from rankloop.io import read_preferences
    from rankloop.models import load_causal_lm, load_tokenizer

    torch.manual_seed(0)
    tok = load_tokenizer(a.policy)
    model = load_causal_lm(a.policy, tokenizer=tok)
    pairs, k = [], 2  # every (better, worse) pair of every ranking: what pairwise trainers are fed
    for ex in read_preferences(Path(a.train)):
        texts, ranks = ex.texts_in_rank_order()
        k = max(k, len(texts))
        pairs += [{"prompt": ex.prompt, "chosen": texts[i], "rejected": texts[j]}
                  for i in range(len(texts)) for j in range(len(texts)) if ranks[i] < ranks[j]]
    per_device = max(1, a.batch * k // 2)  # same sequences per forward pass as rankloop's B × K
    with tempfile.TemporaryDirectory() as d:
        args = DPOConfig(
            output_dir=d, per_device_train_batch_size=per_device, num_train_epochs=a.epochs, learning_rate=a.lr,
            lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, bf16=False, fp16=False,
            beta=BETA, loss_type=["sigmoid"], max_length=MAX_LENGTH, disable_dropout=True, use_cpu=True,
            report_to="none", save_strategy="no", logging_steps=10_000, seed=0, dataloader_num_workers=0,
            precompute_ref_log_probs=precompute, precompute_ref_batch_size=per_device,
        )
        t0 = time.perf_counter()
        trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(pairs), processing_class=tok)
        init_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        trainer.train()
        train_s = time.perf_counter() - t0
        acc = held_out_accuracy(trainer.model, load_causal_lm(a.policy, tokenizer=tok), tok, Path(a.eval))
    return {"seconds": train_s + (init_s if precompute else 0.0), "init_seconds": init_s, "acc": acc,
            "steps": trainer.state.global_step, "pairs": len(pairs)}


def worker_main(a) -> None:
    if os.environ.get("BENCH_THREADS"):
        import torch

        torch.set_num_threads(int(os.environ["BENCH_THREADS"]))
    if a.worker.startswith("rankloop"):
        res = worker_rankloop(a, a.worker.split("-")[1])
    else:
        res = worker_trl(a, precompute=a.worker == "trl-precompute")
    res["rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    Path(a.result).write_text(json.dumps(res))


# ---------------------------------------------------------------- driver


def pairs_per_ranking(path: Path) -> float:
    from rankloop.io import read_preferences

    rows = read_preferences(path)
    return sum(len(e.ranking.pairs()) for e in rows) / len(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small data, 1 epoch, 1 repeat (< 5 minutes on a quiet machine)")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--ks", default="2,4,9")
    p.add_argument("--policies", default="gpt2-20m,stories260K")
    p.add_argument("--sides", default=",".join(SIDES))
    p.add_argument("--output", default=str(ROOT / "bench/results/dpo_vs_trl.json"))
    p.add_argument("--worker", choices=SIDES)
    p.add_argument("--policy")
    p.add_argument("--train")
    p.add_argument("--eval")
    p.add_argument("--epochs", type=float, default=None)
    p.add_argument("--batch", type=int, default=4, help="rankings per rankloop step (TRL: B·K/2 pairs)")
    p.add_argument("--lr", type=float, default=1e-4, help="TRL's learning rate (rankloop's follows the sqrt rule)")
    p.add_argument("--result")
    args = p.parse_args()
    if args.worker:
        return worker_main(args)
    try:
        import trl
    except ImportError:
        sys.exit("TRL is needed for this benchmark only: pip install trl")
    from rankloop.io import write_json, write_rankings
    from rankloop.testing import synthetic_rankings

    quick = args.quick
    repeats = args.repeats or (1 if quick else 3)
    epochs = args.epochs or (1.0 if quick else 2.0)
    # (train, held-out) rankings per K: about the same number of pairs per K.
    sizes = {2: (96, 64), 4: (32, 32), 9: (8, 16)} if quick else {2: (768, 256), 4: (256, 128), 9: (64, 64)}
    ks = [int(k) for k in args.ks.split(",")]
    sides = args.sides.split(",")
    results: dict = {"settings": {"quick": quick, "repeats": repeats, "epochs": epochs, "batch_rankings": args.batch,
                                  "trl_lr": args.lr, "beta": BETA, "max_length": MAX_LENGTH,
                                  "trl_version": trl.__version__, "cpu_threads": os.cpu_count(),
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
        policies = {}
        for name in args.policies.split(","):
            if name == "gpt2-20m":
                policies[name] = build_gpt2_20m(tmp / "gpt2-20m", corpus)
            elif STORIES.exists():
                policies[name] = STORIES
            else:
                print(f"skipping {name}: {STORIES} is absent", flush=True)
        for name, path in policies.items():
            for k in ks:
                cell = f"K={k} {name}"
                train, held = tmp / f"train-k{k}.jsonl", tmp / f"eval-k{k}.jsonl"
                lr_scale = math.sqrt(pairs_per_ranking(train) / (k / 2))  # (B·pairs/ranking) / (B·K/2)
                runs: dict[str, list] = {s: [] for s in sides}
                for r in range(repeats):
                    for side in sides:
                        lr = args.lr * (lr_scale if side.startswith("rankloop") else 1.0)
                        res = run_worker(side, path, train, held, epochs, args.batch, lr, tmp / f"{side}.json")
                        runs[side].append(res)
                        print(f"{cell} {side} run {r + 1}: {res['seconds']:.1f}s acc {res['acc']:.4f} "
                              f"rss {res['rss_mib']:.0f} MiB (lr {lr:.2e})", flush=True)
                med = {s: statistics.median(x["seconds"] for x in v) / epochs for s, v in runs.items()}
                trl_sides = [s for s in sides if s.startswith("trl")]
                best_trl = min(trl_sides, key=lambda s: med[s]) if trl_sides else None
                row = {"train_rankings": sizes[k][0], "held_out_rankings": sizes[k][1], "rankloop_lr": args.lr * lr_scale,
                       "faster_trl": best_trl}
                for s, v in runs.items():
                    row[s] = {"s_per_epoch": round(med[s], 2), "acc": round(statistics.median(x["acc"] for x in v), 4),
                              "rss_mib": round(max(x["rss_mib"] for x in v), 1),
                              "steps_per_epoch": v[0]["steps"] / epochs, "s_all": [round(x["seconds"], 2) for x in v]}
                    if best_trl and s.startswith("rankloop"):
                        row[s]["ratio"] = round(med[s] / med[best_trl], 3)
                results.setdefault(f"K={k}", {})[name] = row
    results["settings"]["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    write_json(args.output, results)
    table(results)
    print(f"wrote {args.output}")


def table(results: dict) -> None:
    head = f"{'K':>3} {'policy':<11} {'side':<15} {'s/epoch':>8} {'ratio':>6} {'acc':>7} {'RSS MiB':>8}"
    print("\n" + head + "\n" + "-" * len(head))
    for kk in sorted((k for k in results if k.startswith("K=")), key=lambda x: int(x[2:])):
        for name, row in results[kk].items():
            for side in SIDES:
                if side in row:
                    r = row[side]
                    ratio = f"{r['ratio']:.3f}" if "ratio" in r else ""
                    print(f"{kk[2:]:>3} {name:<11} {side:<15} {r['s_per_epoch']:>8.2f} {ratio:>6} {r['acc']:>7.4f} "
                          f"{r['rss_mib']:>8.0f}")
    print(f"\nratio: rankloop's seconds per epoch over the faster TRL configuration's; acc: held-out implicit-reward "
          f"pairwise accuracy; load average at start {results['settings']['load_average_at_start']}")


if __name__ == "__main__":
    main()
