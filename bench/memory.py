"""Peak memory (RSS, CPU) of every trainer against sequence length: plain, the chunked LM head
(``logprob_chunk``), gradient checkpointing, and both.

The model is a GPT-2-style one built from a config, with a vocabulary large against its width
(V = 8192, d = 64, 2 layers), so the (tokens, V) logits are what grows with the length — the
situation the chunked head is for (a 0.5B Qwen2 has V = 151,936 against d = 896). Each
(trainer, length, setting) runs in its own subprocess: ``peak`` is its ``ru_maxrss``, ``base``
its RSS just before the trainer is called (imports, data and model files ready), and
``train = peak − base`` the training's own high-water mark. Runs are a couple of optimizer steps
(PPO / GRPO: one iteration of sampling ``length`` tokens and one update).

    python bench/memory.py --quick   # lengths 128 and 512 (~10 minutes on 2 busy cores)
    python bench/memory.py           # lengths 128, 512, 1024, 2048

Writes a table to stdout and ``bench/results/memory.json`` (with the load average seen: RSS does
not depend on the load, the seconds do, and they are only there to show what each setting costs).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAINERS = ["train-sft", "train-dpo", "ppo", "grpo", "train-rm"]
SETTINGS = {"plain": {}, "chunked": {"logprob_chunk": 128}, "checkpointing": {"gradient_checkpointing": True},
            "both": {"logprob_chunk": 128, "gradient_checkpointing": True}}
VOCAB, HIDDEN, LAYERS = 8192, 64, 2


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def build(work: Path, max_len: int) -> None:
    """The causal LM and the reward model (same backbone config), with the tests' small BPE tokenizer
    (the model's vocabulary is larger than the tokenizer's: the head's width is what is measured)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from rankloop.models import tiny_config
    from rankloop.testing import tiny_tokenizer

    tok = tiny_tokenizer()
    for name, cls in (("lm", AutoModelForCausalLM), ("rm", AutoModelForSequenceClassification)):
        cfg = tiny_config("gpt2", vocab_size=VOCAB, hidden=HIDDEN, layers=LAYERS, max_positions=max_len + 64,
                          pad_token_id=tok.pad_token_id)
        cfg.num_labels = 1
        torch.manual_seed(0)
        cls.from_config(cfg).save_pretrained(work / name)
        tok.save_pretrained(work / name)


def text_of(tok, n_tokens: int, seed: int) -> str:
    """Words from the embedded corpus until the text is ``n_tokens`` tokens (BOS included)."""
    import random

    from rankloop.corpus import NEGATIVE, POSITIVE

    words = sorted(POSITIVE | NEGATIVE) + ["the", "cat", "sat", "on", "mat", "and", "a", "dog", "ran"]
    rng = random.Random(seed)
    out: list[str] = []
    while True:
        nxt = out + [rng.choice(words)]
        if len(tok(" ".join(nxt)).input_ids) > n_tokens:
            return " ".join(out)
        out = nxt


def worker(trainer: str, length: int, setting: str, work: Path) -> dict:
    from rankloop.models import load_tokenizer

    lm, rm = Path(work / "lm"), Path(work / "rm")
    tok = load_tokenizer(lm)
    out = work / f"out-{trainer}-{length}-{setting}"
    extra = SETTINGS[setting]
    common = dict(output=str(out), progress=False, tensorboard=False, seed=0)
    if trainer in ("train-sft", "train-dpo", "train-rm"):
        sup = dict(common, lr=1e-3, batch_size=4, max_steps=2, log_every=1, max_length=length + 8)
        if trainer == "train-sft":
            from rankloop.sft.config import SFTConfig
            from rankloop.sft.train import train_sft as run

            data = work / f"sft-{length}.jsonl"
            data.write_text("".join(json.dumps({"prompt": "tell me:", "completion": " " + text_of(tok, length - 4, i)})
                                    + "\n" for i in range(8)))
            cfg = SFTConfig(data=str(data), model=str(lm), **sup, **extra)
        else:
            from rankloop.io import write_rankings
            from rankloop.records import CandidateText, RankedExample, Ranking

            data = work / f"rank-{length}.jsonl"
            write_rankings(data, [RankedExample(
                prompt_id=f"p{i}", prompt="tell me:",
                candidates=[CandidateText(id=f"c{i}-{j}", text=text_of(tok, length // 2 - 4, 2 * i + j)) for j in (0, 1)],
                ranking=Ranking(prompt_id=f"p{i}", order=[[f"c{i}-0"], [f"c{i}-1"]], labeler="bench"))
                for i in range(8)])
            if trainer == "train-dpo":
                from rankloop.dpo.config import DPOConfig
                from rankloop.dpo.train import train_dpo as run

                cfg = DPOConfig(data=str(data), model=str(lm), kl_prompts=0, **sup, **extra)
            else:
                from rankloop.reward.config import RewardTrainConfig
                from rankloop.reward.train import train_reward_model as run

                extra = {k: v for k, v in extra.items() if k != "logprob_chunk"}
                cfg = RewardTrainConfig(data=str(data), model=str(rm), normalise_on="none", **sup, **extra)
    else:
        prompts = work / "prompts.jsonl"
        prompts.write_text("".join(json.dumps({"id": f"p{i}", "text": t}) + "\n"
                                   for i, t in enumerate(["tell me:", "a story:", "once", "the cat"])))
        rl = dict(common, policy=str(lm), prompts=str(prompts), reward="rankloop.rl.rewards:length", iterations=1,
                  max_new_tokens=length, minibatch_size=4, learning_rate=1e-4, stop_token_ids=[VOCAB - 1], **extra)
        if trainer == "ppo":
            from rankloop.rl.config import PPOConfig
            from rankloop.rl.ppo import run_ppo as run

            cfg = PPOConfig(batch_size=4, ppo_epochs=1, **rl)
        else:
            from rankloop.rl.config import GRPOConfig
            from rankloop.rl.grpo import run_grpo as run

            cfg = GRPOConfig(batch_size=2, samples_per_prompt=2, epochs=1, **rl)
    base = rss_mib()
    t0 = time.perf_counter()
    run(cfg)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"trainer": trainer, "length": length, "setting": setting, "base_mib": round(base, 1),
            "peak_mib": round(peak, 1), "train_mib": round(peak - base, 1), "seconds": round(seconds, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="lengths 128 and 512 only")
    ap.add_argument("--lengths", type=int, nargs="*", help="override the sequence lengths")
    ap.add_argument("--trainers", nargs="*", default=TRAINERS, choices=TRAINERS)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "memory.json"))
    ap.add_argument("--worker", nargs=4, metavar=("TRAINER", "LENGTH", "SETTING", "WORK"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        trainer, length, setting, work = args.worker
        print("RESULT " + json.dumps(worker(trainer, int(length), setting, Path(work))), flush=True)
        return

    lengths = args.lengths or ([128, 512] if args.quick else [128, 512, 1024, 2048])
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        build(work, max(lengths))
        for trainer in args.trainers:
            for length in lengths:
                for setting in SETTINGS:
                    if trainer == "train-rm" and "logprob_chunk" in SETTINGS[setting]:
                        continue  # a scalar head: there is no vocabulary to chunk
                    proc = subprocess.run([sys.executable, __file__, "--worker", trainer, str(length), setting, tmp],
                                          capture_output=True, text=True, env=env, cwd=ROOT)
                    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
                    if line is None:
                        row = {"trainer": trainer, "length": length, "setting": setting,
                               "error": proc.stderr.strip().splitlines()[-1:] or [f"exit {proc.returncode}"]}
                    else:
                        row = json.loads(line[7:])
                    results.append(row)
                    print(format_row(row), flush=True)
    doc = {"model": {"arch": "gpt2", "vocab": VOCAB, "hidden": HIDDEN, "layers": LAYERS},
           "settings": SETTINGS, "lengths": lengths, "load_average": os.getloadavg(),
           "threads": env["OMP_NUM_THREADS"], "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nload average {os.getloadavg()}; wrote {args.out}")


def format_row(r: dict) -> str:
    if "error" in r:
        return f"{r['trainer']:10s} {r['length']:6d} {r['setting']:14s} ERROR {r['error']}"
    return (f"{r['trainer']:10s} {r['length']:6d} {r['setting']:14s} peak {r['peak_mib']:8.1f} MiB  "
            f"train {r['train_mib']:8.1f} MiB  {r['seconds']:7.2f} s")


if __name__ == "__main__":
    main()
