import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rankloop.io import write_rankings
from rankloop.testing import build_tiny
from rankloop.testing import synthetic_rankings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def rank_data(tmp_path_factory) -> dict[str, Path]:
    """Synthetic K = 4 rankings (with ties) for training, and held-out ones."""
    d = tmp_path_factory.mktemp("rankings")
    write_rankings(d / "train.jsonl", synthetic_rankings(96, k=4, seed=0))
    write_rankings(d / "eval.jsonl", synthetic_rankings(48, k=4, seed=1))
    return {"train": d / "train.jsonl", "eval": d / "eval.jsonl"}


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return build_tiny(tmp_path_factory.mktemp("tiny-bert"), "bert")


def run_cli(*args: str, check: bool = True, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``rankloop ARGS`` in a subprocess, as a user runs it."""
    proc = subprocess.run([sys.executable, "-m", "rankloop.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, **(env or {})}, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"rankloop {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


def weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(Path(path) / "model.safetensors"))


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def moved(before: dict, after: dict) -> float:
    """Largest change of a backbone weight present in both (a causal LM has no score head yet)."""
    common = before.keys() & after.keys()
    assert common
    return max((before[k].float() - after[k].float()).abs().max().item() for k in common)
