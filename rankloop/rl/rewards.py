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

Several rewards with weights (``load_rewards``) make a ``WeightedReward``, which keeps each one's
values for the metrics. A function that takes a ``meta`` argument also gets each prompt's ``meta``.

Built in: ``rankloop.rl.rewards:vader_positive`` (positive sentiment by the VADER lexicon, the
``vaderSentiment`` package), ``rankloop.rl.rewards:length`` (a toy reward for tests),
``rankloop.rl.rewards:exact_answer`` (verifiable: 1 when the response's answer equals the prompt's
``meta["answer"]``), and ``arithmetic_task`` (a generated task with known answers).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import random
import re
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from pathlib import Path
from typing import Callable, Sequence

RewardFn = Callable[[list[str], list[str]], Sequence[float]]


class RewardError(ValueError):
    """A reward that cannot be loaded or returned something other than one number per response;
    ``row`` is the first bad response's index when there is one."""

    def __init__(self, message: str, row: int | None = None):
        super().__init__(message)
        self.row = row


def load_reward(spec: str | Path | RewardFn, *, batch_size: int = 32, normalise: bool = True,
                device: str | None = None, offload_to: str | None = None) -> RewardFn:
    """Resolve a reward spec to a function ``(prompts, responses) -> list[float]``. A reward model
    is placed on ``device`` (default the CPU); with ``offload_to`` it is moved there for each
    scoring call and back to ``device`` after (``RLConfig.offload``)."""
    if callable(spec):
        return spec
    s = str(spec)
    path = Path(s)
    if path.is_dir():
        return _reward_model(path, batch_size=batch_size, normalise=normalise, device=device, offload_to=offload_to)
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


def _reward_model(path: Path, *, batch_size: int, normalise: bool, device: str | None,
                  offload_to: str | None = None) -> RewardFn:
    if not (path / "config.json").exists():
        raise RewardError(f"{path} is a directory but holds no config.json: not a reward model")
    try:
        from rankloop.reward.model import RewardScorer
    except ImportError as e:
        raise RewardError(f"reward-model directories need rankloop.reward.model.RewardScorer ({e})") from None
    scorer = RewardScorer.from_pretrained(path, device=str(device or "cpu"))

    def score(prompts: list[str], responses: list[str]) -> list[float]:
        if offload_to is None:
            return scorer.score(prompts, responses, batch_size=batch_size, normalise=normalise).tolist()
        import torch

        home = scorer.device
        scorer.model.to(offload_to)
        scorer.device = torch.device(offload_to)
        try:
            return scorer.score(prompts, responses, batch_size=batch_size, normalise=normalise).tolist()
        finally:
            scorer.model.to(home)
            scorer.device = home

    score.__name__ = f"reward_model({path})"
    return score


def call_reward(fn: RewardFn, prompts: list[str], responses: list[str],
                meta: list[dict] | None = None) -> list[float]:
    """Call ``fn`` and check it returned one number per response (non-finite values are kept:
    the caller's guard reports them with the step). ``meta`` (one prompt ``meta`` per response) is
    passed to functions that take a ``meta`` argument (verifiable rewards)."""
    out = fn(prompts, responses, meta=meta) if meta is not None and takes_meta(fn) else fn(prompts, responses)
    if hasattr(out, "tolist"):
        out = out.tolist()
    out = list(out)
    if len(out) != len(responses):
        raise RewardError(f"reward function returned {len(out)} values for {len(responses)} responses")
    return reward_numbers(out)


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


# ---------------------------------------------------------------- several rewards, verifiable rewards


def reward_numbers(values: list) -> list[float]:
    """``values`` as floats; the first non-number is named with its response index."""
    out = []
    for i, x in enumerate(values):
        try:
            if isinstance(x, (bool, str, bytes)):
                raise TypeError
            out.append(float(x))
        except (TypeError, ValueError):
            raise RewardError(f"reward function returned a non-number {x!r} for response {i}", row=i) from None
    return out


def takes_meta(fn: RewardFn) -> bool:
    """Whether ``fn`` accepts a ``meta`` keyword (the prompts' ``meta`` dicts)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "meta" or p.kind is p.VAR_KEYWORD for p in params)


def reward_name(spec: str | Path | RewardFn) -> str:
    """A short name for the metrics: the function's name, or the reward model's directory name."""
    if callable(spec):
        return getattr(spec, "__name__", type(spec).__name__)
    s = str(spec)
    if Path(s).is_dir():
        return Path(s).name
    return s.rpartition(":")[2]


class WeightedReward:
    """Σ_i w_i · r_i(prompts, responses) over several rewards (e.g. a reward model plus a format
    check). After each call ``last`` holds every component's own values, for the metrics."""

    def __init__(self, components: list[tuple[str, RewardFn, float]]):
        names = [n for n, _, _ in components]
        self.components = [(f"{n}_{names[:i].count(n)}" if names.count(n) > 1 else n, fn, float(w))
                           for i, (n, fn, w) in enumerate(components)]
        self.required_meta = tuple(k for _, fn, _ in components for k in getattr(fn, "required_meta", ()))
        self.last: dict[str, list[float]] = {}
        self.__name__ = "+".join(f"{w:g}*{n}" for n, _, w in self.components)

    def __call__(self, prompts: list[str], responses: list[str], meta: list[dict] | None = None) -> list[float]:
        self.last = {}
        total = [0.0] * len(responses)
        for name, fn, w in self.components:
            try:
                values = call_reward(fn, prompts, responses, meta)
            except RewardError as e:
                raise RewardError(f"reward {name!r}: {e}", row=e.row) from None
            self.last[name] = values
            total = [t + w * v for t, v in zip(total, values)]
        return total


def load_rewards(spec: str | Path | RewardFn | list, weights: list[float] | None = None, **kw) -> RewardFn:
    """One reward spec (as ``load_reward``) or a list of them, summed with ``weights`` (default 1
    each) into a ``WeightedReward``."""
    if not isinstance(spec, (list, tuple)):
        if weights is None or list(weights) == [1.0]:
            return load_reward(spec, **kw)
        spec = [spec]
    if not spec:
        raise RewardError("the list of rewards is empty")
    weights = [1.0] * len(spec) if weights is None else list(weights)
    if len(weights) != len(spec):
        raise RewardError(f"{len(weights)} reward weights for {len(spec)} rewards: give one weight per reward")
    return WeightedReward([(reward_name(s), load_reward(s, **kw), w) for s, w in zip(spec, weights)])


def check_reward_meta(fn: RewardFn, metas: list[dict], ids: list[str]) -> None:
    """Before any sampling: every prompt has the ``meta`` fields the reward needs (e.g. ``answer``)."""
    for key in getattr(fn, "required_meta", ()):
        missing = [pid for pid, m in zip(ids, metas) if key not in (m or {})]
        if missing:
            raise RewardError(f"reward {reward_name(fn)!r} needs meta[{key!r}] on every prompt; "
                              f"{len(missing)} of {len(ids)} prompts lack it (first: id {missing[0]!r})")


_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+]?\.\d+")


def normalise_answer(text: str) -> str:
    """What an answer is compared as: case, spaces, surrounding ``$``/quotes and a final full stop
    do not matter; a number is canonical (``1,000`` = ``1000``, ``+5`` = ``5.0`` = ``5``,
    ``0.50`` = ``.5``, ``-0`` = ``0``)."""
    s = " ".join(str(text).strip().split()).strip("$\"'` ").rstrip(".").strip().lower()
    if _NUMBER.fullmatch(s):
        try:
            d = Decimal(s.replace(",", ""))
        except InvalidOperation:
            return s
        if d == d.to_integral_value():
            return str(int(d))
        return format(d.normalize(), "f")
    return s


def final_answer(response: str) -> str:
    """The answer a response gives: after the last ``####`` (GSM8K), inside the last ``\\boxed{}``,
    after "answer is"/"answer:", else the first number of its first line, else that line."""
    if "####" in response:
        return response.rsplit("####", 1)[1].strip().split("\n")[0]
    boxed = re.findall(r"\\boxed\{([^{}]*)\}", response)
    if boxed:
        return boxed[-1]
    m = re.search(r"answer\s*(?:is|:)\s*(.+)", response, flags=re.IGNORECASE)
    line = (m.group(1) if m else response).strip().split("\n")[0]
    num = _NUMBER.search(line)
    return num.group(0) if num and not m else line


def exact_answer(prompts: list[str], responses: list[str], meta: list[dict]) -> list[float]:
    """Verifiable reward: 1.0 when the response's final answer equals the prompt's ``meta["answer"]``
    after ``normalise_answer``, else 0.0."""
    return [float(normalise_answer(final_answer(r)) == normalise_answer(str(m["answer"])))
            for r, m in zip(responses, meta)]


exact_answer.required_meta = ("answer",)  # type: ignore[attr-defined]


def arithmetic_task(n: int, seed: int = 0, max_operand: int = 20, ops: str = "+-") -> list:
    """``n`` prompts "a + b =" with ``meta["answer"]``: a small task with a known answer for the
    verifiable reward (``rankloop.rl.rewards:exact_answer``)."""
    from rankloop.records import Prompt

    rng = random.Random(seed)
    out = []
    for i in range(n):
        a, b, op = rng.randint(0, max_operand), rng.randint(0, max_operand), rng.choice(ops)
        answer = {"+": a + b, "-": a - b, "*": a * b}[op]
        out.append(Prompt(id=f"arith-{i}", text=f"{a} {op} {b} =", meta={"answer": str(answer)}))
    return out
