"""Richer feedback in the records, readers and trainers (issue 15 item 1): ``Rating`` and
``ratings.jsonl``, a pairwise strength and its margin, the labelers' all-bad / unsafe flags applied
by ``apply_flags`` (TRL writer, train-rm, train-dpo) and Likert scores as within-prompt orderings."""

from __future__ import annotations

import json

import pytest
from rich.console import Console

from rankloop.io import DataError, ReadStats, read_preferences, read_ratings, write_ratings, write_trl
from rankloop.records import (CandidateText, RankedExample, Ranking, Rating, apply_flags, orderings_from_ratings,
                              strength_margin)


def ex(order, prompt_id="p", all_bad=False, unsafe=False, unsafe_ids=(), k=None, **kw) -> RankedExample:
    ids = sorted({c for g in order for c in (g if isinstance(g, list) else [g])})
    return RankedExample(prompt_id=prompt_id, prompt="Say something.", candidates=[CandidateText(id=c, text=f"answer {c}")
                                                                                   for c in ids],
                         ranking=Ranking(prompt_id=prompt_id, order=order, all_bad=all_bad, unsafe=unsafe,
                                         unsafe_ids=list(unsafe_ids), **kw))


def write_lines(path, rows) -> None:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")


# ---------------------------------------------------------------- strength


def test_strength_margin_follows_the_scale():
    # 8 points: four degrees a side, Llama 2's "margin small" {0, 1/3, 2/3, 1}
    assert [strength_margin(s, 8) for s in (1, 2, 3, 4)] == [0.0, 1 / 3, 2 / 3, 1.0]
    assert [strength_margin(s, 5) for s in (1, 2)] == [0.0, 1.0]
    assert strength_margin(1, 3) == 0.0  # one degree a side: no margin to give
    r = Ranking(prompt_id="p", order=["a", "b"], strength=3, strength_scale=8)
    assert r.margin == pytest.approx(2 / 3)
    assert Ranking(prompt_id="p", order=["a", "b"]).margin is None
    # an imported strength on its source's (unknown) scale is kept, but stands for no margin
    kept = Ranking(prompt_id="p", order=[["a", "b"]], strength=7)
    assert kept.strength == 7 and kept.margin is None


@pytest.mark.parametrize("kw, message", [
    (dict(order=[["a", "b"]], strength=1, strength_scale=5), "strict pairwise choice"),
    (dict(order=["a", "b", "c"], strength=1, strength_scale=5), "strict pairwise choice"),
    (dict(order=["a", "b"], strength=3, strength_scale=5), "1 … 2 on a 5-point scale"),
    (dict(order=["a", "b"], strength=0, strength_scale=5), "1 … 2 on a 5-point scale"),
    (dict(order=["a", "b"], strength_scale=11), "strength_scale must be one of"),
    (dict(order=["a", "b"], unsafe_ids=["z"]), "unsafe_ids names candidate(s) not in the ranking"),
])
def test_bad_strength_or_unsafe_ids_are_refused(kw, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Ranking(prompt_id="p", **kw)


def test_strength_rows_round_trip_and_give_the_pairs_margin(tmp_path):
    row = {"prompt_id": "p", "prompt": "Q?", "candidates": [{"id": "a", "text": "yes"}, {"id": "b", "text": "no"}],
           "ranking": [["a"], ["b"]], "labeler": "x", "strength": 2, "strength_scale": 8}
    write_lines(tmp_path / "r.jsonl", [row, {**row, "margin": 0.25}])
    a, b = read_preferences(tmp_path / "r.jsonl")
    assert a.margin == pytest.approx(1 / 3) and a.comparisons()[0].margin == pytest.approx(1 / 3)
    assert b.margin == 0.25  # a margin given explicitly is kept
    assert a.to_row()["strength"] == 2 and a.to_row()["strength_scale"] == 8
    write_trl(tmp_path / "trl.jsonl", [a])
    assert json.loads((tmp_path / "trl.jsonl").read_text())["margin"] == pytest.approx(1 / 3)
    write_lines(tmp_path / "bad.jsonl", [row, {**row, "strength": 9}])
    with pytest.raises(DataError, match=r"bad\.jsonl:2: .*1 … 4 on a 8-point scale"):
        read_preferences(tmp_path / "bad.jsonl")


# ---------------------------------------------------------------- flags


def test_all_bad_rankings_make_no_pair_when_dropped():
    rows = [ex(["a", "b"], all_bad=True), ex(["a", "b"])]
    assert apply_flags(rows, all_bad="keep") == rows
    assert apply_flags(rows, all_bad="drop") == [rows[1]]
    assert apply_flags(rows) is not rows and apply_flags(rows)[0] is rows[0]  # unchanged rows are the same objects


def test_an_unsafe_candidate_is_never_chosen():
    top = ex(["u", "b", "c"], unsafe_ids=["u"])  # unsafe at the top: taken out
    middle = ex(["a", "u", "c"], unsafe_ids=["u"])
    last = ex([["a"], ["b"], ["c", "u"]], unsafe_ids=["u"])  # last: chosen over nothing, its pairs (a > u, b > u) stay
    pair_chosen = ex(["u", "b"], unsafe_ids=["u"])
    pair_rejected = ex(["a", "u"], unsafe_ids=["u"])
    unknown = ex(["a", "b"], unsafe=True)  # unsafe, not saying which: dropped whole
    assert top.ranking.unsafe  # naming an unsafe candidate flags the ranking
    got = apply_flags([top, middle, last, pair_chosen, pair_rejected, unknown], unsafe="never_chosen")
    assert [g.ranking.order for g in got] == [[["b"], ["c"]], [["a"], ["c"]], [["a"], ["b"], ["c", "u"]], [["a"], ["u"]]]
    assert [c.id for c in got[0].candidates] == ["b", "c"]
    assert got[2] is last and got[3] is pair_rejected
    chosen = {c.chosen for g in got for c in g.comparisons()}
    assert "answer u" not in chosen
    assert len(apply_flags([top, middle, unknown], unsafe="keep")) == 3
    with pytest.raises(ValueError, match="unsafe must be"):
        apply_flags([top], unsafe="drop")


def test_trl_writer_applies_the_flags_by_default(tmp_path):
    rows = [ex(["a", "b"], all_bad=True), ex(["a", "u", "c"], unsafe_ids=["u"]), ex(["a", "b"], unsafe=True)]
    assert write_trl(tmp_path / "t.jsonl", rows) == 1  # only a > c
    assert write_trl(tmp_path / "t.jsonl", rows, all_bad="keep", unsafe="keep") == 1 + 3 + 1


# ---------------------------------------------------------------- ratings


def rating(cid, score, labeler="x", prompt_id="p", **kw) -> Rating:
    return Rating(prompt_id=prompt_id, candidate_id=cid, score=score, labeler=labeler, prompt="Q?", text=f"text {cid}", **kw)


def test_ratings_file_round_trips_and_bad_rows_name_file_and_line(tmp_path):
    good = [rating("a", 7, labels=["Hallucination"], comment="fine"), Rating(prompt_id="p", candidate_id="b", acceptable=False)]
    assert write_ratings(tmp_path / "ok.jsonl", good) == 2
    back = read_ratings(tmp_path / "ok.jsonl")
    assert [r.to_row() for r in back] == [r.to_row() for r in good]
    assert back[1].source == f"{tmp_path / 'ok.jsonl'}:2"
    assert "source" not in (tmp_path / "ok.jsonl").read_text()
    base = {"prompt_id": "p", "candidate_id": "a"}
    bad = [
        ({**base, "score": 8}, "score must be a Likert rating 1 … 7"),
        ({**base, "score": 0}, "score must be a Likert rating 1 … 7"),
        (base, "needs at least one of score, acceptable, labels or comment"),
        ({**base, "labels": ["x", "x"]}, "labels repeated"),
        ({**base, "labels": [" "]}, "labels[0] is empty"),
        ({**base, "score": 3, "colour": "red"}, "colour"),
        ({**base, "score": 3, "text": "  "}, "candidate text is empty"),
        ({"candidate_id": "a", "score": 3}, "prompt_id"),
        ("{not json", "not valid JSON"),
        ([1, 2], "expected a JSON object"),
    ]
    for row, message in bad:
        write_lines(tmp_path / "bad.jsonl", [good[0].to_row(), row])
        with pytest.raises(DataError) as e:
            read_ratings(tmp_path / "bad.jsonl")
        assert str(e.value).startswith(f"{tmp_path / 'bad.jsonl'}:2: ") and message in str(e.value), (row, str(e.value))
    write_lines(tmp_path / "notext.jsonl", [good[0].to_row(), {**base, "score": 3}])
    with pytest.raises(DataError, match=r"notext\.jsonl:2: .*needs 'prompt' and 'text'"):
        read_ratings(tmp_path / "notext.jsonl", need_texts=True)
    stats = ReadStats()
    assert len(read_ratings(tmp_path / "notext.jsonl", need_texts=True, skip_invalid=True, stats=stats)) == 1
    assert stats.skipped == 1


def test_likert_scores_become_orderings_per_labeler_and_prompt():
    rs = [rating("a", 6), rating("b", 2), rating("c", 6), rating("d", 4),
          rating("a", 3, labeler="y"), rating("b", 3, labeler="y"),  # one score only: no ordering
          rating("a", 5, prompt_id="q"), rating("b", 1, prompt_id="q"), rating("b", 7, prompt_id="q"),  # later stands
          Rating(prompt_id="p", candidate_id="e", acceptable=True, labeler="x")]  # no score: left out
    got = {(o.prompt_id, o.ranking.labeler): o for o in orderings_from_ratings(rs)}
    assert set(got) == {("p", "x"), ("q", "x")}
    assert got[("p", "x")].ranking.order == [["a", "c"], ["d"], ["b"]]
    assert got[("q", "x")].ranking.order == [["b"], ["a"]]
    assert got[("p", "x")].candidates[0].text == "text a"


# ---------------------------------------------------------------- trainers on a tiny model


def test_trainers_apply_flags_and_read_ratings(tmp_path, tiny_gpt2):
    from rankloop.dpo.config import DPOConfig
    from rankloop.io import write_rankings
    from rankloop.reward.config import RewardTrainConfig
    from rankloop.reward.train import load_data

    rows = [ex(["a", "b", "c"], prompt_id="p1", all_bad=True), ex(["a", "b"], prompt_id="p2", strength=3, strength_scale=8),
            ex(["u", "b"], prompt_id="p3", unsafe_ids=["u"])]
    write_rankings(tmp_path / "r.jsonl", rows)
    write_ratings(tmp_path / "ratings.jsonl", [rating("a", 6), rating("b", 2), rating("c", 4)])
    console = Console(quiet=True)
    rm = load_data(RewardTrainConfig(data=str(tmp_path / "r.jsonl"), model=str(tiny_gpt2), output=str(tmp_path / "o")), console)
    assert len(rm.train) == 2  # the all-bad ranking kept (relative quality), the unsafe-chosen pair dropped
    assert [len(e.ranks) for e in rm.train] == [3, 2]
    assert [e.margin for e in rm.train] == [None, pytest.approx(2 / 3)]  # the strength is the pair's margin
    rm = load_data(RewardTrainConfig(data=str(tmp_path / "r.jsonl"), model=str(tiny_gpt2), output=str(tmp_path / "o"),
                                     ratings=str(tmp_path / "ratings.jsonl"), unsafe="keep"), console)
    assert len(rm.train) == 4 and rm.train[-1].ranks == [0, 1, 2]  # a (6) > c (4) > b (2), from the Likert scores
    dpo = load_data(DPOConfig(data=str(tmp_path / "r.jsonl"), model=str(tiny_gpt2), output=str(tmp_path / "o")), console)
    assert len(dpo.train) == 1  # DPO: the all-bad ranking makes no "chosen", nor does the unsafe one
    write_rankings(tmp_path / "bad.jsonl", [rows[0]])
    with pytest.raises(DataError, match="no valid rankings"):
        load_data(DPOConfig(data=str(tmp_path / "bad.jsonl"), model=str(tiny_gpt2), output=str(tmp_path / "o")), console)
    with pytest.raises(DataError, match="no ranking left to evaluate on after the labelers' flags"):
        load_data(DPOConfig(data=str(tmp_path / "r.jsonl"), eval_data=str(tmp_path / "bad.jsonl"), model=str(tiny_gpt2),
                            output=str(tmp_path / "o")), console)
    keep = load_data(DPOConfig(data=str(tmp_path / "r.jsonl"), model=str(tiny_gpt2), output=str(tmp_path / "o"),
                               all_bad="keep", unsafe="keep"), console)
    assert len(keep.train) == 3


def test_train_rm_runs_on_rankings_plus_ratings(tmp_path, tiny_gpt2):
    from rankloop.io import write_rankings
    from rankloop.reward.config import RewardTrainConfig
    from rankloop.reward.train import train_reward_model

    write_rankings(tmp_path / "r.jsonl", [ex(["a", "b"], prompt_id=f"p{i}") for i in range(4)])
    write_ratings(tmp_path / "ratings.jsonl", [rating(c, s, prompt_id=f"q{i}") for i in range(4) for c, s in (("a", 5), ("b", 1))])
    out = train_reward_model(RewardTrainConfig(data=str(tmp_path / "r.jsonl"), ratings=str(tmp_path / "ratings.jsonl"),
                                               model=str(tiny_gpt2), output=str(tmp_path / "rm"), batch_size=4,
                                               progress=False, normalise_on="none", log_every=1))
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    assert sum(1 for r in rows if "loss" in r) == 2  # 8 rankings (4 + 4 from ratings) at batch 4
