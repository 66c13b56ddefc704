"""Synthetic K-way rankings with a learnable rule, for tests, benchmarks and examples.

Each candidate is a short sentence built from words of the tiny test tokenizer's corpus; its true
quality is (#good words − #bad words) plus noise in the word mix, and candidates are ranked by it
(equal quality → one tie group). A reward model can learn the rule from the text alone.
"""

from __future__ import annotations

import random

from rankloop.records import CandidateText, RankedExample, Ranking

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
