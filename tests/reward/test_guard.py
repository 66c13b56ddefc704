"""train-rm stops at the first non-finite loss, naming the step and the last good checkpoint, and
leaves that checkpoint intact (the shared runtime's guard, as in PPO)."""

import pytest
import torch

from rankloop.testing import build_tiny
from rankloop.reward.train import RewardTrainConfig, train_reward_model
from rankloop.runtime import NonFiniteError


def test_nan_loss_stops_naming_step_and_last_checkpoint(tmp_path, rank_data):
    from transformers import AutoModelForSequenceClassification

    model_dir = build_tiny(tmp_path / "rm", "gpt2", "reward")
    cfg = dict(data=str(rank_data["train"]), model=str(model_dir), output=str(tmp_path / "out"), lr=3e-3,
               batch_size=4, progress=False, normalise_on="none", log_every=1, save_every=2, max_steps=4)
    train_reward_model(RewardTrainConfig(**cfg))  # finite: runs to the end, checkpoint at step 2
    ckpt = tmp_path / "out" / "checkpoints" / "step-00000002"
    assert ckpt.is_dir()

    # The same run from weights with a NaN in the score head: stops at step 1, nothing written.
    m = AutoModelForSequenceClassification.from_pretrained(model_dir)
    with torch.no_grad():
        m.score.weight[0, 0] = float("nan")
    m.save_pretrained(tmp_path / "rm-nan")
    import shutil

    for f in model_dir.glob("*token*"):
        shutil.copy(f, tmp_path / "rm-nan" / f.name)
    with pytest.raises(NonFiniteError, match=r"non-finite loss at step 1, step 'forward'.*none \(no checkpoint"):
        train_reward_model(RewardTrainConfig(**{**cfg, "model": str(tmp_path / "rm-nan"),
                                                "output": str(tmp_path / "out-nan")}))
    assert not (tmp_path / "out-nan" / "checkpoints").exists()


def test_divergence_stops_with_the_last_checkpoint_named_and_intact(tmp_path, rank_data):
    """An absurd learning rate blows the weights up within a few steps: the run stops at the first
    non-finite loss and names the newest checkpoint, which still loads (finite weights)."""
    from transformers import AutoModelForSequenceClassification

    model_dir = build_tiny(tmp_path / "rm", "gpt2", "reward")
    cfg = RewardTrainConfig(data=str(rank_data["train"]), model=str(model_dir), output=str(tmp_path / "out"),
                            lr=1e30, max_grad_norm=None, scheduler="constant", batch_size=4, progress=False,
                            normalise_on="none", log_every=1, save_every=1, max_steps=20)
    with pytest.raises(NonFiniteError, match=r"non-finite loss at step \d+, step 'forward'; stopped. "
                       r"Last good checkpoint: .*step-\d{8} \(intact") as e:
        train_reward_model(cfg)
    named = str(e.value).split("Last good checkpoint: ")[1].split(" (intact")[0]
    m = AutoModelForSequenceClassification.from_pretrained(named)
    assert all(torch.isfinite(p).all() for p in m.parameters())
