"""rankloop PPO against TRL's PPOTrainer (TRL 1.12, ``trl.experimental.ppo``; removed in TRL 1.16).

Same policy, same reward, same shape of work on both sides:
  - models: a GPT-2-style model of about 20M parameters built from a config, and stories260K-hf;
  - reward: VADER compound sentiment of prompt + response (TRL needs it as a reward-model
    ``nn.Module``, so a small wrapper decodes the tokens and scores the text);
  - 64 prompts per iteration, 48 new tokens (no early stop on either side, so the work is equal),
    4 PPO epochs, minibatch 16, temperature 1, same learning rate and clip ranges.

Measured, each side in its own subprocess: seconds per PPO iteration (rollout + update; median over
the timed iterations after one warm-up) and peak RSS; and in the rankloop process the sampler's
generated tokens per second against plain ``model.generate`` on the same batch (median of 3).

Both sides run in the benchmark's own environment, bench/.venv-trl, which has TRL 1.12 and
rankloop (editable) over the same torch and transformers:

    python3 -m venv bench/.venv-trl
    bench/.venv-trl/bin/pip install torch==2.13.0 'trl==1.12.*' vaderSentiment psutil
    bench/.venv-trl/bin/pip install -e .
    python bench/ppo_vs_trl.py --quick        # < 5 minutes; prints a table, writes bench/results/ppo_vs_trl.json

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
VENV_PY = ROOT / "bench" / ".venv-trl" / "bin" / "python"
STORIES = ROOT.parent / "shared" / "models" / "stories260K-hf"
STARTS = ["Once upon a time", "One day", "Tom and his dog", "Lily went to the park", "The little bird",
          "Sam was sad because", "The big bear", "Mia had a red ball", "There was a boy named Ben", "The cat",
          "It was a rainy day", "Anna and her mom", "The old tree", "A little girl", "Max saw a", "The sun"]
BATCH, NEW_TOKENS, EPOCHS, MINIBATCH, LR = 64, 48, 4, 16, 1e-5


def prompts() -> list[str]:
    return [STARTS[i % len(STARTS)] for i in range(BATCH)]


def reward_texts(texts: list[str]) -> list[float]:
    from rankloop.rl.rewards import vader_positive

    return vader_positive(texts, texts)


def rankloop_reward(prompts_: list[str], responses: list[str]) -> list[float]:
    return reward_texts([p + r for p, r in zip(prompts_, responses)])


def peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ---------------------------------------------------------------- children


def child_rankloop(model: str, iterations: int, work: Path) -> dict:
    import torch

    from rankloop.models import load_causal_lm, load_tokenizer
    from rankloop.rl.ppo import PPOConfig, run_ppo
    from rankloop.sampling import generate

    # 1. sampler vs plain generate on the same batch (64 prompts, 48 new tokens, no stop)
    tok = load_tokenizer(model, "left")
    lm = load_causal_lm(model, tokenizer=tok).eval()
    ps = prompts()
    enc = tok(ps, return_tensors="pt", padding=True)
    from transformers import GenerationConfig

    gc = GenerationConfig(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=NEW_TOKENS,
                          pad_token_id=tok.pad_token_id, eos_token_id=None)
    ours, theirs = [], []
    for rep in range(3):
        t = time.perf_counter()
        b = generate(lm, tok, ps, max_new_tokens=NEW_TOKENS, stop_token_ids=[], seed=rep, batch_size=BATCH)
        ours.append(b.num_tokens / (time.perf_counter() - t))
        torch.manual_seed(rep)
        t = time.perf_counter()
        with torch.inference_mode():
            out = lm.generate(**enc, generation_config=gc)
        n = (out.size(1) - enc.input_ids.size(1)) * out.size(0)
        theirs.append(n / (time.perf_counter() - t))
    assert b.num_tokens == BATCH * NEW_TOKENS and n == BATCH * NEW_TOKENS, (b.num_tokens, n)
    del lm

    # 2. PPO iterations
    pfile = work / "prompts.jsonl"
    pfile.write_text("".join(json.dumps({"id": f"p{i}", "text": p}) + "\n" for i, p in enumerate(ps)))
    cfg = PPOConfig(policy=model, prompts=str(pfile), output=str(work / "rankloop"), iterations=iterations,
                    batch_size=BATCH, minibatch_size=MINIBATCH, ppo_epochs=EPOCHS, max_new_tokens=NEW_TOKENS,
                    learning_rate=LR, stop_token_ids=[], kl_coef=0.05, save_every=10_000, progress=False,
                    tensorboard=False)
    run_ppo(cfg, reward_fn=rankloop_reward)
    rows = [json.loads(x) for x in (work / "rankloop" / "metrics.jsonl").read_text().splitlines()]
    return {"iteration_s": [r["time/iteration"] for r in rows], "rss_mib": peak_rss_mib(),
            "sampler_tok_s": statistics.median(ours), "generate_tok_s": statistics.median(theirs),
            "kl_ref": [r["ppo/kl_ref"] for r in rows], "reward": [r["objective/reward"] for r in rows]}


def child_trl(model: str, iterations: int, work: Path) -> dict:
    import torch
    from datasets import Dataset
    from torch import nn
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, TrainerCallback
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    from rankloop.models import load_tokenizer

    tok = load_tokenizer(model, "left")

    class _TextScorer(nn.Module):
        """Decodes the (masked) tokens and scores the text; returns the score at every position."""

        def forward(self, input_ids, attention_mask, **kw):
            texts = [tok.decode(ids[m.bool()].tolist(), skip_special_tokens=True)
                     for ids, m in zip(input_ids, attention_mask)]
            s = torch.tensor(reward_texts(texts), dtype=torch.float32, device=input_ids.device)
            h = s[:, None, None].expand(input_ids.size(0), input_ids.size(1), 1)

            class Out:
                hidden_states = (h,)

            return Out()

    class TextRewardModel(nn.Module):
        """TRL's get_reward calls getattr(model, model.base_model_prefix)(...) then model.score(h)."""

        base_model_prefix = "backbone"

        def __init__(self):
            super().__init__()
            self.backbone = _TextScorer()
            self.score = nn.Identity()
            self._device_anchor = nn.Parameter(torch.zeros(1), requires_grad=False)

    policy = AutoModelForCausalLM.from_pretrained(model)
    value = AutoModelForSequenceClassification.from_pretrained(model, num_labels=1)
    for m in (policy, value):
        m.config.pad_token_id = tok.pad_token_id
    ds = Dataset.from_dict({"input_ids": [tok(p)["input_ids"] for p in prompts()]})
    args = PPOConfig(output_dir=str(work / "trl"), per_device_train_batch_size=BATCH, gradient_accumulation_steps=1,
                     num_mini_batches=BATCH // MINIBATCH, num_ppo_epochs=EPOCHS, response_length=NEW_TOKENS,
                     total_episodes=BATCH * iterations, learning_rate=LR, local_rollout_forward_batch_size=BATCH,
                     num_sample_generations=0, stop_token=None, temperature=1.0, kl_coef=0.05, report_to="none",
                     save_strategy="no", logging_steps=10_000, use_cpu=True, bf16=False, fp16=False,
                     dataloader_num_workers=0, seed=0, lr_scheduler_type="constant")
    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            stamps.append(time.perf_counter())

        def on_step_end(self, *a, **k):
            stamps.append(time.perf_counter())

    trainer = PPOTrainer(args=args, processing_class=tok, model=policy, ref_model=None, reward_model=TextRewardModel(),
                         train_dataset=ds, value_model=value, callbacks=[Clock()])
    trainer.train()
    return {"iteration_s": [b - a for a, b in zip(stamps, stamps[1:])], "rss_mib": peak_rss_mib()}


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


def run_child(side: str, model: str, iterations: int, threads: int, py: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=str(ROOT))
    with tempfile.TemporaryDirectory() as work:
        out = Path(work) / "result.json"
        r = subprocess.run([py, __file__, "--child", side, "--model", model, "--iterations", str(iterations),
                            "--threads", str(threads), "--work", work, "--result", str(out)],
                           env=env, capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"{side} child failed on {model}:\n{r.stderr[-4000:]}")
        return json.loads(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 iterations per side, no warm-up (< 5 minutes on an idle "
                    "4-core laptop)")
    ap.add_argument("--iterations", type=int, default=None, help="timed iterations per side (default 5 after a "
                    "warm-up; quick: 2, no warm-up)")
    ap.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1), help="torch threads per side")
    ap.add_argument("--models", default="gpt2-20m,stories260k")
    ap.add_argument("--python", default=str(VENV_PY), help="the interpreter with TRL 1.12 and rankloop installed")
    ap.add_argument("--output", default=str(ROOT / "bench" / "results" / "ppo_vs_trl.json"))
    ap.add_argument("--note", default="", help="recorded in the JSON (e.g. the machine's load)")
    ap.add_argument("--child", choices=["rankloop", "trl"], help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        fn = child_rankloop if args.child == "rankloop" else child_trl
        res = fn(args.model, args.iterations, Path(args.work))
        Path(args.result).write_text(json.dumps(res))
        return

    if not Path(args.python).exists():
        sys.exit(f"{args.python} not found: create the benchmark environment first (see the docstring)")
    timed = args.iterations or (2 if args.quick else 5)
    warmup = 0 if args.quick else 1  # at these sizes an iteration is seconds long; quick skips the warm-up
    iterations = timed + warmup
    cache = Path(tempfile.mkdtemp(prefix="rankloop-bench-"))
    models: dict[str, str] = {}
    for name in args.models.split(","):
        if name == "gpt2-20m":
            models[name] = str(build_gpt2_20m(cache / "gpt2-20m"))
        elif name == "stories260k":
            if STORIES.exists():
                models[name] = str(STORIES)
            else:
                print(f"skipping stories260k: {STORIES} is absent", flush=True)
        else:
            sys.exit(f"unknown model {name!r}")

    t_start = time.time()
    results: dict = {"settings": {"prompts_per_iteration": BATCH, "new_tokens": NEW_TOKENS, "ppo_epochs": EPOCHS,
                                  "minibatch": MINIBATCH, "timed_iterations": timed, "warmup_iterations": warmup,
                                  "threads_per_side": args.threads, "cpu_count": os.cpu_count(),
                                  "load_average_at_start": os.getloadavg(),
                                  "note": args.note},
                     "models": {}}
    for name, path in models.items():
        print(f"[{name}] rankloop ...", flush=True)
        ours = run_child("rankloop", path, iterations, args.threads, args.python)
        print(f"[{name}] trl ...", flush=True)
        theirs = run_child("trl", path, iterations, args.threads, args.python)
        r_s = statistics.median(ours["iteration_s"][warmup:])
        t_s = statistics.median(theirs["iteration_s"][warmup:])
        results["models"][name] = {
            "rankloop_s": round(r_s, 3), "trl_s": round(t_s, 3), "ratio": round(r_s / t_s, 3),
            "rankloop_rss_mib": round(ours["rss_mib"], 1), "trl_rss_mib": round(theirs["rss_mib"], 1),
            "sampler_tok_s": round(ours["sampler_tok_s"], 1), "generate_tok_s": round(ours["generate_tok_s"], 1),
            "rankloop_iteration_s": [round(x, 3) for x in ours["iteration_s"]],
            "trl_iteration_s": [round(x, 3) for x in theirs["iteration_s"]],
        }
    results["settings"]["load_average_at_end"] = os.getloadavg()
    results["settings"]["wall_s"] = round(time.time() - t_start, 1)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n")

    head = f"{'model':<12} {'rankloop s/it':>13} {'TRL s/it':>9} {'ratio':>6} {'rankloop RSS':>13} {'TRL RSS':>9} " \
           f"{'sampler tok/s':>14} {'generate tok/s':>15}"
    print("\n" + head + "\n" + "-" * len(head))
    for name, m in results["models"].items():
        print(f"{name:<12} {m['rankloop_s']:>13.2f} {m['trl_s']:>9.2f} {m['ratio']:>6.2f} "
              f"{m['rankloop_rss_mib']:>10.0f} MiB {m['trl_rss_mib']:>5.0f} MiB {m['sampler_tok_s']:>14.0f} "
              f"{m['generate_tok_s']:>15.0f}")
    print(f"\n(medians of {timed} iterations after {warmup} warm-up; {args.threads} thread(s) per side; load average "
          f"{results['settings']['load_average_at_start'][0]:.1f} at start) → {args.output}")


if __name__ == "__main__":
    main()
