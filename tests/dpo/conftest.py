from pathlib import Path

import pytest

from rankloop.io import write_rankings
from rankloop.testing import synthetic_rankings


@pytest.fixture(scope="session")
def rank_data(tmp_path_factory) -> dict[str, Path]:
    """Synthetic K = 4 rankings (with ties) for training, and held-out ones."""
    d = tmp_path_factory.mktemp("dpo-rankings")
    write_rankings(d / "train.jsonl", synthetic_rankings(48, k=4, seed=0))
    write_rankings(d / "eval.jsonl", synthetic_rankings(16, k=4, seed=1))
    return {"train": d / "train.jsonl", "eval": d / "eval.jsonl"}
