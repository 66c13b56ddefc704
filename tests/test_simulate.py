"""Simulated labelers: the noise calibration (math) and the real labeling app end to end."""

import math
import random

import pytest

from rankloop.corpus import TOPICS, format_prompt, generate_response, gold_score, gold_scores
from rankloop.records import Candidate, Prompt
from rankloop.simulate import (
    SimulatedLabeler,
    calibrate_sigma,
    expected_agreement,
    label_project,
    pairwise_agreement,
)


def test_expected_agreement_by_hand():
    # One pair with gap d: p = Φ(d / (σ√2)); agreement = p² + (1 − p)².
    assert expected_agreement([[1.0, 0.0]], 0.0) == 1.0
    assert expected_agreement([[0.5, 0.5]], 0.0) == 0.5
    p = 0.5 * (1 + math.erf(1.0 / (1.0 * math.sqrt(2) * math.sqrt(2))))
    assert expected_agreement([[1.0, 0.0]], 1.0) == pytest.approx(p * p + (1 - p) ** 2)
    # Agreement falls towards 1/2 as the noise grows.
    a = [expected_agreement([[0, 1, 2, 3]], s) for s in (0.1, 1, 10, 1000)]
    assert a == sorted(a, reverse=True) and a[-1] == pytest.approx(0.5, abs=1e-3)


def test_calibrate_hits_target():
    rng = random.Random(0)
    groups = [[rng.gauss(0, 1) for _ in range(4)] for _ in range(50)]
    sigma = calibrate_sigma(groups, 0.73)
    assert sigma > 0
    assert expected_agreement(groups, sigma) == pytest.approx(0.73, abs=1e-6)


def test_pairwise_agreement():
    assert pairwise_agreement([["a"], ["b"], ["c"]], [["a"], ["b"], ["c"]]) == 1.0
    assert pairwise_agreement([["a"], ["b"], ["c"]], [["c"], ["b"], ["a"]]) == 0.0
    assert pairwise_agreement([["a", "b"], ["c"]], [["a"], ["b"], ["c"]]) == pytest.approx(2 / 3)


def test_labeler_ranks_by_gold_without_noise():
    lab = SimulatedLabeler("x", sigma=0.0, gold=gold_scores)
    p = format_prompt("tell me about cats.")
    good = " the cat is lovely. i love the kitten, it is so sweet. thank you for asking about the cats."
    bad = " that is a stupid question. go away."
    dup = bad
    order = lab.rank(p, [("b", bad), ("g", good), ("d", dup)])
    assert order == [["g"], ["b", "d"]]
    assert gold_score(p, good) > gold_score(p, bad)


def _items(n: int, k: int = 4, seed: int = 0):
    rng = random.Random(seed)
    topics = list(TOPICS)
    prompts, cands = [], []
    for i in range(n):
        t = topics[i % len(topics)]
        p = Prompt(id=f"p{i}", text=format_prompt(f"tell me about {t}."), meta={"topic": t})
        prompts.append(p)
        for j in range(k):
            cands.append(Candidate(id=f"p{i}-{j}", prompt_id=p.id, text=generate_response(rng, t)[0], policy="corpus"))
    return prompts, cands


def test_simulated_labelers_through_the_app(tmp_path):
    """Rankings go in through the REST API and come out through export, agreeing ≈ 73%."""
    from fastapi.testclient import TestClient

    from rankloop.io import read_preferences
    from rankloop.labeling.app import create_app
    from rankloop.labeling.client import LabelingClient
    from rankloop.labeling.export import export_project

    url = f"sqlite:///{tmp_path / 'labels.db'}"
    prompts, cands = _items(120)
    by_prompt = {}
    for c in cands:
        by_prompt.setdefault(c.prompt_id, []).append(gold_score(prompts[int(c.prompt_id[1:])], c.text))
    sigma = calibrate_sigma(list(by_prompt.values()), 0.73)

    with TestClient(create_app(url, admin=("admin", "admin-pass-123"))) as http:
        admin = LabelingClient(http)
        admin.login("admin", "admin-pass-123")
        project = admin.create_project("sim", k=4, overlap=2)
        admin.import_candidates(project["id"], prompts, cands)
        labelers = [SimulatedLabeler(f"sim-{i}", sigma, gold_scores, seed=1) for i in range(3)]
        stats = label_project(admin, project["id"], labelers, password="labeler-pass-123")
        progress = admin.progress(project["id"])
    assert stats["submitted"] == 240
    assert progress["slots_done"] == progress["slots"] == 240

    info = export_project(url, "sim", tmp_path / "rankings.jsonl", tmp_path / "trl.jsonl")
    assert info["rankings_exported"] == 240
    rows = read_preferences(tmp_path / "rankings.jsonl")
    by_item: dict[str, list] = {}
    for r in rows:
        by_item.setdefault(r.prompt_id, []).append(r.ranking.order)
    agreements = [pairwise_agreement(a, b) for a, b in by_item.values()]
    measured = sum(agreements) / len(agreements)
    # 120 items × 6 pairs: the standard error is about 0.02.
    assert measured == pytest.approx(0.73, abs=0.07), measured
    assert stats["app_pairwise_agreement"] == pytest.approx(measured, abs=0.02)
    # The labelers ranked as the gold preference would, more often than not.
    lab = SimulatedLabeler("check", 0.0, gold_scores)
    gold_agree = [pairwise_agreement(lab.rank(r.prompt, [(c.id, c.text) for c in r.candidates]), r.ranking.order)
                  for r in rows]
    # (p² + (1 − p)² = 0.73 gives p ≈ 0.84 when every pair is equally hard.)
    assert sum(gold_agree) / len(gold_agree) > 0.75


def _items_with_copies(n: int, k: int = 4, copy_rate: float = 0.3, seed: int = 0):
    """n items of k candidates; each candidate after the first repeats an earlier one's text with
    probability ``copy_rate`` (tiny policies often write the same answer twice)."""
    rng = random.Random(seed)
    items, gold = [], {}
    for i in range(n):
        texts = []
        for j in range(k):
            if j and rng.random() < copy_rate:
                texts.append(rng.choice(texts))
            else:
                texts.append(f"item {i} answer {j}")
                gold[texts[-1]] = rng.gauss(0.0, 1.0)
        items.append(texts)
    return items, gold


def test_calibration_counts_copies_as_agreeing():
    """Both labelers tie two copies of one text, so that pair always agrees: with 30 % copies the
    measured agreement still matches the target (it came out 0.753 for 0.73 when copies were
    counted as agreeing half the time)."""
    items, gold = _items_with_copies(3000)
    assert 0.25 < sum(len(set(t)) < len(t) for t in items) / len(items)  # many items hold a copy
    groups = [[gold[t] for t in texts] for texts in items]
    sigma = calibrate_sigma(groups, 0.73, texts=items)
    assert expected_agreement(groups, sigma, texts=items) == pytest.approx(0.73, abs=1e-6)
    score = lambda prompts, responses: [gold[r] for r in responses]
    a, b = (SimulatedLabeler(name, sigma, score, seed=3) for name in ("a", "b"))
    measured = []
    for i, texts in enumerate(items):
        cands = [(f"{i}-{j}", t) for j, t in enumerate(texts)]
        measured.append(pairwise_agreement(a.rank("p", cands), b.rank("p", cands)))
    # 3000 items × 6 pairs: the standard error is about 0.003.
    assert sum(measured) / len(measured) == pytest.approx(0.73, abs=0.01)
    # Without the texts the copies count as coin flips and σ comes out too small.
    assert calibrate_sigma(groups, 0.73) < sigma


# ---------------------------------------------------------------- simulated demonstrators (issue 12.4)


def test_demonstrator_submits_its_perceived_best_draft():
    from rankloop.corpus import write_answer
    from rankloop.simulate import SimulatedDemonstrator

    prompts = [format_prompt(f"tell me about the {t}.") for t in list(TOPICS)[:6]] * 10
    exact = SimulatedDemonstrator("d0", 0.0, gold_scores, write_answer, drafts=4, seed=1)
    # σ = 0: the gold-best of exactly the drafts it wrote (the same seeded stream, replayed)
    replay = random.Random("d0:1")
    for p in prompts[:12]:
        drafts = [write_answer(replay, p) for _ in range(4)]
        [replay.gauss(0.0, 0.0) for _ in drafts]  # the perception draws keep the streams in step
        assert exact.demonstrate(p) == max(drafts, key=lambda d: gold_score(p, d))
    # better than a typical corpus answer by the gold preference, and worse with more noise
    rng = random.Random(7)
    typical = sum(gold_score(p, write_answer(rng, p)) for p in prompts) / len(prompts)
    mean = {}
    for s in (0.0, 100.0):
        d = SimulatedDemonstrator("d", s, gold_scores, write_answer, seed=2)
        mean[s] = sum(gold_score(p, d.demonstrate(p)) for p in prompts) / len(prompts)
    assert mean[0.0] > typical + 0.3, (mean, typical)
    assert mean[100.0] < mean[0.0] - 0.3, mean


def test_demonstrator_needs_a_corpus_topic_and_a_draft():
    from rankloop.corpus import write_answer
    from rankloop.simulate import SimulatedDemonstrator

    with pytest.raises(ValueError, match="names none of the corpus's topics"):
        SimulatedDemonstrator("d", 0.1, gold_scores, write_answer).demonstrate("Q: what is 2 + 2?\nA:")
    with pytest.raises(ValueError, match="drafts must be at least 1"):
        SimulatedDemonstrator("d", 0.1, gold_scores, write_answer, drafts=0)
