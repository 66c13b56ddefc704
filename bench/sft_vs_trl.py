"""rankloop's train-sft against TRL's SFTTrainer (TRL 1.16), at TRL's defaults and with its packing.

Same on every side:
  - models: a GPT-2-style model of ~20M parameters built from a config (BPE tokenizer trained on
    the data), and stories260K-hf (../shared/models);
  - demonstrations: prompt/completion rows from rankloop's embedded corpus (``rankloop.corpus``),
    total lengths drawn log-uniformly from 16–512 tokens (so padding matters), the same token ids
    on every side (rankloop's encoding, handed to TRL pre-tokenised with its ``completion_mask``);
    loss on the completion tokens only, normalised per token over the optimizer step;
  - AdamW, linear schedule, no warm-up, clip 1.0, fp32, the same learning rate and epochs;
  - tokens per step: rankloop and TRL-default take B demonstrations per step; TRL-packed takes
    R = ⌊B · mean length / 512⌋ packed rows of B · mean length / R tokens (≥ 512, so no
    demonstration is cut): the same tokens, and so the same number of steps, per epoch.

TRL is run at its defaults except where they would change the arithmetic (``bf16=False``: fp32 on
both sides) or the work (``gradient_checkpointing=False``: rankloop recomputes nothing, and
checkpointing would add a third forward pass's worth of compute to TRL's time); the JSON records
every setting.

Measured, each side in its own subprocess (so peak RSS is that side's alone): seconds per epoch of
the training loop (TRL: ``trainer.train()``; rankloop: its numbered-step loop), trained (completion)
tokens per second, peak RSS (ru_maxrss), final held-out loss (mean nll per completion token,
computed by the same function on every side's trained model), and the achieved model FLOP/s as a
fraction of this machine's fp32 matmul peak, measured in the same run (best of a few square
matmuls at the thread count the workers use). Model FLOPs of one sequence of n tokens:
6·N·n + 6·L·d·n² (N: parameters without the embedding lookups, the output layer counted once;
the second term: causal attention, forward and backward) — the same count on every side, so the
fraction is a speed, not a utilisation of each side's own (padded or recomputed) arithmetic.

    python bench/sft_vs_trl.py --quick   # < 5 minutes: small data, 1 epoch, 1 repeat
    python bench/sft_vs_trl.py           # more data, 2 epochs, 3 repeats

TRL is a benchmark-only dependency (``pip install -e '.[bench-sft]'``). Timings depend on the
machine's load: the JSON records the load average and thread count the run saw.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
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
SIDES = ("rankloop", "trl", "trl_packed")
MAX_LENGTH = 512


# ---------------------------------------------------------------- set-up (parent process)


def build_gpt2_20m(path: Path, corpus: list[str]) -> Path:
    """A GPT-2 causal LM of ~20M parameters from a config, with a BPE tokenizer trained on the data."""
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config

    from rankloop.models import train_tokenizer

    tok = train_tokenizer(corpus, vocab_size=1024)
    cfg = GPT2Config(vocab_size=len(tok), n_embd=512, n_layer=6, n_head=8, n_positions=MAX_LENGTH,
                     pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def demonstrations(n: int, tok, seed: int) -> list[dict]:
    """``n`` prompt/completion rows whose encoded length (prompt + completion + EOS) is drawn
    log-uniformly from 16–512 tokens of ``tok``: a corpus question, then corpus answers end to end,
    cut at the word that reaches the length."""
    from rankloop.corpus import all_questions, format_prompt, generate_response

    rng = random.Random(seed)
    questions = all_questions()
    rows = []
    for _ in range(n):
        target = int(math.exp(rng.uniform(math.log(16), math.log(MAX_LENGTH))))
        topic, q = rng.choice(questions)
        prompt = format_prompt(q)
        budget = max(1, target - len(tok(prompt)["input_ids"]) - 1)  # (- 1: the EOS); at least one word
        words: list[str] = []
        while len(words) < 4 * budget:
            words += generate_response(rng, topic)[0].split()
        lo, hi = 1, len(words)  # the most words whose tokens fit the budget
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if len(tok(" " + " ".join(words[:mid]), add_special_tokens=False)["input_ids"]) <= budget:
                lo = mid
            else:
                hi = mid - 1
        rows.append({"prompt": prompt, "completion": " " + " ".join(words[:lo])})
    return rows


def model_flops(model_dir: Path, lengths: list[int]) -> float:
    """6·N·n + 6·L·d·n² summed over the sequences (see the module docstring)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_config(cfg)
    lookups = sum(m.weight.numel() for name, m in model.named_modules()
                  if name.endswith(("wpe", "embed_positions")) and hasattr(m, "weight"))
    n_params = sum(p.numel() for p in model.parameters()) - lookups  # tied wte counted once, as the output layer
    if not getattr(cfg, "tie_word_embeddings", True):
        n_params -= model.get_input_embeddings().weight.numel()
    layers = getattr(cfg, "n_layer", None) or cfg.num_hidden_layers
    d = getattr(cfg, "n_embd", None) or cfg.hidden_size
    return float(sum(6 * n_params * n + 6 * layers * d * n * n for n in lengths))


def matmul_peak() -> float:
    """This machine's fp32 matmul FLOP/s: the best of a few square matmuls."""
    import torch

    best = 0.0
    for size in (512, 1024, 2048):
        a, b = torch.randn(size, size), torch.randn(size, size)
        a @ b
        reps = max(2, int(2e9 / (2 * size ** 3)))
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = max(best, 2 * size ** 3 * reps / (time.perf_counter() - t))
    return best


def run_worker(side: str, backbone: Path, work: Path, args, out: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", side, "--backbone", str(backbone), "--work", str(work),
           "--epochs", str(args.epochs), "--batch", str(args.batch), "--lr", str(args.lr), "--result", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    if proc.returncode != 0:
        raise RuntimeError(f"{side} worker failed:\n{proc.stderr[-4000:]}")
    return json.loads(out.read_text())


# ---------------------------------------------------------------- workers (one subprocess each)


def held_out_loss(model, tok, work: Path) -> float:
    import torch

    from rankloop.sft.data import encode_rows, read_demonstrations
    from rankloop.sft.train import NextTokenLogits, eval_loss

    enc = encode_rows(read_demonstrations(work / "eval.jsonl"), tok, MAX_LENGTH, "eval.jsonl")
    return eval_loss(NextTokenLogits(model), enc, tok.pad_token_id, 16, None, torch.float32, "cpu")["loss"]


def worker_rankloop(a) -> dict:
    from rankloop.models import load_causal_lm, load_tokenizer
    from rankloop.sft.train import SFTConfig, train_sft

    with tempfile.TemporaryDirectory() as d:
        cfg = SFTConfig(data=str(Path(a.work) / "train.jsonl"), model=a.backbone, output=d, epochs=a.epochs,
                        batch_size=a.batch, lr=a.lr, max_length=MAX_LENGTH, log_every=10_000, progress=False,
                        tensorboard=False)
        train_sft(cfg)
        summary = json.loads((Path(d) / "train_summary.json").read_text())
        tok = load_tokenizer(d)
        loss = held_out_loss(load_causal_lm(d, tokenizer=tok).eval(), tok, Path(a.work))
    return {"seconds": summary["train_loop_seconds"], "loss": loss, "steps": summary["steps"]}


def worker_trl(a, packed: bool) -> dict:
    import torch
    from datasets import Dataset
    from trl import SFTConfig as TRLConfig, SFTTrainer

    from rankloop.models import load_causal_lm, load_tokenizer

    torch.manual_seed(0)
    tok = load_tokenizer(a.backbone)
    model = load_causal_lm(a.backbone, tokenizer=tok)
    rows = json.loads((Path(a.work) / "train_ids.json").read_text())  # rankloop's encoding, token for token
    batch, pack_length = a.batch, MAX_LENGTH
    if packed:  # the same tokens per step: B demonstrations' worth of packed rows, each at least max_length long
        per_step = a.batch * statistics.mean(len(r["input_ids"]) for r in rows)
        batch = max(1, int(per_step // MAX_LENGTH))
        pack_length = max(MAX_LENGTH, round(per_step / batch))
    with tempfile.TemporaryDirectory() as d:
        args = TRLConfig(
            output_dir=d, per_device_train_batch_size=batch, num_train_epochs=a.epochs, learning_rate=a.lr,
            lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, bf16=False, fp16=False,
            gradient_checkpointing=False, max_length=pack_length, packing=packed, completion_only_loss=True,
            use_cpu=True, report_to="none", save_strategy="no", logging_steps=10_000, seed=0,
            dataloader_num_workers=0,
        )
        trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)
        t0 = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - t0
        loss = held_out_loss(trainer.model.eval(), tok, Path(a.work))
    return {"seconds": seconds, "loss": loss, "steps": trainer.state.global_step, "rows_per_step": batch,
            "row_length": pack_length}


def worker_main(a) -> None:
    threads = os.environ.get("BENCH_THREADS")
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    res = worker_rankloop(a) if a.worker == "rankloop" else worker_trl(a, packed=a.worker == "trl_packed")
    res["rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    Path(a.result).write_text(json.dumps(res))


# ---------------------------------------------------------------- driver


def prepare(name: str, tmp: Path, n_train: int, n_eval: int) -> tuple[Path, Path, dict]:
    """The backbone, its demonstrations (train.jsonl, eval.jsonl, and train_ids.json: rankloop's encoding
    for TRL) and their token statistics."""
    from rankloop.io import write_jsonl
    from rankloop.models import load_tokenizer
    from rankloop.sft.data import encode_rows, read_demonstrations

    work = tmp / name
    work.mkdir()
    if name == "gpt2-20m":
        from rankloop.corpus import generate_corpus

        corpus = [e.prompt + e.response for e in generate_corpus(4000, seed=7)]
        backbone = build_gpt2_20m(tmp / "gpt2-20m-model", corpus)
    else:
        if not STORIES.exists():
            sys.exit(f"{STORIES} is absent (../shared/models/stories260K-hf); pass --backbones gpt2-20m")
        backbone = STORIES
    tok = load_tokenizer(backbone)
    write_jsonl(work / "train.jsonl", demonstrations(n_train, tok, seed=1))
    write_jsonl(work / "eval.jsonl", demonstrations(n_eval, tok, seed=2))
    enc = encode_rows(read_demonstrations(work / "train.jsonl"), tok, MAX_LENGTH, "train.jsonl")
    (work / "train_ids.json").write_text(json.dumps(
        [{"input_ids": e.ids, "completion_mask": [int(t) for t in e.trained]} for e in enc]))
    lengths = [len(e.ids) for e in enc]
    stats = {"demonstrations": len(enc), "tokens_per_epoch": sum(lengths),
             "trained_tokens_per_epoch": sum(e.n_targets for e in enc), "length_min": min(lengths),
             "length_median": statistics.median(lengths), "length_max": max(lengths),
             "model_flops_per_epoch": model_flops(backbone, lengths)}
    return backbone, work, stats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small data, 1 epoch, 1 repeat (< 5 minutes)")
    p.add_argument("--repeats", type=int, default=None, help="timing repeats per cell (median reported)")
    p.add_argument("--backbones", default="gpt2-20m,stories260K")
    p.add_argument("--output", default=str(ROOT / "bench/results/sft_vs_trl.json"))
    p.add_argument("--train-demos", type=int)
    p.add_argument("--eval-demos", type=int)
    p.add_argument("--epochs", type=float, default=None)
    p.add_argument("--batch", type=int, default=8, help="demonstrations per optimizer step")
    p.add_argument("--lr", type=float, default=5e-4)
    # worker-only arguments
    p.add_argument("--worker", choices=SIDES)
    p.add_argument("--backbone")
    p.add_argument("--work")
    p.add_argument("--result")
    args = p.parse_args()
    if args.worker:
        return worker_main(args)
    try:
        import trl
    except ImportError:
        sys.exit("TRL is needed for this benchmark only: pip install -e '.[bench-sft]'")
    from rankloop.io import write_json

    quick = args.quick
    repeats = args.repeats or (1 if quick else 3)
    args.epochs = args.epochs or (1.0 if quick else 2.0)
    n_train = args.train_demos or (96 if quick else 512)
    n_eval = args.eval_demos or (32 if quick else 128)
    peak = matmul_peak()
    results: dict = {"settings": {
        "quick": quick, "repeats": repeats, "epochs": args.epochs, "batch_demonstrations": args.batch, "lr": args.lr,
        "max_length": MAX_LENGTH, "train_demonstrations": n_train, "held_out_demonstrations": n_eval,
        "trl_version": trl.__version__, "trl_settings": "defaults, but bf16=False, gradient_checkpointing=False, "
        "completion_only_loss=True; packed: packing=True (bfd), R = floor(B * mean length / 512) rows per step of "
        "B * mean length / R tokens each (>= 512, so no demonstration is cut)",
        "cpu_threads": os.cpu_count(), "load_average_at_start": round(os.getloadavg()[0], 2),
        "fp32_matmul_peak_gflops": round(peak / 1e9, 1)}}
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for name in args.backbones.split(","):
            backbone, work, stats = prepare(name, tmp, n_train, n_eval)
            runs: dict[str, list[dict]] = {s: [] for s in SIDES}
            for r in range(repeats):
                for side in SIDES:
                    res = run_worker(side, backbone, work, args, tmp / f"{side}.json")
                    runs[side].append(res)
                    print(f"{name} {side} run {r + 1}: {res['seconds']:.1f}s loss {res['loss']:.4f} "
                          f"rss {res['rss_mib']:.0f} MiB", flush=True)
            cell = dict(stats)
            for side, v in runs.items():
                s_epoch = statistics.median(x["seconds"] for x in v) / args.epochs
                cell[side] = {
                    "s_per_epoch": round(s_epoch, 2),
                    "trained_tokens_per_s": round(stats["trained_tokens_per_epoch"] / s_epoch, 1),
                    "rss_mib": round(max(x["rss_mib"] for x in v), 1),
                    "held_out_loss": round(statistics.median(x["loss"] for x in v), 4),
                    "model_flops_fraction_of_peak": round(stats["model_flops_per_epoch"] / s_epoch / peak, 4),
                    "steps_per_epoch": v[0]["steps"] / args.epochs,
                    "s_all": [round(x["seconds"], 2) for x in v],
                }
            faster = min(cell["trl"]["s_per_epoch"], cell["trl_packed"]["s_per_epoch"])
            best_trl = "trl" if cell["trl"]["s_per_epoch"] <= cell["trl_packed"]["s_per_epoch"] else "trl_packed"
            cell["ratio_vs_faster_trl"] = round(cell["rankloop"]["s_per_epoch"] / faster, 3)
            cell["loss_vs_faster_trl"] = round(cell["rankloop"]["held_out_loss"] / cell[best_trl]["held_out_loss"] - 1, 4)
            cell["rss_vs_faster_trl"] = round(cell["rankloop"]["rss_mib"] / cell[best_trl]["rss_mib"], 3)
            cell["faster_trl"] = best_trl
            results[name] = cell
    results["settings"]["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    write_json(args.output, results)
    table(results)
    print(f"wrote {args.output}")


def table(results: dict) -> None:
    head = (f"{'backbone':<12} {'side':<11} {'s/epoch':>8} {'trained tok/s':>13} {'RSS MiB':>8} "
            f"{'held-out loss':>13} {'FLOP/s of peak':>14}")
    print("\n" + head + "\n" + "-" * len(head))
    for name, cell in results.items():
        if name == "settings":
            continue
        for side in SIDES:
            r = cell[side]
            print(f"{name:<12} {side:<11} {r['s_per_epoch']:>8.2f} {r['trained_tokens_per_s']:>13.0f} "
                  f"{r['rss_mib']:>8.0f} {r['held_out_loss']:>13.4f} {r['model_flops_fraction_of_peak']:>14.3f}")
        print(f"{'':<12} rankloop / {cell['faster_trl']}: time {cell['ratio_vs_faster_trl']:.3f}x, "
              f"loss {cell['loss_vs_faster_trl']:+.2%}, RSS {cell['rss_vs_faster_trl']:.3f}x "
              f"(target: <= 0.7x, within 1%, <= 1x)")
    s = results["settings"]
    print(f"\nseconds per epoch (median of {s['repeats']}); fp32 matmul peak {s['fp32_matmul_peak_gflops']} GFLOP/s; "
          f"load average at start {s['load_average_at_start']}")


if __name__ == "__main__":
    main()
