import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]

STORY = ["the cat sat on the mat.", "a dog ran in the park and was happy.", "she likes warm bread and tea.",
         "once upon a time there was a little bird who sang every day.", "good morning! this is great."]


def write_jsonl(path: Path, rows: list[dict], gz: bool = False) -> Path:
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def pc_rows(n: int, seed: int = 0) -> list[dict]:
    """Prompt/completion rows of varied lengths (so padding matters and packing pays)."""
    import random

    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = " ".join(rng.choice(STORY) for _ in range(rng.randint(1, 6)))
        rows.append({"prompt": rng.choice(["tell me:", "a story:", "once upon a time"]), "completion": " " + words})
    return rows


@pytest.fixture(scope="session")
def sft_data(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("sft-data")
    return {"train": write_jsonl(d / "train.jsonl", pc_rows(48, 0)),
            "eval": write_jsonl(d / "eval.jsonl", pc_rows(16, 1))}


def run_cli(*args, check: bool = True, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``rankloop ARGS`` in a subprocess, as a user runs it."""
    proc = subprocess.run([sys.executable, "-m", "rankloop.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"rankloop {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


def weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(Path(path) / "model.safetensors"))


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def metrics(out: Path) -> list[dict]:
    return [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]
