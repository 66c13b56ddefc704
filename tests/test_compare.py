"""The learners' comparison (rankloop.compare): every arm learns from the same round-0 material,
is measured by the loop's own evaluation, and a finished arm is read back, not re-run."""

from __future__ import annotations

import json
import os

from rankloop.compare import CompareConfig, compare_learners, frontier_png, table
from rankloop.loop import file_hash, round_dir


def test_arms_share_round_zero_and_resume(tmp_path):
    cc = CompareConfig(output=str(tmp_path / "cmp"), tiny=True, seeds=[0], learners=["ppo", "grpo", "dpo-iter"],
                       strengths={"ppo": [0.1], "grpo": [0.1], "dpo-iter": [0.1]}, iterations=2, iter_rounds=2,
                       threads=1)
    s = compare_learners(cc)
    seed = tmp_path / "cmp" / "seed-0"
    arms = {a["learner"]: a for a in s["arms"]}
    assert set(arms) == {"ppo", "grpo", "dpo-iter"}
    # the same candidates, rankings and reward model for every arm
    for name in ("candidates.jsonl", "rankings.jsonl", "rm"):
        hashes = {file_hash(round_dir(seed / d, 0).path / name) for d in ("ppo-0.1", "grpo-0.1", "dpo-iter-0.1")}
        assert len(hashes) == 1, name
    for a in arms.values():
        assert 0.0 <= a["win_rate"] <= 1.0 and a["kl"] is not None and a["learn_seconds"] > 0
    # iterative DPO ranks its own samples in the later round: more rankings than the one-round arms
    assert arms["dpo-iter"]["rounds"] == 2 and arms["dpo-iter"]["rankings"] > arms["ppo"]["rankings"]
    assert len(arms["dpo-iter"]["per_round"]) == 2
    # the round-0 DPO policy of the iterated arm is trained on the shared rankings only
    r0 = json.loads((round_dir(seed / "dpo-iter-0.1", 0).path / "policy.stage.json").read_text())
    assert r0["result"]["train_rankings"] == arms["ppo"]["rankings"] if "train_rankings" in r0["result"] else True
    stamp = {d: os.stat(seed / d / "arm.json").st_mtime_ns for d in ("ppo-0.1", "grpo-0.1", "dpo-iter-0.1")}
    again = compare_learners(cc)
    assert again["arms"] == s["arms"]
    assert stamp == {d: os.stat(seed / d / "arm.json").st_mtime_ns for d in stamp}
    assert "| grpo | 0.1 |" in table(s)
    assert frontier_png(s, tmp_path / "f.png").stat().st_size > 1000
