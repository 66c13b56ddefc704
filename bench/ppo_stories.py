"""PPO on a real pre-trained model: stories260K (TinyStories, Llama architecture) with a
programmatic reward — the positive sentiment of the story by the VADER lexicon.

Two runs from the same start and seed:
  - adaptive KL (Ziegler et al. 2019's controller): the mean reward rises while the KL to the
    reference stays near the target;
  - kl_coef = 0: no penalty, so the policy drifts much further from the reference.

Writes bench/results/ppo_stories.json (per-iteration reward and KL for both runs, samples before
and after) and prints a summary. A few minutes on a laptop CPU.

    python bench/ppo_stories.py [--iterations 40] [--model ../shared/models/stories260K-hf]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STARTS = [
    "Once upon a time", "One day", "Tom and his dog", "Lily went to the park", "The little bird",
    "Sam was sad because", "The big bear", "Mia had a red ball", "There was a boy named Ben", "The cat",
    "It was a rainy day", "Anna and her mom", "The old tree", "A little girl", "Max saw a", "The sun",
    "Sue found a box", "In the forest", "Tim wanted to", "The dog barked",
]
SAMPLE_PROMPTS = ["Once upon a time", "Sam was sad because", "It was a rainy day", "The big bear"]


def samples(model_dir: str, seed: int = 1) -> list[dict]:
    from rankloop.models import load_causal_lm, load_tokenizer
    from rankloop.rl.rewards import vader_positive
    from rankloop.sampling import generate

    tok = load_tokenizer(model_dir, "left")
    model = load_causal_lm(model_dir, tokenizer=tok)
    b = generate(model, tok, SAMPLE_PROMPTS, max_new_tokens=48, seed=seed)
    scores = vader_positive(SAMPLE_PROMPTS, b.texts)
    return [{"prompt": p, "response": t, "reward": round(s, 4)} for p, t, s in zip(SAMPLE_PROMPTS, b.texts, scores)]


def run(name: str, model: str, out: Path, prompts: Path, iterations: int, lr: float, **kw) -> list[dict]:
    from rankloop.rl.ppo import PPOConfig, run_ppo

    cfg = PPOConfig(policy=model, reward="rankloop.rl.rewards:vader_positive", prompts=str(prompts),
                    output=str(out / name), iterations=iterations, batch_size=64, minibatch_size=16, ppo_epochs=4,
                    max_new_tokens=48, learning_rate=lr, seed=0, save_every=iterations, tensorboard=False,
                    progress=False, **kw)
    t = time.perf_counter()
    run_ppo(cfg)
    rows = [json.loads(x) for x in (out / name / "metrics.jsonl").read_text().splitlines()]
    print(f"{name}: {iterations} iterations in {time.perf_counter() - t:.0f}s", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT.parent / "shared" / "models" / "stories260K-hf"))
    ap.add_argument("--iterations", type=int, default=40)
    ap.add_argument("--kl-target", type=float, default=6.0, help="adaptive run: target KL per response (nats)")
    ap.add_argument("--kl-horizon", type=float, default=128, help="adaptive run: controller horizon (samples)")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--output", default=str(ROOT / "bench" / "results" / "ppo_stories.json"))
    args = ap.parse_args()
    if not Path(args.model).exists():
        sys.exit(f"{args.model} not found (../shared/models/stories260K-hf is beside developer and CI checkouts)")
    import torch

    torch.set_num_threads(1)  # the model is tiny: one thread is fastest and leaves the other cores alone
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        prompts = tmp / "prompts.jsonl"
        prompts.write_text("".join(json.dumps({"id": f"s{i}", "text": s}) + "\n" for i, s in enumerate(STARTS)))
        before = samples(args.model)
        runs = {
            "adaptive_kl": dict(kl_control="adaptive", kl_coef=0.05, kl_target=args.kl_target, kl_horizon=args.kl_horizon),
            "no_kl": dict(kl_control="fixed", kl_coef=0.0),
        }
        result: dict = {"model": args.model, "reward": "rankloop.rl.rewards:vader_positive (VADER compound, [-1, 1])",
                        "settings": {"batch_size": 64, "minibatch_size": 16, "ppo_epochs": 4, "max_new_tokens": 48,
                                     "learning_rate": args.lr, "iterations": args.iterations,
                                     "kl_target": args.kl_target, "kl_horizon": args.kl_horizon, "seed": 0},
                        "samples_before": before, "runs": {}}
        for name, kw in runs.items():
            rows = run(name, args.model, tmp, prompts, args.iterations, args.lr, **kw)
            result["runs"][name] = {
                "settings": kw,
                "reward": [round(r["objective/reward"], 4) for r in rows],
                "kl_ref": [round(r["ppo/kl_ref"], 4) for r in rows],
                "kl_coef": [round(r["kl_coef"], 5) for r in rows],
                "response_length": [round(r["response/length"], 2) for r in rows],
                "entropy": [round(r["objective/entropy"], 4) for r in rows],
                "seconds_per_iteration": round(sum(r["time/iteration"] for r in rows) / len(rows), 3),
                "samples_after": samples(str(tmp / name)),
            }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")

    def first_last(xs, n=3):
        return sum(xs[:n]) / n, sum(xs[-n:]) / n

    print(f"\n{'run':<12} {'reward first3→last3':>22} {'KL first3→last3':>20} {'β last':>8}")
    for name, r in result["runs"].items():
        (r0, r1), (k0, k1) = first_last(r["reward"]), first_last(r["kl_ref"])
        print(f"{name:<12} {r0:>+9.3f} → {r1:>+8.3f}   {k0:>8.2f} → {k1:>7.2f}   {r['kl_coef'][-1]:>7.4f}")
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
