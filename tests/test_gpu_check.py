"""bench/gpu_check.py --cpu-smoke end to end: every rankloop run and every TRL run produces its figures,
so the script is known to work before a GPU is lent."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RANKLOOP = ["rm", "sft", "dpo", "ppo", "grpo"]
TRL = ["trl-sft", "trl-dpo", "trl-rm", "trl-grpo", "trl-rloo"]


@pytest.mark.slow
def test_cpu_smoke_writes_every_figure(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, "bench/gpu_check.py", "--cpu-smoke", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900, check=False,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["mode"] == "cpu-smoke" and r["matmul_peak_flops_per_s"] > 0
    assert r["parameters"] > 0
    trl_here = not str(r["trl"]).startswith("not importable")
    want = RANKLOOP + (TRL if trl_here else [])
    # without TRL (CI installs only the test extra) its runs are recorded as skipped, and only those
    errors = {k: v for k, v in r["errors"].items() if trl_here or not (k in TRL and v.startswith("skipped: trl"))}
    assert not errors, errors
    assert sorted(r["runs"]) == sorted(want)
    for name in want:
        run = r["runs"][name]
        assert run["step_seconds"] > 0 and run["tokens_per_s"] > 0, name
        assert 0 < run["fraction_of_matmul_peak"] < 2, (name, run["fraction_of_matmul_peak"])
        assert run["peak_gpu_memory_gib"] is None  # CPU: no GPU memory to report
    for name in ("ppo", "grpo"):
        split = r["runs"][name]["step_split_seconds"]
        assert set(split) == {"generation", "score", "forward", "update"}
        assert all(v >= 0 for v in split.values()) and split["generation"] > 0
        # The split is of medians, so it need not add up exactly; it cannot exceed the step by much.
        assert sum(split.values()) <= r["runs"][name]["step_seconds"] * 1.5
    # Prompt 24 / response 16 tokens in the smoke sizes: the SFT step holds 4 demonstrations of 40 tokens.
    assert r["runs"]["sft"]["tokens_per_step"] == 4 * (24 + 16)
