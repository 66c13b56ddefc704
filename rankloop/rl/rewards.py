"""Rewards for PPO: a rankloop reward-model directory, or any ``(prompts, responses) -> list[float]``.

``load_reward(spec)`` accepts
- a Python callable;
- ``"module:function"`` or ``"path/to/file.py:function"`` (programmatic and verifiable rewards);
- a directory written by ``rankloop train-rm`` (scored by ``rankloop.reward.model.RewardScorer``
  with the normalisation saved beside it).

The prompts PPO passes are the policy's renderings (its chat template or HH-style text), as ``str``
— each a ``rankloop.records.RenderedPrompt`` that also keeps the prompt as given in ``.content``. A
reward-model directory renders that content with its own tokenizer (``rankloop.reward.model.render``:
the chat template's assistant turn, ending in the end-of-turn token), so it scores in PPO exactly the
text ``train-rm`` trained it on.

Built in: ``rankloop.rl.rewards:vader_positive`` (positive sentiment by the VADER lexicon, the
``vaderSentiment`` package), ``rankloop.rl.rewards:length`` (a toy reward for tests).
"""

from __future__ import annotations

import importlib
import importlib.util
import math
from functools import lru_cache
from pathlib import Path
from typing import Callable, Sequence

RewardFn = Callable[[list[str], list[str]], Sequence[float]]


class RewardError(ValueError):
    pass


def load_reward(spec: str | Path | RewardFn, *, batch_size: int = 32, normalise: bool = True,
                device: str | None = None) -> RewardFn:
    """Resolve a reward spec to a function ``(prompts, responses) -> list[float]``."""
    if callable(spec):
        return spec
    s = str(spec)
    path = Path(s)
    if path.is_dir():
        return _reward_model(path, batch_size=batch_size, normalise=normalise, device=device)
    if ":" not in s:
        raise RewardError(f"reward {s!r} is neither a reward-model directory nor 'module:function'")
    mod_name, _, fn_name = s.rpartition(":")
    if mod_name.endswith(".py"):
        file = Path(mod_name)
        if not file.exists():
            raise RewardError(f"reward file {file} not found")
        spec_ = importlib.util.spec_from_file_location(f"rankloop_reward_{file.stem}", file)
        module = importlib.util.module_from_spec(spec_)
        spec_.loader.exec_module(module)  # type: ignore[union-attr]
    else:
        try:
            module = importlib.import_module(mod_name)
        except ImportError as e:
            raise RewardError(f"cannot import reward module {mod_name!r}: {e}") from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise RewardError(f"{mod_name!r} has no function {fn_name!r}")
    return fn


def _reward_model(path: Path, *, batch_size: int, normalise: bool, device: str | None) -> RewardFn:
    if not (path / "config.json").exists():
        raise RewardError(f"{path} is a directory but holds no config.json: not a reward model")
    try:
        from rankloop.reward.model import RewardScorer
    except ImportError as e:
        raise RewardError(f"reward-model directories need rankloop.reward.model.RewardScorer ({e})") from None
    scorer = RewardScorer.from_pretrained(path, device=str(device or "cpu"))

    def score(prompts: list[str], responses: list[str]) -> list[float]:
        return scorer.score(prompts, responses, batch_size=batch_size, normalise=normalise).tolist()

    score.__name__ = f"reward_model({path})"
    return score


def call_reward(fn: RewardFn, prompts: list[str], responses: list[str]) -> list[float]:
    """Call ``fn`` and check it returned one number per response (non-finite values are kept:
    the caller's guard reports them with the step)."""
    out = fn(prompts, responses)
    if hasattr(out, "tolist"):
        out = out.tolist()
    out = list(out)
    if len(out) != len(responses):
        raise RewardError(f"reward function returned {len(out)} values for {len(responses)} responses")
    try:
        return [float(x) for x in out]
    except (TypeError, ValueError) as e:
        raise RewardError(f"reward function must return numbers: {e}") from None


# ---------------------------------------------------------------- built-in rewards


@lru_cache(maxsize=1)
def _vader():
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError:
        raise RewardError("the vader_positive reward needs vaderSentiment: pip install 'rankloop[sentiment]'") from None
    return SentimentIntensityAnalyzer()


def vader_positive(prompts: list[str], responses: list[str]) -> list[float]:
    """VADER compound sentiment of each response, in [−1, 1] (positive = happier text)."""
    an = _vader()
    return [an.polarity_scores(r)["compound"] if r.strip() else 0.0 for r in responses]


def length(prompts: list[str], responses: list[str]) -> list[float]:
    """Number of words / 10: a toy, easy-to-exploit reward for smoke tests."""
    return [len(r.split()) / 10.0 for r in responses]


def nan_reward(prompts: list[str], responses: list[str]) -> list[float]:
    """Always NaN: exercises the non-finite guard."""
    return [math.nan for _ in responses]
