"""rankloop RLOO and GRPO against TRL 1.16's ``RLOOTrainer`` and ``GRPOTrainer``.

Same policy, same prompts, same reward, same shape of work on both sides:
  - models: a GPT-2-style model of about 20M parameters built from a config, and stories260K-hf;
  - reward: VADER compound sentiment of prompt + response (a plain function on both sides);
  - 16 prompts per iteration, K = 4 and K = 8 responses each, 48 new tokens (no early stop on
    either side — TRL's EOS is held off with ``min_new_tokens`` — so the work is equal), 2 epochs
    over each iteration's responses (TRL's ``num_iterations``) in minibatches of 16 responses,
    temperature 1, the same learning rate, clip range and KL coefficient (RLOO: β = 0.05 in the
    reward; GRPO: β = 0.04 in the loss, so both sides run the reference), token-level loss
    (TRL's ``loss_type="dapo"``, rankloop's ``loss_aggregation="token"``);
  - fp32 on both sides (TRL's bf16 default is about 10× slower on a CPU): ``bf16=False``.

One iteration = one generation of 16·K responses and its 2 × 16·K/16 optimiser steps. Measured,
each side in its own subprocess: seconds per iteration (median over the timed iterations after
one warm-up), generated tokens per second of iteration (16·K·48 / seconds), peak RSS.

Both sides run in an environment with TRL 1.16 and rankloop over the same torch and transformers
(the project's own venv has them):

    python bench/rl_vs_trl.py --quick      # the issue's target: under 5 minutes; table + bench/results/rl_vs_trl.json

Timings depend on the machine's load: each number is a median, and the JSON records the load
average and thread count the run saw.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
STORIES = Path(os.environ.get("RANKLOOP_SHARED", ROOT.parent / "shared")) / "models" / "stories260K-hf"
STARTS = ["Once upon a time", "One day", "Tom and his dog", "Lily went to the park", "The little bird",
          "Sam was sad because", "The big bear", "Mia had a red ball", "There was a boy named Ben", "The cat",
          "It was a rainy day", "Anna and her mom", "The old tree", "A little girl", "Max saw a", "The sun"]
PROMPTS, NEW_TOKENS, EPOCHS, MINIBATCH, LR = 16, 48, 2, 16, 1e-5
BETA = {"rloo": 0.05, "grpo": 0.04}


def reward_texts(texts: list[str]) -> list[float]:
    from rankloop.rl.rewards import vader_positive

    return vader_positive(texts, texts)


def rankloop_reward(prompts_: list[str], responses: list[str]) -> list[float]:
    return reward_texts([p + r for p, r in zip(prompts_, responses)])


def trl_reward(prompts, completions, **kw) -> list[float]:
    return reward_texts([p + c for p, c in zip(prompts, completions)])


def peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ---------------------------------------------------------------- children


def child_rankloop(algo: str, model: str, k: int, iterations: int, work: Path) -> dict:
    from rankloop.rl.config import GRPOConfig, RLOOConfig
    from rankloop.rl.grpo import run_grpo
    from rankloop.rl.rloo import run_rloo

    pfile = work / "prompts.jsonl"
    pfile.write_text("".join(json.dumps({"id": f"p{i}", "text": p}) + "\n" for i, p in enumerate(STARTS[:PROMPTS])))
    cls, run = (RLOOConfig, run_rloo) if algo == "rloo" else (GRPOConfig, run_grpo)
    cfg = cls(policy=model, prompts=str(pfile), output=str(work / "rankloop"), iterations=iterations,
              batch_size=PROMPTS, samples_per_prompt=k, minibatch_size=MINIBATCH, epochs=EPOCHS,
              max_new_tokens=NEW_TOKENS, learning_rate=LR, stop_token_ids=[], kl_coef=BETA[algo],
              loss_aggregation="token", generation_batch_size=PROMPTS * k, forward_batch_size=PROMPTS * k,
              save_every=10_000, progress=False, tensorboard=False)
    run(cfg, reward_fn=rankloop_reward)
    rows = [json.loads(x) for x in (work / "rankloop" / "metrics.jsonl").read_text().splitlines()]
    return {"iteration_s": [r["time/iteration"] for r in rows], "rollout_s": [r["time/rollout"] for r in rows],
            "rss_mib": peak_rss_mib(), "length": [r["response/length"] for r in rows]}


def child_trl(algo: str, model: str, k: int, iterations: int, work: Path) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback

    from rankloop.models import load_tokenizer

    if algo == "rloo":
        from trl import RLOOConfig as Config, RLOOTrainer as Trainer
        extra = {"beta": BETA["rloo"]}
    else:
        from trl import GRPOConfig as Config, GRPOTrainer as Trainer
        extra = {"beta": BETA["grpo"], "loss_type": "dapo"}
    tok = load_tokenizer(model, "left")
    policy = AutoModelForCausalLM.from_pretrained(model)
    policy.config.pad_token_id = tok.pad_token_id
    ds = Dataset.from_dict({"prompt": STARTS[:PROMPTS] * 4})
    rows = PROMPTS * k
    steps_per_generation = rows // MINIBATCH
    args = Config(output_dir=str(work / "trl"), per_device_train_batch_size=MINIBATCH, gradient_accumulation_steps=1,
                  num_generations=k, steps_per_generation=steps_per_generation,  # → 16·K responses a generation
                  num_iterations=EPOCHS, max_completion_length=NEW_TOKENS, temperature=1.0, top_k=0, top_p=1.0,
                  generation_kwargs={"min_new_tokens": NEW_TOKENS}, learning_rate=LR, epsilon=0.2,
                  max_steps=iterations * steps_per_generation * EPOCHS, report_to="none", save_strategy="no",
                  logging_steps=10_000, use_cpu=True, bf16=False, fp16=False, dataloader_num_workers=0, seed=0,
                  lr_scheduler_type="constant", warmup_steps=0, **extra)
    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **kw):
            stamps.append(time.perf_counter())

        def on_step_end(self, *a, **kw):
            stamps.append(time.perf_counter())

    trainer = Trainer(model=policy, reward_funcs=trl_reward, args=args, train_dataset=ds, processing_class=tok,
                      callbacks=[Clock()])
    trainer.train()
    per_it = steps_per_generation * EPOCHS  # optimiser steps per generation
    ends = stamps[::per_it]
    return {"iteration_s": [b - a for a, b in zip(ends, ends[1:])], "rss_mib": peak_rss_mib()}


# ---------------------------------------------------------------- parent


def build_gpt2_20m(path: Path) -> Path:
    from rankloop.models import count_parameters
    from rankloop.testing import build_tiny

    if not (path / "model.safetensors").exists():
        build_tiny(path, "gpt2", "causal", hidden=512, layers=6, heads=8, max_positions=256)
    from transformers import AutoModelForCausalLM

    n = count_parameters(AutoModelForCausalLM.from_pretrained(str(path)))[1]
    print(f"gpt2-20m: {n / 1e6:.1f}M parameters", flush=True)
    return path


def run_child(side: str, algo: str, model: str, k: int, iterations: int, threads: int, py: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=str(ROOT))
    with tempfile.TemporaryDirectory() as work:
        out = Path(work) / "result.json"
        r = subprocess.run([py, __file__, "--child", side, "--algo", algo, "--model", model, "-k", str(k),
                            "--iterations", str(iterations), "--threads", str(threads), "--work", work,
                            "--result", str(out)], env=env, capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"{side} {algo} child failed on {model}:\n{r.stderr[-4000:]}")
        return json.loads(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="stories260k only, K = 4 and 8, 2 iterations per side, no "
                    "warm-up (target: under 5 minutes on an idle machine)")
    ap.add_argument("--iterations", type=int, default=None, help="timed iterations per side (default 3 after a "
                    "warm-up; quick: 2, no warm-up)")
    ap.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1), help="torch threads per side")
    ap.add_argument("--models", default=None, help="comma-separated: gpt2-20m, stories260k (default both; quick: "
                    "stories260k)")
    ap.add_argument("--algos", default="rloo,grpo")
    ap.add_argument("--ks", default="4,8")
    ap.add_argument("--python", default=sys.executable, help="the interpreter with TRL 1.16 and rankloop")
    ap.add_argument("--output", default=str(ROOT / "bench" / "results" / "rl_vs_trl.json"))
    ap.add_argument("--note", default="", help="recorded in the JSON (e.g. the machine's load)")
    ap.add_argument("--child", choices=["rankloop", "trl"], help=argparse.SUPPRESS)
    ap.add_argument("--algo", help=argparse.SUPPRESS)
    ap.add_argument("-k", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        fn = child_rankloop if args.child == "rankloop" else child_trl
        res = fn(args.algo, args.model, args.k, args.iterations, Path(args.work))
        Path(args.result).write_text(json.dumps(res))
        return

    timed = args.iterations or (2 if args.quick else 3)
    warmup = 0 if args.quick else 1
    iterations = timed + warmup
    cache = Path(tempfile.mkdtemp(prefix="rankloop-bench-"))
    models: dict[str, str] = {}
    for name in (args.models or ("stories260k" if args.quick else "gpt2-20m,stories260k")).split(","):
        if name == "gpt2-20m":
            models[name] = str(build_gpt2_20m(cache / "gpt2-20m"))
        elif name == "stories260k":
            if STORIES.exists():
                models[name] = str(STORIES)
            else:
                print(f"skipping stories260k: {STORIES} is absent", flush=True)
        else:
            sys.exit(f"unknown model {name!r}")
    import trl

    t_start = time.time()
    results: dict = {"settings": {"prompts_per_iteration": PROMPTS, "new_tokens": NEW_TOKENS, "epochs": EPOCHS,
                                  "minibatch": MINIBATCH, "dtype": "float32", "trl": trl.__version__,
                                  "timed_iterations": timed, "warmup_iterations": warmup,
                                  "threads_per_side": args.threads, "cpu_count": os.cpu_count(),
                                  "load_average_at_start": os.getloadavg(), "note": args.note},
                     "runs": []}
    for name, path in models.items():
        for algo in args.algos.split(","):
            for k in map(int, args.ks.split(",")):
                print(f"[{name} {algo} K={k}] rankloop ...", flush=True)
                ours = run_child("rankloop", algo, path, k, iterations, args.threads, args.python)
                print(f"[{name} {algo} K={k}] trl ...", flush=True)
                theirs = run_child("trl", algo, path, k, iterations, args.threads, args.python)
                r_s = statistics.median(ours["iteration_s"][warmup:])
                t_s = statistics.median(theirs["iteration_s"][warmup:])
                tokens = PROMPTS * k * NEW_TOKENS
                results["runs"].append({
                    "model": name, "algo": algo, "k": k, "rankloop_s": round(r_s, 3), "trl_s": round(t_s, 3),
                    "ratio": round(r_s / t_s, 3), "rankloop_tok_s": round(tokens / r_s, 1),
                    "trl_tok_s": round(tokens / t_s, 1),
                    "rankloop_sampler_tok_s": round(tokens / statistics.median(ours["rollout_s"][warmup:]), 1),
                    "rankloop_rss_mib": round(ours["rss_mib"], 1), "trl_rss_mib": round(theirs["rss_mib"], 1),
                    "rankloop_iteration_s": [round(x, 3) for x in ours["iteration_s"]],
                    "trl_iteration_s": [round(x, 3) for x in theirs["iteration_s"]],
                })
    results["settings"]["load_average_at_end"] = os.getloadavg()
    results["settings"]["wall_s"] = round(time.time() - t_start, 1)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n")

    head = f"{'model':<12} {'algo':<5} {'K':>2} {'rankloop s/it':>13} {'TRL s/it':>9} {'ratio':>6} " \
           f"{'rankloop tok/s':>15} {'TRL tok/s':>10} {'rankloop RSS':>13} {'TRL RSS':>9}"
    print("\n" + head + "\n" + "-" * len(head))
    for m in results["runs"]:
        print(f"{m['model']:<12} {m['algo']:<5} {m['k']:>2} {m['rankloop_s']:>13.2f} {m['trl_s']:>9.2f} "
              f"{m['ratio']:>6.2f} {m['rankloop_tok_s']:>15.0f} {m['trl_tok_s']:>10.0f} "
              f"{m['rankloop_rss_mib']:>9.0f} MiB {m['trl_rss_mib']:>5.0f} MiB")
    print(f"\n(fp32; medians of {timed} iterations after {warmup} warm-up; {args.threads} thread(s) per side; load "
          f"average {results['settings']['load_average_at_start'][0]:.1f} at start) → {args.output}")


if __name__ == "__main__":
    main()
