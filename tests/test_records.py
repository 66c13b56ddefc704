"""Records: rankings with tie groups, derived comparisons, and the validation of every row."""

import pytest
from pydantic import ValidationError

from rankloop.records import CandidateText, Comparison, RankedExample, Ranking, render_prompt


def ex(order, ids=("a", "b", "c"), **kw):
    return RankedExample(prompt_id="p", prompt="q?", candidates=[CandidateText(id=i, text=f"text {i}") for i in ids],
                         ranking=Ranking(prompt_id="p", order=order), **kw)


def test_flat_order_and_tie_groups():
    r = Ranking(prompt_id="p", order=["c3", ["c1", "c4"], "c2"])
    assert r.order == [["c3"], ["c1", "c4"], ["c2"]] and r.k == 4
    assert r.rank_of() == {"c3": 0, "c1": 1, "c4": 1, "c2": 2}
    # C(4,2) − C(2,2) = 5 pairs; the tied c1/c4 make none.
    assert sorted(r.pairs()) == sorted([("c3", "c1"), ("c3", "c4"), ("c3", "c2"), ("c1", "c2"), ("c4", "c2")])


@pytest.mark.parametrize("k", [2, 4, 9])
def test_k_way_ranking_gives_k_choose_2_comparisons(k):
    ids = [f"c{i}" for i in range(k)]
    e = ex(ids, ids=ids)
    comps = e.comparisons()
    assert len(comps) == k * (k - 1) // 2
    assert all(isinstance(c, Comparison) for c in comps)


def test_whole_list_tie_gives_no_comparison():
    assert ex([["a", "b", "c"]]).comparisons() == []


@pytest.mark.parametrize("order, ids, msg", [
    (["a", "b", "z"], ("a", "b", "c"), "unknown candidate"),
    (["a", "a", "b"], ("a", "b", "c"), "more than once"),
    (["a"], ("a",), "K >= 2"),
    (["a", "b"], ("a", "b", "c"), "not a permutation"),
    (["a", "b", "c"], ("a", "b", "b"), "repeated"),
    ([["a"], [], ["b", "c"]], ("a", "b", "c"), "tie group is empty"),
])
def test_bad_rankings_say_what_is_wrong(order, ids, msg):
    with pytest.raises(ValidationError, match=msg):
        ex(order, ids=ids)


def test_bad_comparisons():
    with pytest.raises(ValidationError, match="equals"):
        Comparison(prompt="q", chosen="same", rejected="same")
    with pytest.raises(ValidationError, match="empty"):
        Comparison(prompt="q", chosen="  ", rejected="x")
    with pytest.raises(ValidationError, match="finite"):
        Comparison(prompt="q", chosen="a", rejected="b", margin=float("nan"))
    with pytest.raises(ValidationError, match="finite"):
        ex(["a", "b", "c"], margin=float("inf"))
    with pytest.raises(ValidationError, match="empty"):
        CandidateText(id="x", text="")


def test_row_round_trip_and_k2_from_comparison():
    e = ex(["b", ["a", "c"]], margin=0.5)
    again = RankedExample.model_validate(e.to_row())
    assert again.ranking.order == e.ranking.order and again.margin == 0.5
    texts, ranks = again.texts_in_rank_order()
    assert texts[0] == "text b" and ranks == [0, 1, 1]
    k2 = RankedExample.from_comparison(Comparison(prompt="q", chosen="good", rejected="bad"), prompt_id="x")
    assert k2.k == 2 and k2.texts_in_rank_order() == (["good", "bad"], [0, 1])


def test_render_prompt_hh_style():
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}, {"role": "user", "content": "joke?"}]
    assert render_prompt(msgs) == "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: joke?\n\nAssistant:"
    assert render_prompt("plain") == "plain"


def test_rendered_prompt_is_a_str_that_keeps_its_content():
    import copy
    import json
    import pickle

    from rankloop.records import Prompt, RenderedPrompt, prompt_content

    msgs = [{"role": "user", "content": "hi"}]
    r = RenderedPrompt("<s>user: hi</s><s>assistant:", msgs)
    assert isinstance(r, str) and r == "<s>user: hi</s><s>assistant:" and json.dumps([r]) == json.dumps([str(r)])
    for again in (pickle.loads(pickle.dumps(r)), copy.deepcopy(r)):
        assert again == r and again.content == msgs
    assert prompt_content(r) == msgs and prompt_content(Prompt(id="p", messages=msgs)) == msgs
    assert prompt_content("plain") == "plain" and prompt_content(msgs) is msgs


def test_identical_texts_are_one_text_class_and_no_comparison():
    from rankloop.records import text_classes

    assert text_classes(["x", "y", "x", "z", "y"]) == [0, 1, 0, 3, 1]
    e = RankedExample(prompt_id="p", prompt="q?", ranking=Ranking(prompt_id="p", order=["a", "b", "c"]),
                      candidates=[CandidateText(id="a", text="same"), CandidateText(id="b", text="other"),
                                  CandidateText(id="c", text="same")])
    assert [(c.chosen, c.rejected) for c in e.comparisons()] == [("same", "other"), ("other", "same")]
