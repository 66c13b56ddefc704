"""Fixed-seed runs of ``train-rm`` and ``ppo`` whose metrics and final weights are recorded in
``tests/golden/*.json``: a restructure must reproduce them to the last digit (issue 10).

    python tests/golden_runs.py            # record (only when a change of results is intended)
    python tests/golden_runs.py --kind     # add this machine kind's recording of the same code

Results are exact only on one kind of machine (torch build and CPU kernels: AVX512 and AVX2 round
differently, and so do two AVX512 CPUs of different generations — MKL and oneDNN pick their kernels
by the vector extensions present — and a long training run carries the difference on). A kind is
torch's build, its CPU capability and the CPU's vector-extension flags (``isa``). Each kind has its
own file: ``<name>.json`` for the first recording, ``<name>.<capability>-<isa hash>.json`` for each
further kind, made with ``--kind`` from a commit that reproduces the existing recordings (never from
a commit that changed results).

``tests/test_golden.py`` runs the same functions and compares; ``tests/test_quickstart.py`` does the
same for ``quickstart --tiny``. Times and throughputs are left out; every other number is kept.
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
from pathlib import Path

GOLDEN = Path(__file__).resolve().parent / "golden"
PROMPT_TEXTS = ["the cat sat", "a dog ran", "once upon a time", "good morning", "she likes", "i hate rain",
                "this is great", "the little bird"]
_TIMING = ("time/", "seconds", "steps_per_s", "tokens_per_s", "peak_rss", "wall")


def cpu_isa() -> str:
    """The CPU's vector-extension flags (``avx*``, ``amx*``, ``fma``, ...), sorted: two CPUs that torch
    calls AVX512 alike may still run other matmul kernels (an AMX Sapphire Rapids and an older Xeon
    differ in the last digit). Empty where /proc/cpuinfo is not there to read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith(("flags", "Features"))), [])
    return " ".join(sorted(f for f in set(flags) if f.startswith(("avx", "amx", "fma", "f16c", "sve", "asimd"))))


def machine() -> dict:
    """What decides the floating-point kernels: exact equality is expected where this matches."""
    import torch

    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "machine": platform.machine(), "isa": cpu_isa()}


def _same_kind(recorded: dict, here: dict) -> bool:
    """Recordings made before ``isa`` was part of the kind match only a CPU without AVX512 (the one
    AVX2 kind that recorded them had none of its flags); an AVX512 recording without ``isa`` matches
    no machine exactly (which AVX512 CPU made it is not known)."""
    if "isa" not in recorded:
        if recorded.get("cpu_capability") != "AVX2" or "avx512" in here["isa"]:
            return False
        recorded = {**recorded, "isa": here["isa"]}
    return recorded == here


def golden(name: str) -> tuple[dict, Path, bool]:
    """The recording of ``name`` made on this kind of machine (exact comparison: True), else the
    first recording (compare within a tolerance: False)."""
    here = machine()
    for path in [GOLDEN / f"{name}.json", *sorted(GOLDEN.glob(f"{name}.*.json"))]:
        want = json.loads(path.read_text())
        if _same_kind(want["machine"], here):
            return want, path, True
    path = GOLDEN / f"{name}.json"
    return json.loads(path.read_text()), path, False


def kind_path(name: str) -> Path:
    """Where this machine kind's recording of ``name`` goes with ``--kind``."""
    import torch

    first = GOLDEN / f"{name}.json"
    if not first.exists() or _same_kind(json.loads(first.read_text())["machine"], machine()):
        return first
    tag = hashlib.sha256(cpu_isa().encode()).hexdigest()[:6]
    return GOLDEN / f"{name}.{torch.backends.cpu.get_cpu_capability().lower()}-{tag}.json"


def untimed(obj):
    """``obj`` without the timing fields (they differ from run to run), recursively."""
    if isinstance(obj, dict):
        return {k: untimed(v) for k, v in obj.items() if not any(t in k for t in _TIMING)}
    if isinstance(obj, list):
        return [untimed(v) for v in obj]
    return obj


def file_sha256(path: Path) -> str:
    """Hash of the tensors of a safetensors file (names, dtypes, shapes and bytes; not the header's
    metadata, which records library versions)."""
    from safetensors import safe_open

    h = hashlib.sha256()
    with safe_open(str(path), "pt") as f:
        for name in sorted(f.keys()):
            t = f.get_tensor(name).contiguous()
            h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.view(-1).view(dtype=__import__("torch").uint8).numpy().tobytes())
    return h.hexdigest()


def read_metrics(path: Path) -> list[dict]:
    return [untimed(json.loads(ln)) for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


def run_reward(work: Path) -> dict:
    """train-rm on a tiny GPT-2 and synthetic K = 4 rankings with ties: grad accumulation, eval,
    a checkpoint, the cosine schedule and the fitted normalisation."""
    from rankloop.io import write_rankings
    from rankloop.reward.train import RewardTrainConfig, train_reward_model
    from rankloop.testing import build_tiny, synthetic_rankings

    model = build_tiny(work / "tiny-gpt2-rm", "gpt2", "reward")
    write_rankings(work / "train.jsonl", synthetic_rankings(40, k=4, seed=0))
    write_rankings(work / "eval.jsonl", synthetic_rankings(12, k=4, seed=1))
    out = {}
    for name, extra in {"rm": {}, "rm_lora_pl": {"lora": True, "loss": "pl", "pack": False}}.items():
        cfg = RewardTrainConfig(data=str(work / "train.jsonl"), model=str(model), output=str(work / name),
                                eval_data=str(work / "eval.jsonl"), epochs=2, batch_size=4, grad_accum=2, lr=3e-3,
                                scheduler="cosine", warmup_steps=1, log_every=1, eval_every=3, save_every=4,
                                progress=False, seed=3, **extra)
        d = train_reward_model(cfg)
        out[name] = {"metrics": read_metrics(d / "metrics.jsonl"),
                     "summary": untimed(json.loads((d / "train_summary.json").read_text())),
                     "normalisation": json.loads((d / "normalisation.json").read_text())
                     if (d / "normalisation.json").exists() else None,
                     "weights": file_sha256(d / "model.safetensors")}
    return out


def run_ppo_golden(work: Path) -> dict:
    """ppo on a tiny GPT-2 with a function reward: the default path (shared critic, packed, sampler
    log-probs, fixed KL) and LoRA + adaptive KL + separate settings."""
    from rankloop.rl.ppo import PPOConfig, run_ppo
    from rankloop.testing import build_tiny

    policy = build_tiny(work / "tiny-gpt2", "gpt2", "causal")
    prompts = work / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "text": t}) + "\n" for i, t in enumerate(PROMPT_TEXTS)))
    variants = {
        "ppo": {},
        "ppo_lora_adaptive": {"lora": True, "kl_control": "adaptive", "kl_coef": 0.1, "kl_target": 1.0,
                              "kl_horizon": 100, "grad_accum_steps": 2, "missing_eos_penalty": 0.5,
                              "ent_coef": 0.01, "target_approx_kl": 0.5},
        "ppo_forward_separate": {"old_logprobs": "forward", "critic": "separate", "pack": False,
                                 "whiten_advantages": False, "max_grad_norm": None, "reward_clip": 3.0},
    }
    out = {}
    for name, extra in variants.items():
        cfg = PPOConfig(policy=str(policy), output=str(work / name), prompts=str(prompts),
                        reward="rankloop.rl.rewards:length", iterations=3, batch_size=8, minibatch_size=4,
                        ppo_epochs=2, max_new_tokens=6, learning_rate=3e-3, progress=False, tensorboard=False,
                        save_every=2, seed=5, **extra)
        d = run_ppo(cfg)
        out[name] = {"metrics": read_metrics(d / "metrics.jsonl"),
                     "weights": file_sha256(d / "model.safetensors"),
                     "value_head": file_sha256(d / "value_head.safetensors")}
    return out


def run_quickstart_golden(out: Path) -> dict:
    """What ``quickstart --tiny`` wrote to ``out``: the summary, every stage's metrics and weights."""
    summary = untimed(json.loads((out / "summary.json").read_text()))
    summary.pop("run")  # paths of this run
    summary.pop("pretrained", None)
    for t in summary.get("timings", []):
        t.pop("artifact", None)
    res = {"summary": summary}
    for m in sorted([*out.glob("round-*/*/metrics.jsonl"), *out.glob("demonstrations/*/metrics.jsonl")]):
        res[str(m.relative_to(out))] = read_metrics(m)
    for w in sorted([*out.glob("round-*/*/model.safetensors"), *out.glob("demonstrations/*/model.safetensors")]):
        res[str(w.relative_to(out))] = file_sha256(w)
    demos = out / "demonstrations" / "demonstrations.jsonl"
    if demos.exists():  # what the simulated demonstrators wrote, less the app's timestamps
        rows = [{k: v for k, v in json.loads(x).items() if not k.endswith("_at")}
                for x in demos.read_text(encoding="utf-8").splitlines() if x.strip()]
        res["demonstrations"] = hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()
    return res


# ``quickstart --tiny`` as it was before the whole recipe became the default (issue 12.4):
# tests/golden/quickstart.json, which this configuration must still reproduce exactly.
QUICKSTART_BEFORE_RECIPE = ["--rounds", "1", "--no-demonstrations", "--algorithm", "ppo"]


def run_quickstart_cli(work: Path, extra: list[str], name: str = "qs") -> Path:
    """``rankloop quickstart --tiny`` as CI runs it (pre-training included, into ``work/cache``)."""
    import os
    import subprocess

    out = work / name
    env = {**os.environ, "RANKLOOP_CACHE": str(work / "cache")}
    subprocess.run([sys.executable, "-m", "rankloop.cli", "quickstart", "--tiny", "-o", str(out), "--no-progress",
                    *extra], cwd=Path(__file__).resolve().parents[1], env=env, check=True, capture_output=True,
                   timeout=2400)  # a shared 2-core machine under load runs the recipe 5-10x slower than quiet
    return out


def run_quickstart(work: Path) -> dict:
    """The quickstart before the recipe (one round of PPO, no demonstrations)."""
    return run_quickstart_golden(run_quickstart_cli(work, QUICKSTART_BEFORE_RECIPE))


def run_quickstart_recipe(work: Path) -> dict:
    """``rankloop quickstart --tiny`` at its defaults: demonstrations → SFT, two rounds of PPO."""
    return run_quickstart_golden(run_quickstart_cli(work, []))


def single_threaded(fn, work: Path) -> dict:
    """``fn(work)`` on one intra-op thread, so the reductions' order does not depend on the core count."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn(work)
    finally:
        torch.set_num_threads(n)


RUNS = {"reward": run_reward, "ppo": run_ppo_golden, "quickstart": run_quickstart,
        "quickstart_recipe": run_quickstart_recipe}


def compare(got, want, path: str = "", rel: float | None = None) -> list[str]:
    """Every difference between two recorded results: exact (floats to the last digit), or with
    ``rel`` floats within that relative tolerance (absolute ``rel``·1e-3 near zero), weight hashes
    and clip fractions not compared (other kernels)."""
    diffs: list[str] = []
    if isinstance(want, dict) and isinstance(got, dict):
        for k in sorted(set(want) | set(got)):
            if k not in got or k not in want:
                diffs.append(f"{path}/{k}: {'missing' if k not in got else 'unexpected'}")
            else:
                diffs += compare(got[k], want[k], f"{path}/{k}", rel)
    elif isinstance(want, list) and isinstance(got, list) and len(want) == len(got):
        for i, (g, w) in enumerate(zip(got, want)):
            diffs += compare(g, w, f"{path}[{i}]", rel)
    elif rel is not None and path.endswith("_frac"):
        pass  # a fraction of tokens past a clip threshold: a last-digit difference moves one token across it
    elif rel is not None and isinstance(want, float) and isinstance(got, (int, float)):
        if abs(got - want) > rel * max(abs(want), 1e-3):
            diffs.append(f"{path}: {got!r} != {want!r}")
    elif rel is not None and isinstance(want, str) and len(want) == 64 and path.rsplit("/", 1)[-1] in (
            "weights", "value_head") or path.endswith(".safetensors"):
        pass
    elif got != want:
        diffs.append(f"{path}: {got!r} != {want!r}")
    return diffs


def record(names: list[str], kind: bool = False) -> None:
    import tempfile

    GOLDEN.mkdir(exist_ok=True)
    for name in names:
        with tempfile.TemporaryDirectory() as tmp:
            res = single_threaded(RUNS[name], Path(tmp))
        path = kind_path(name) if kind else GOLDEN / f"{name}.json"
        path.write_text(json.dumps({"machine": machine(), "result": res}, indent=1) + "\n")
        print(f"recorded {path}")


if __name__ == "__main__":
    args = sys.argv[1:]
    kind = "--kind" in args
    record([a for a in args if a != "--kind"] or list(RUNS), kind=kind)
