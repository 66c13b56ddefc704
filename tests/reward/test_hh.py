"""Real human preferences (HH-RLHF) and a real pre-trained backbone (stories260K), from ../shared.

The held-out figures come from bench/reward_hh.py; this checks the path end to end on a slice.
"""

import gzip
import json

from rankloop.reward.eval import evaluate_reward_model
from rankloop.reward.train import RewardTrainConfig, train_reward_model


def _slice(src, dst, n):
    with gzip.open(src, "rt", encoding="utf-8") as f, gzip.open(dst, "wt", encoding="utf-8") as g:
        for i, line in enumerate(f):
            if i == n:
                break
            g.write(line)
    return dst


def test_train_on_harmless_eval_on_helpful(tmp_path, hh_path, stories_path):
    train = _slice(hh_path / "harmless-base/test.jsonl.gz", tmp_path / "harmless.jsonl.gz", 64)
    held = _slice(hh_path / "helpful-base/test.jsonl.gz", tmp_path / "helpful.jsonl.gz", 64)
    cfg = RewardTrainConfig(data=str(train), eval_data=str(held), model=str(stories_path), output=str(tmp_path / "rm"),
                            max_steps=4, batch_size=8, lr=1e-3, max_length=64, skip_invalid=True, progress=False)
    out = train_reward_model(cfg)
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["rankings"] + summary["skipped"] == 64
    m = evaluate_reward_model(out, held, skip_invalid=True)
    assert m["pairs"] == m["rankings"] >= 60 and 0.0 <= m["pairwise_accuracy"] <= 1.0
    assert summary["eval"]["pairwise_accuracy"] == m["pairwise_accuracy"]  # the same scores, normalised or not
