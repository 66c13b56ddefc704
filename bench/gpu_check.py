"""The GPU check (issue 16, item 5): rankloop's trainers — and TRL 1.16's where it has one — for a few
steps each on a Qwen2-style ~0.5B model built from its config (no hub), bf16, prompt 256 / response
256, on one GPU. Writes ``bench/results/gpu_check.json``: per run tokens/s, the step time (split into
generation / forward / update where the trainer logs the split), peak GPU memory
(``torch.cuda.max_memory_allocated``) and achieved model FLOP/s as a fraction of the chip's bf16
matmul peak, measured in the same run (a large bf16 ``torch.mm``).

Model FLOPs (stated in the JSON, the usual dense-transformer count, Kaplan et al. 2020 / PaLM
appendix B): a trained token costs 6·N + 12·L·d·S FLOPs (forward + backward; N non-embedding-free
parameter count, L layers, d width, S sequence length), a forward-only token 2·N + 4·L·d·S, a decoded
token 2·N + 4·L·d·(its position). The reward of the RL runs is a rule (response length), so PPO and
GRPO here train policy + value (PPO) with a frozen reference: no reward model.

``--cpu-smoke``: tiny sizes, float32, CPU — the same code end to end (``tests/test_gpu_check.py``).

    python bench/gpu_check.py                 # on the GPU (bench/gpu_check.sh installs what is missing)
    python bench/gpu_check.py --cpu-smoke --out /tmp/smoke.json
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@dataclass
class Sizes:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    prompt: int
    response: int
    steps: int  # optimiser steps (supervised) / iterations (RL)
    batch: int  # rankings / demonstrations per step; prompts per RL iteration
    group: int  # GRPO responses per prompt
    dtype: str
    device: str


# Qwen2.5-0.5B's shape (hidden 896, 24 layers, 14 heads / 2 KV heads, MLP 4864, vocab 151936, tied
# embeddings): 494M parameters.
GPU = Sizes(hidden=896, layers=24, heads=14, kv_heads=2, intermediate=4864, vocab=151936, prompt=256, response=256,
            steps=6, batch=8, group=4, dtype="bfloat16", device="cuda")
SMOKE = Sizes(hidden=32, layers=2, heads=2, kv_heads=1, intermediate=64, vocab=512, prompt=24, response=16, steps=2,
              batch=4, group=2, dtype="float32", device="cpu")


# ---------------------------------------------------------------- model, tokenizer, data


def build_model(s: Sizes, out: Path) -> tuple[Path, int]:
    """A randomly initialised Qwen2 causal LM of shape ``s`` with rankloop's tiny BPE tokenizer (the
    model's vocabulary is larger than the tokenizer's: the extra rows cost what they cost a real
    0.5B model, and sampled ids beyond the tokenizer decode to nothing). Saved in ``s.dtype``."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    from rankloop.testing import tiny_tokenizer

    tok = tiny_tokenizer()
    tok.eos_token = tok.eos_token or tok.pad_token
    cfg = Qwen2Config(hidden_size=s.hidden, num_hidden_layers=s.layers, num_attention_heads=s.heads,
                      num_key_value_heads=s.kv_heads, intermediate_size=s.intermediate, vocab_size=s.vocab,
                      max_position_embeddings=2048, tie_word_embeddings=True, pad_token_id=tok.pad_token_id,
                      eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg)
    n = sum(p.numel() for p in model.parameters())
    model.to(getattr(torch, s.dtype)).save_pretrained(out)
    tok.save_pretrained(out)
    del model
    return out, n


def single_token_words(tok) -> list[str]:
    """Words that encode to exactly one token after a space: a text of n of them is n tokens."""
    words = []
    for t in range(len(tok)):
        w = tok.decode([t])
        if w.startswith(" ") and w[1:].isalpha() and tok(w, add_special_tokens=False)["input_ids"] == [t]:
            words.append(w[1:])
    if len(words) < 8:
        raise RuntimeError(f"the tokenizer has only {len(words)} single-token words")
    return words


def text(rng: random.Random, words: list[str], n: int) -> str:
    return " " + " ".join(rng.choice(words) for _ in range(n))


def write_data(d: Path, tok, s: Sizes) -> dict[str, Path]:
    """SFT demonstrations (prompt/completion), K=4 rankings (train-rm) and K=2 (DPO), RL prompts, all
    of ``s.prompt`` prompt tokens and ``s.response`` response tokens."""
    from rankloop.io import write_rankings
    from rankloop.records import CandidateText, RankedExample, Ranking

    rng = random.Random(0)
    words = single_token_words(tok)
    n = s.batch * (s.steps + 2)
    P, R = s.prompt - 1, s.response - 1  # room for BOS/EOS
    sft = d / "sft.jsonl"
    sft.write_text("".join(json.dumps({"prompt": text(rng, words, P), "completion": text(rng, words, R)}) + "\n"
                           for _ in range(n)))

    def rankings(k: int):
        for i in range(n):
            ids = [f"c{j}" for j in range(k)]
            yield RankedExample(prompt_id=f"p{i}", prompt=text(rng, words, P),
                                candidates=[CandidateText(id=c, text=text(rng, words, R)) for c in ids],
                                ranking=Ranking(prompt_id=f"p{i}", order=[[c] for c in ids], labeler="gpu_check"))
    out = {}
    for name, k in (("rm", 4), ("dpo", 2)):
        examples = list(rankings(k))
        write_rankings(d / f"rank{k}.jsonl", examples)
        out[name] = d / f"rank{k}.jsonl"
        # The same preferences as TRL's pairs: every (better, worse) pair of a ranking.
        pairs = [{"prompt": ex.prompt, "chosen": ex.candidates[i].text, "rejected": ex.candidates[j].text}
                 for ex in examples for i in range(k) for j in range(i + 1, k)]
        out[f"{name}_pairs"] = d / f"pairs{k}.jsonl"
        out[f"{name}_pairs"].write_text("".join(json.dumps(r) + "\n" for r in pairs))
    prompts = d / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "prompt": text(rng, words, P)}) + "\n" for i in range(n)))
    return {"sft": sft, "prompts": prompts, **out}


# ---------------------------------------------------------------- measurement


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device: str, dtype: str) -> float:
    """Achieved FLOP/s of a large square matmul in ``dtype`` (the chip's practical matmul peak)."""
    n = 8192 if device == "cuda" else 256
    dt = getattr(torch, dtype)
    a, b = torch.randn(n, n, device=device, dtype=dt), torch.randn(n, n, device=device, dtype=dt)
    for _ in range(3):
        a @ b
    sync(device)
    reps = 50 if device == "cuda" else 5
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - t)


class Flops:
    """Dense-transformer FLOPs per token (see the module docstring)."""

    def __init__(self, n_params: int, s: Sizes):
        self.N, self.L, self.d = n_params, s.layers, s.hidden

    def train(self, tokens: int, seq: int) -> float:
        return tokens * (6 * self.N + 12 * self.L * self.d * seq)

    def forward(self, tokens: int, seq: int) -> float:
        return tokens * (2 * self.N + 4 * self.L * self.d * seq)

    def decode(self, rows: int, prompt: int, new: int) -> float:
        return rows * sum(2 * self.N + 4 * self.L * self.d * (prompt + t) for t in range(new))


def rows_of(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]


def steady(values: list[float]) -> float:
    """Median over the steps after the first (which pays for compilation, allocator warm-up)."""
    vals = values[1:] if len(values) > 1 else values
    return statistics.median(vals)


def measured(fn, device: str) -> tuple[float, float | None]:
    """(wall seconds, peak GPU memory in GiB) of ``fn()``."""
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    wall = time.perf_counter() - t
    peak = torch.cuda.max_memory_allocated() / 2 ** 30 if device == "cuda" else None
    return wall, peak


def result(name: str, *, step_s: float, tokens_per_step: int, flops_per_step: float, peak: float, wall: float,
           split: dict | None, settings: dict, peak_flops: float) -> dict:
    achieved = flops_per_step / step_s
    return {"name": name, "step_seconds": round(step_s, 4), "tokens_per_step": tokens_per_step,
            "tokens_per_s": round(tokens_per_step / step_s, 1), "step_split_seconds": split,
            "model_flops_per_step": flops_per_step, "achieved_flops_per_s": achieved,
            "fraction_of_matmul_peak": round(achieved / peak_flops, 4), "peak_gpu_memory_gib": peak,
            "wall_seconds_including_setup": round(wall, 2), "settings": settings}


# ---------------------------------------------------------------- rankloop's trainers


def common_supervised(s: Sizes, out: Path) -> dict:
    return {"output": str(out), "max_steps": s.steps, "batch_size": s.batch, "log_every": 1, "progress": False,
            "tensorboard": False, "dtype": s.dtype, "gradient_checkpointing": s.device == "cuda",
            "max_length": s.prompt + s.response + 2}


def run_rankloop_rm(model: Path, data: dict, s: Sizes, work: Path, fl: Flops, peak_flops: float) -> dict:
    from rankloop.reward.config import RewardTrainConfig
    from rankloop.reward.train import train_reward_model

    out = work / "rm"
    cfg = RewardTrainConfig(data=str(data["rm"]), model=str(model), **common_supervised(s, out))
    wall, peak = measured(lambda: train_reward_model(cfg), s.device)
    step = steady([1 / r["steps_per_s"] for r in rows_of(out) if "steps_per_s" in r])
    seq = s.prompt + s.response
    tokens = s.batch * 4 * seq  # K = 4 candidates, each prompt + response (packed: the prompt is not shared)
    return result("rankloop train-rm (K=4)", step_s=step, tokens_per_step=tokens, flops_per_step=fl.train(tokens, seq),
                  peak=peak, wall=wall, split=None, peak_flops=peak_flops,
                  settings={"K": 4, "rankings_per_step": s.batch, "loss": cfg.loss, "gradient_checkpointing":
                            cfg.gradient_checkpointing, "dtype": cfg.dtype, "precision": cfg.precision})


def run_rankloop_sft(model: Path, data: dict, s: Sizes, work: Path, fl: Flops, peak_flops: float) -> dict:
    from rankloop.sft.config import SFTConfig
    from rankloop.sft.train import train_sft

    out = work / "sft"
    cfg = SFTConfig(data=str(data["sft"]), model=str(model), **common_supervised(s, out))
    wall, peak = measured(lambda: train_sft(cfg), s.device)
    rows = [r for r in rows_of(out) if "sft/tokens_per_s" in r]
    step = steady([r["sft/tokens"] / r["sft/tokens_per_s"] for r in rows])
    tokens = int(statistics.median(r["sft/tokens"] for r in rows))
    seq = s.prompt + s.response
    return result("rankloop train-sft", step_s=step, tokens_per_step=tokens, flops_per_step=fl.train(tokens, seq),
                  peak=peak, wall=wall, split=None, peak_flops=peak_flops,
                  settings={"demonstrations_per_step": s.batch, "gradient_checkpointing": cfg.gradient_checkpointing,
                            "dtype": cfg.dtype, "precision": cfg.precision, "pack": cfg.pack})


def run_rankloop_dpo(model: Path, data: dict, s: Sizes, work: Path, fl: Flops, peak_flops: float) -> dict:
    from rankloop.dpo.config import DPOConfig
    from rankloop.dpo.train import train_dpo

    out = work / "dpo"
    cfg = DPOConfig(data=str(data["dpo"]), model=str(model), kl_prompts=0, **common_supervised(s, out))
    wall, peak = measured(lambda: train_dpo(cfg), s.device)
    step = steady([1 / r["steps_per_s"] for r in rows_of(out) if "steps_per_s" in r])
    seq = s.prompt + s.response
    # Shared prefix: the prompt once and each of the 2 responses once.
    tokens = s.batch * (s.prompt + 2 * s.response) if cfg.share_prefix else s.batch * 2 * seq
    return result("rankloop train-dpo (pairs)", step_s=step, tokens_per_step=tokens,
                  flops_per_step=fl.train(tokens, seq), peak=peak, wall=wall, split=None, peak_flops=peak_flops,
                  settings={"pairs_per_step": s.batch, "share_prefix": cfg.share_prefix, "reference": "log-probs "
                            "precomputed before training (not in the step)", "gradient_checkpointing":
                            cfg.gradient_checkpointing, "dtype": cfg.dtype, "precision": cfg.precision})


def rl_common(s: Sizes, model: Path, data: dict, out: Path) -> dict:
    return {"policy": str(model), "prompts": str(data["prompts"]), "output": str(out), "iterations": s.steps,
            "max_new_tokens": s.response, "max_prompt_tokens": s.prompt, "truncate_prompts": True,
            "stop_token_ids": [], "progress": False, "tensorboard": False, "dtype": s.dtype,
            "gradient_checkpointing": s.device == "cuda", "save_every": s.steps,
            "reward": "rankloop.rl.rewards:length"}


def rl_result(name: str, out: Path, s: Sizes, rows_per_iter: int, fl: Flops, flops: float, wall: float, peak,
              peak_flops: float, settings: dict) -> dict:
    rows = [r for r in rows_of(out) if "time/iteration" in r]
    split = {k: round(steady([r[f"time/{k}"] for r in rows]), 4) for k in ("rollout", "score", "forward", "update")}
    step = steady([r["time/iteration"] for r in rows])
    return result(name, step_s=step, tokens_per_step=rows_per_iter * (s.prompt + s.response), flops_per_step=flops,
                  peak=peak, wall=wall, split={"generation": split["rollout"], "score": split["score"],
                                               "forward": split["forward"], "update": split["update"]},
                  peak_flops=peak_flops, settings=settings)


def run_rankloop_ppo(model: Path, data: dict, s: Sizes, work: Path, fl: Flops, peak_flops: float) -> dict:
    from rankloop.rl.config import PPOConfig
    from rankloop.rl.ppo import run_ppo

    out = work / "ppo"
    B = s.batch * 2
    cfg = PPOConfig(**rl_common(s, model, data, out), batch_size=B, minibatch_size=s.batch, ppo_epochs=1,
                    generation_batch_size=B, forward_batch_size=B)
    wall, peak = measured(lambda: run_ppo(cfg), s.device)
    seq = s.prompt + s.response
    flops = (fl.decode(B, s.prompt, s.response) + fl.forward(B * seq, seq)  # sampling; the reference's pass
             + cfg.ppo_epochs * fl.train(B * seq, seq))  # (the sampler gives π_old, V_old comes with it)
    return rl_result("rankloop ppo", out, s, B, fl, flops, wall, peak, peak_flops,
                     {"prompts_per_iteration": B, "minibatch": cfg.minibatch_size, "ppo_epochs": cfg.ppo_epochs,
                      "critic": cfg.critic, "old_logprobs": cfg.old_logprobs, "reward": "length (rule)",
                      "gradient_checkpointing": cfg.gradient_checkpointing, "dtype": cfg.dtype})


def run_rankloop_grpo(model: Path, data: dict, s: Sizes, work: Path, fl: Flops, peak_flops: float) -> dict:
    from rankloop.rl.config import GRPOConfig
    from rankloop.rl.grpo import run_grpo

    out = work / "grpo"
    B = s.batch * 2 // s.group
    rows = B * s.group
    cfg = GRPOConfig(**rl_common(s, model, data, out), batch_size=B, samples_per_prompt=s.group,
                     minibatch_size=s.batch, generation_batch_size=rows, forward_batch_size=rows)
    wall, peak = measured(lambda: run_grpo(cfg), s.device)
    seq = s.prompt + s.response
    flops = fl.decode(rows, s.prompt, s.response) + fl.forward(rows * seq, seq) + cfg.epochs * fl.train(rows * seq, seq)
    return rl_result("rankloop grpo", out, s, rows, fl, flops, wall, peak, peak_flops,
                     {"prompts_per_iteration": B, "samples_per_prompt": s.group, "minibatch": cfg.minibatch_size,
                      "epochs": cfg.epochs, "kl_coef": cfg.kl_coef, "reward": "length (rule)",
                      "gradient_checkpointing": cfg.gradient_checkpointing, "dtype": cfg.dtype})


# ---------------------------------------------------------------- TRL 1.16 at matched settings


def trl_args(cls, s: Sizes, out: Path, **kw):
    bf16 = s.dtype == "bfloat16"
    return cls(output_dir=str(out), max_steps=s.steps, per_device_train_batch_size=kw.pop("batch", s.batch),
               logging_steps=1, save_strategy="no", report_to=[], bf16=bf16, use_cpu=s.device == "cpu",
               gradient_checkpointing=s.device == "cuda", learning_rate=1e-6, seed=0, **kw)


class StepTimer:
    """A ``TrainerCallback`` timing each optimiser step (``on_step_begin`` → ``on_step_end``)."""

    def __new__(cls, device: str):
        from transformers import TrainerCallback

        class _T(TrainerCallback):
            def __init__(self):
                self.times: list[float] = []
                self._t = 0.0

            def on_step_begin(self, *a, **k):
                sync(device)
                self._t = time.perf_counter()

            def on_step_end(self, *a, **k):
                sync(device)
                self.times.append(time.perf_counter() - self._t)

        return _T()


def trl_run(name: str, make_trainer, s: Sizes, tokens: int, flops: float, peak_flops: float, settings: dict) -> dict:
    timer = StepTimer(s.device)
    trainer = make_trainer()
    trainer.add_callback(timer)
    wall, peak = measured(trainer.train, s.device)
    return result(name, step_s=steady(timer.times), tokens_per_step=tokens, flops_per_step=flops, peak=peak,
                  wall=wall, split=None, peak_flops=peak_flops, settings=settings)


def load_for_trl(model: Path, s: Sizes, seq_cls: bool = False):
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    tok = AutoTokenizer.from_pretrained(model)
    cls = AutoModelForSequenceClassification if seq_cls else AutoModelForCausalLM
    kw = {"num_labels": 1} if seq_cls else {}
    m = cls.from_pretrained(model, dtype=torch.float32, **kw)  # fp32 master weights, bf16 autocast: as rankloop
    if seq_cls:
        m.config.pad_token_id = tok.pad_token_id
    return m.to(s.device), tok


def run_trl_sft(model: Path, data: dict, s: Sizes, work: Path, fl: Flops, peak_flops: float) -> dict:
    from datasets import load_dataset
    from trl import SFTConfig, SFTTrainer

    m, tok = load_for_trl(model, s)
    ds = load_dataset("json", data_files=str(data["sft"]), split="train")
    seq = s.prompt + s.response
    args = trl_args(SFTConfig, s, work / "trl-sft", max_length=seq + 2, completion_only_loss=True,
                    dataset_num_proc=None)
    tokens = s.batch * seq
    return trl_run("trl SFTTrainer", lambda: SFTTrainer(model=m, args=args, train_dataset=ds, processing_class=tok),
                   s, tokens, fl.train(tokens, seq), peak_flops, {"padding_free": False, "batch": s.batch})


def pairs_dataset(path: Path):
    from datasets import load_dataset

    return load_dataset("json", data_files=str(path), split="train")


def run_trl_dpo(model: Path, data: dict, s: Sizes, work: Path, fl: Flops, peak_flops: float) -> dict:
    from trl import DPOConfig, DPOTrainer

    m, tok = load_for_trl(model, s)
    seq = s.prompt + s.response
    args = trl_args(DPOConfig, s, work / "trl-dpo", max_length=seq + 2)
    tokens = s.batch * 2 * seq
    # TRL's reference forward runs inside each step (2 forwards of 2·seq per pair): counted.
    flops = fl.train(tokens, seq) + fl.forward(tokens, seq)
    return trl_run("trl DPOTrainer", lambda: DPOTrainer(model=m, args=args, train_dataset=pairs_dataset(data["dpo_pairs"]),
                                                       processing_class=tok),
                   s, tokens, flops, peak_flops, {"pairs_per_step": s.batch, "reference": "forward in each step"})


def run_trl_reward(model: Path, data: dict, s: Sizes, work: Path, fl: Flops, peak_flops: float) -> dict:
    from trl import RewardConfig, RewardTrainer

    m, tok = load_for_trl(model, s, seq_cls=True)
    seq = s.prompt + s.response
    # K = 4 as its 6 pairs; the batch holds as many candidate sequences as rankloop's step (batch · 4).
    pairs = s.batch * 4 // 2
    args = trl_args(RewardConfig, s, work / "trl-rm", max_length=seq + 2, batch=pairs)
    tokens = pairs * 2 * seq
    return trl_run("trl RewardTrainer (K=4 as pairs)",
                   lambda: RewardTrainer(model=m, args=args, train_dataset=pairs_dataset(data["rm_pairs"]),
                                         processing_class=tok),
                   s, tokens, fl.train(tokens, seq), peak_flops, {"pairs_per_step": pairs})


def trl_prompts(path: Path):
    from datasets import Dataset

    return Dataset.from_list([{"prompt": json.loads(x)["prompt"]} for x in path.read_text().splitlines()])


def length_reward(completions, **kw):
    return [float(len(c)) / 100 for c in completions]


def run_trl_group(which: str, model: Path, data: dict, s: Sizes, work: Path, fl: Flops, peak_flops: float) -> dict:
    import trl

    Config, Trainer = {"grpo": (trl.GRPOConfig, trl.GRPOTrainer), "rloo": (trl.RLOOConfig, trl.RLOOTrainer)}[which]
    m, tok = load_for_trl(model, s)
    tok.padding_side = "left"
    rows = s.batch * 2
    seq = s.prompt + s.response
    args = trl_args(Config, s, work / f"trl-{which}", batch=rows, num_generations=s.group,
                    max_completion_length=s.response, temperature=1.0)
    flops = fl.decode(rows, s.prompt, s.response) + fl.forward(rows * seq, seq) + fl.train(rows * seq, seq)
    return trl_run(f"trl {Trainer.__name__}", lambda: Trainer(model=m, args=args, reward_funcs=length_reward,
                                                            train_dataset=trl_prompts(data["prompts"]),
                                                            processing_class=tok),
                   s, rows * seq, flops, peak_flops, {"rows_per_step": rows, "num_generations": s.group,
                                                      "generation": "transformers generate (no vLLM)"})


# ---------------------------------------------------------------- main


def write_report(report: dict, out: Path, t0: float) -> None:
    report["total_seconds"] = round(time.perf_counter() - t0, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=1, default=float) + "\n")
    tmp.replace(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny sizes, float32, CPU (the test's mode)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "gpu_check.json"))
    ap.add_argument("--only", nargs="*", help="run only these (names as in RUNS)")
    ap.add_argument("--no-trl", action="store_true", help="skip TRL's trainers")
    args = ap.parse_args(argv)

    s = SMOKE if args.cpu_smoke else GPU
    if s.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here: run with --cpu-smoke, or on the GPU machine (bench/gpu_check.sh)")
    runs = {"rm": run_rankloop_rm, "sft": run_rankloop_sft, "dpo": run_rankloop_dpo, "ppo": run_rankloop_ppo,
            "grpo": run_rankloop_grpo, "trl-sft": run_trl_sft, "trl-dpo": run_trl_dpo, "trl-rm": run_trl_reward,
            "trl-grpo": lambda *a: run_trl_group("grpo", *a), "trl-rloo": lambda *a: run_trl_group("rloo", *a)}
    chosen = [k for k in runs if (not args.only or k in args.only) and not (args.no_trl and k.startswith("trl"))]
    report: dict = {"mode": "cpu-smoke" if args.cpu_smoke else "gpu", "sizes": asdict(s),
                    "torch": torch.__version__, "python": platform.python_version(), "runs": {}, "errors": {}}
    if s.device == "cuda":
        report["gpu"] = torch.cuda.get_device_name()
    try:
        import transformers

        report["transformers"] = transformers.__version__
        import trl

        report["trl"] = trl.__version__
    except ImportError as e:
        report["trl"] = f"not importable: {e}"
    t0 = time.perf_counter()
    out = Path(args.out)
    report["matmul_peak_flops_per_s"] = peak = matmul_peak(s.device, s.dtype)
    print(f"matmul peak ({s.dtype}): {peak / 1e12:.1f} TFLOP/s", flush=True)
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        work = Path(tmp)
        model, n = build_model(s, work / "model")
        report["parameters"] = n
        from transformers import AutoTokenizer

        data = write_data(work, AutoTokenizer.from_pretrained(model), s)
        fl = Flops(n, s)
        for name in chosen:
            if name.startswith("trl") and report["trl"].startswith("not importable"):
                report["errors"][name] = f"skipped: trl {report['trl']}"
                continue
            t = time.perf_counter()
            try:
                report["runs"][name] = r = runs[name](model, data, s, work, fl, peak)
                print(f"{name}: {r['tokens_per_s']:.0f} tokens/s, step {r['step_seconds']:.3f}s, "
                      f"{r['fraction_of_matmul_peak']:.1%} of peak, memory {r['peak_gpu_memory_gib']} GiB "
                      f"({time.perf_counter() - t:.0f}s)", flush=True)
            except Exception as e:  # noqa: BLE001 — one failing run must not lose the others' figures
                report["errors"][name] = f"{type(e).__name__}: {e}"[:2000]
                traceback.print_exc()
            if s.device == "cuda":
                torch.cuda.empty_cache()
            write_report(report, out, t0)  # after every run: a run cut by the time limit keeps what it measured
    write_report(report, out, t0)
    print(f"wrote {out} ({report['total_seconds']}s; errors: {sorted(report['errors']) or 'none'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
