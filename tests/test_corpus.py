"""The generated corpus and the gold preference (hand-worked values), and cached pre-training."""

import math
from collections import Counter

import pytest

from rankloop.corpus import (
    GOLD_WEIGHTS,
    TARGET_WORDS,
    TOPICS,
    format_prompt,
    generate_corpus,
    gold_score,
    gold_terms,
    make_prompts,
    topic_of,
)

P = format_prompt("tell me about cats.")


def test_corpus_has_variety_and_is_deterministic():
    a = generate_corpus(2000, seed=3)
    assert a == generate_corpus(2000, seed=3)
    assert a != generate_corpus(2000, seed=4)
    tones = Counter(e.tone for e in a)
    assert set(tones) == {"positive", "neutral", "negative", "rude"} and min(tones.values()) > 150
    lengths = [len(e.response.split()) for e in a]
    assert min(lengths) <= 5 and max(lengths) >= 40
    assert len({e.topic for e in a}) == len(TOPICS)
    scores = [gold_score(e.prompt, e.response) for e in a]
    mean = sum(scores) / len(scores)
    sd = math.sqrt(sum((s - mean) ** 2 for s in scores) / len(scores))
    assert sd > 0.5  # preferences between texts are far from ties


def test_gold_terms_by_hand():
    r = " the cat is lovely. i saw the rain."  # 8 words, one positive, 1 of 2 sentences on topic
    t = gold_terms(P, r)
    assert t["tone"] == pytest.approx(math.tanh(0.5))
    assert t["relevance"] == pytest.approx(0.5)
    assert t["length"] == pytest.approx(abs(8 - TARGET_WORDS) / TARGET_WORDS)
    assert t["repetition"] == 0.0 and t["unfinished"] == 0.0
    expected = sum(w * t[k] for k, w in GOLD_WEIGHTS.items())
    assert gold_score(P, r) == pytest.approx(expected)


def test_gold_prefers_what_it_documents():
    kind = " the cat is lovely and gentle. i love the kitten, it is so sweet. thank you for asking about the cats."
    rude = " that is a stupid question. go away. i do not care about the cats."
    off = " the stars are lovely and gentle. i love the moon, it is so sweet. thank you for asking about the rocket."
    repeat = " the cat is lovely. the cat is lovely. the cat is lovely. the cat is lovely."
    trailing = " the cat is lovely and gentle. i love the kitten, it is so sweet. thank you for asking about the"
    assert gold_score(P, kind) > gold_score(P, rude)
    assert gold_score(P, kind) > gold_score(P, off)
    assert gold_score(P, kind) > gold_score(P, repeat)
    assert gold_score(P, kind) > gold_score(P, trailing)
    # Tone saturates: a pile of kind words gains little, and repeating them costs.
    spam = " lovely lovely lovely lovely lovely lovely lovely lovely lovely lovely lovely lovely."
    assert gold_terms(P, spam)["tone"] > 0.99
    assert gold_score(P, spam) < gold_score(P, kind)


def test_topic_and_prompts():
    assert topic_of(P) == "cats"
    assert topic_of(format_prompt("describe coffee for me.")) == "coffee"
    train, held = make_prompts(seed=0, n_train=50, n_eval=20)
    assert len(train) == 50 and len(held) == 20
    assert not {p.text for p in train} & {p.text for p in held}  # held-out questions are unseen
    assert all(topic_of(p) == p.meta["topic"] for p in train + held)


def test_pretrain_is_cached(tmp_path, monkeypatch):
    from rankloop.models import load_causal_lm, load_tokenizer
    from rankloop.pretrain import PretrainConfig, pretrain

    monkeypatch.setenv("RANKLOOP_CACHE", str(tmp_path))
    cfg = PretrainConfig(corpus_size=300, vocab_size=320, hidden=32, layers=1, heads=2, steps=5, batch_size=4)
    d = pretrain(cfg, progress=False)
    assert (d / "DONE").exists() and d.parent.parent == tmp_path
    stamp = (d / "model.safetensors").stat().st_mtime_ns
    assert pretrain(cfg, progress=False) == d
    assert (d / "model.safetensors").stat().st_mtime_ns == stamp  # not trained again
    tok = load_tokenizer(d)
    model = load_causal_lm(d, tokenizer=tok)
    assert tok.bos_token_id == 1 and tok.eos_token_id == 2
    assert model.config.vocab_size == len(tok)
