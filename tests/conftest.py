import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RANKLOOP_SHARED", ROOT.parent / "shared"))
STORIES = SHARED / "models" / "stories260K-hf"
HH = SHARED / "data" / "hh-rlhf"


def need_shared(path: Path) -> Path:
    """Skip (with the reason) when ../shared is absent, as in a user's fresh clone."""
    if not path.exists():
        pytest.skip(f"{path} is absent: ../shared (real model and data) is only beside CI and developer checkouts")
    return path


@pytest.fixture
def stories_path() -> Path:
    return need_shared(STORIES)


@pytest.fixture
def hh_path() -> Path:
    return need_shared(HH)


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> Path:
    """A tiny randomly initialised GPT-2 causal LM with a real BPE tokenizer, saved to disk."""
    from rankloop.testing import build_tiny

    return build_tiny(tmp_path_factory.mktemp("tiny-gpt2"), "gpt2", "causal")


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    from rankloop.testing import build_tiny

    return build_tiny(tmp_path_factory.mktemp("tiny-llama"), "llama", "causal")
