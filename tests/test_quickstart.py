"""`rankloop quickstart --tiny`, as CI runs it: every artifact exists and the policy's gold score rose."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_tiny(tmp_path):
    env = {**os.environ, "RANKLOOP_CACHE": str(tmp_path / "cache")}  # pre-training included
    out = tmp_path / "qs"
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "rankloop.cli", "quickstart", "--tiny", "-o", str(out),
                           "--no-progress"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

    # The base model was pre-trained (tokenizer by `tokenizers`) and cached.
    cached = list((tmp_path / "cache" / "pretrained").glob("*/DONE"))
    assert len(cached) == 1
    base = cached[0].parent
    assert (base / "tokenizer.json").exists() and (base / "model.safetensors").exists()

    # Every stage's artifact, with its record (config + input hash) beside it.
    for a in ["eval/gold_rankings.jsonl", "eval/initial.json", "round-0/candidates.jsonl", "round-0/selected.jsonl",
              "round-0/rankings.jsonl", "round-0/rm", "round-0/policy", "round-0/eval.json"]:
        assert (out / a).exists(), a
        assert json.loads((out / f"{a}.stage.json").read_text())["inputs_hash"], a
    assert (out / "labels.db").exists()  # the rankings went through the labeling database
    assert (out / "round-0" / "rm" / "config.json").exists()
    assert (out / "round-0" / "policy" / "model.safetensors").exists()
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64") >= 4 and "Samples before and after" in html

    s = json.loads((out / "summary.json").read_text())
    r0 = s["rounds"][0]
    assert r0["rankings"] == 2 * 48  # 48 prompts, two labelers each
    assert 0.6 < r0["agreement"] < 0.86  # calibrated to 73%
    assert r0["rm_accuracy"] is not None and s["final_kl"] is not None and s["final_kl"] > 0
    assert s["final_gold"] > s["initial_gold"], s  # the policy's gold score rose
    assert "rankloop — summary" in proc.stdout
    print(f"quickstart --tiny: {wall:.0f}s wall (pre-training included); summary: "
          f"gold {s['initial_gold']:.3f} -> {s['final_gold']:.3f}, win rate {s['win_rate_vs_initial']:.2f}, "
          f"KL {s['final_kl']:.2f}, RM acc {r0['rm_accuracy']:.2f}")

    # The same results as recorded before the restructure (issue 10), exactly, on a kind of machine
    # with a recording. A whole quickstart carries other kernels' last-digit differences on into
    # discrete choices (clipped fractions, sampled tokens): no tolerance holds across kinds.
    from golden_runs import compare, golden, machine, run_quickstart_golden

    want, path, exact = golden("quickstart")
    if not exact:
        pytest.skip(f"no quickstart recording for this kind of machine ({machine()}); record one from a commit "
                    "that did not change results: python tests/golden_runs.py --kind quickstart")
    got = run_quickstart_golden(out)
    diffs = compare(got, want["result"])
    assert not diffs, f"{len(diffs)} differences from {path}, first: {diffs[:8]}"
