"""Fixtures for rankloop's tests, benchmarks and examples — kept out of the pipeline's modules.

- ``tiny_tokenizer`` / ``build_tiny``: a real BPE tokenizer and a real, randomly initialised Hugging
  Face model of a given family (GPT-2, Llama, Qwen2, BERT), small enough for a test;
- ``synthetic_rankings``: K-way rankings with a learnable rule. Each candidate is a short sentence
  built from words of the tiny tokenizer's corpus; its true quality is (#good words − #bad words)
  plus noise in the word mix, and candidates are ranked by it (equal quality → one tie group), so
  a reward model can learn the rule from the text alone;
- ``nan_reward``: a reward that is always NaN, to exercise the non-finite guard;
- ``wait_for_project``: the project a human-mode loop step serves, once its items are loaded.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Literal

import torch

from rankloop.models import Arch, tiny_config, train_tokenizer
from rankloop.records import CandidateText, RankedExample, Ranking

_TINY_TEXT = (
    "the cat sat on the mat. a dog ran in the park and was happy. she likes warm bread and tea. "
    "good morning! this is great, thank you so much. i hate rain, it is awful and sad. "
    "once upon a time there was a little bird who sang every day. 0123456789 ,.;:!?'\"()-\n"
)


def tiny_tokenizer(vocab_size: int = 320):
    """A small real BPE tokenizer for tests (trained in well under a second)."""
    return train_tokenizer([_TINY_TEXT] * 4, vocab_size=vocab_size)


def build_tiny(save_dir: str | Path, arch: Arch = "gpt2", kind: Literal["causal", "reward"] = "causal",
               seed: int = 0, **config_kwargs) -> Path:
    """Build a randomly initialised tiny model and its tokenizer, saved so ``from_pretrained`` loads it."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    tok = tiny_tokenizer()
    cfg = tiny_config(arch, vocab_size=len(tok), pad_token_id=tok.pad_token_id, **config_kwargs)
    torch.manual_seed(seed)
    if kind == "reward" or arch == "bert":
        cfg.num_labels = 1
        model = AutoModelForSequenceClassification.from_config(cfg)
    else:
        model = AutoModelForCausalLM.from_config(cfg)
    save_dir = Path(save_dir)
    model.save_pretrained(save_dir)
    tok.save_pretrained(save_dir)
    return save_dir


# ---------------------------------------------------------------- synthetic rankings

GOOD = ["good", "great", "happy", "warm", "thank you", "sang", "likes"]
BAD = ["awful", "sad", "hate", "rain", "ran"]
NEUTRAL = ["the cat", "a dog", "the mat", "the park", "bread", "tea", "a little bird", "every day", "once upon a time"]
PROMPTS = ["tell me a story.", "how was the day?", "say something nice.", "what did the cat do?", "describe the park."]


def candidate(rng: random.Random, quality: int, words: int = 8) -> str:
    good = max(quality, 0) + rng.randint(0, 1)
    bad = good - quality
    parts = [rng.choice(GOOD) for _ in range(good)] + [rng.choice(BAD) for _ in range(bad)]
    parts += [rng.choice(NEUTRAL) for _ in range(max(words - len(parts), 1))]
    rng.shuffle(parts)
    return " " + " ".join(parts) + "."


def synthetic_rankings(n: int, k: int = 4, seed: int = 0, ties: bool = True, words: int = 8) -> list[RankedExample]:
    """``n`` K-way rankings; with ``ties`` candidates of equal quality share a tie group."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        qualities = [rng.randint(-3, 3) for _ in range(k)]
        if not ties:
            qualities = rng.sample(range(-k, k), k)
        texts = [candidate(rng, q, words) for q in qualities]
        ids = [f"c{j}" for j in range(k)]
        groups: dict[int, list[str]] = {}
        for cid, q in zip(ids, qualities):
            groups.setdefault(q, []).append(cid)
        order = [groups[q] for q in sorted(groups, reverse=True)]
        if len(order) == 1:  # a whole-list tie carries no preference: make one candidate worse
            texts[-1] = candidate(rng, qualities[-1] - 2, words)
            order = [ids[:-1], [ids[-1]]]
        pid = f"p{i}"
        out.append(RankedExample(
            prompt_id=pid, prompt=rng.choice(PROMPTS),
            candidates=[CandidateText(id=c, text=t) for c, t in zip(ids, texts)],
            ranking=Ranking(prompt_id=pid, order=order, labeler="synthetic"),
        ))
    return out


# ---------------------------------------------------------------- rewards


def nan_reward(prompts: list[str], responses: list[str]) -> list[float]:
    """Always NaN: exercises the non-finite guard."""
    return [math.nan for _ in responses]


def wait_for_project(base: str, name: str, items: int, errors: list, timeout: float, poll: float = 0.1):
    """Poll the labeling app at ``base`` (logged in as the loop's admin, ``admin`` / ``admin-pw-123``)
    until project ``name`` holds ``items`` items: the project dict, or None at ``timeout`` seconds or
    once the loop's thread has put an exception in ``errors``. Returns ``(client, project)``."""
    import time

    from rankloop.labeling.client import LabelingClient

    admin, project, deadline = LabelingClient(base), None, time.time() + timeout
    while time.time() < deadline and not errors:
        try:
            admin.login("admin", "admin-pw-123")
            project = next((p for p in admin.projects() if p["name"] == name), None)
            if project and admin.progress(project["id"])["items"] == items:
                break
        except Exception:  # noqa: BLE001 - the server is not up yet
            pass
        time.sleep(poll)
    return admin, project
