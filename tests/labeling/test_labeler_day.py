"""A labeler's day (issue 15 item 3) through the REST API, on SQLite and PostgreSQL: skip, edits
that supersede, progress, time on task, one's own password."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from rankloop.labeling.client import LabelingError
from rankloop.labeling.models import Skip, Slot
from labhelp import best_first, labeler, make_records


def project(admin, n=3, k=3, overlap=1, gold=None, gold_rate=0.0, name="day", **kw):
    p = admin.create_project(name, k=k, overlap=overlap, gold_rate=gold_rate, instructions="Rank them.", **kw)
    prompts, cands = make_records(n, k, prefix=name)
    admin.import_candidates(p["id"], prompts, cands, gold=gold)
    return p


def rows(app, model):
    with Session(app.state.engine) as db:
        return db.execute(select(model).order_by(model.id)).scalars().all()


# ------------------------------------------------------------------ skip


def test_skip_returns_the_slot_to_the_pool_never_to_the_same_labeler(tc, admin, app):
    p = project(admin, n=2, overlap=1)
    a, b = labeler(tc, admin, "a", p["id"]), labeler(tc, admin, "b", p["id"])
    t = a.next_task()
    out = a.skip(t["task_id"], "unclear", note="what is 'it' in the prompt?")
    assert out["duplicate"] is False and out["task_id"] == t["task_id"]
    assert a.skip(t["task_id"], "unclear")["duplicate"] is True  # a retry is stored once
    t2 = a.next_task()
    assert t2["prompt_id"] != t["prompt_id"]  # the skipped item is not offered to a again
    a.submit(t2["task_id"], best_first(t2))
    assert a.next_task() is None  # the only item left is the one a skipped
    tb = b.next_task()
    assert tb["task_id"] == t["task_id"] and tb["prompt_id"] == t["prompt_id"]  # the same slot, now b's
    b.submit(tb["task_id"], best_first(tb))
    (s,) = rows(app, Skip)
    assert (s.reason, s.note, s.slot_id, s.project_id) == ("unclear", "what is 'it' in the prompt?", t["task_id"], p["id"])
    prog = admin.progress(p["id"])
    assert prog["skips"] == 1 and prog["skip_reasons"] == {"unclear": 1}
    assert {u["username"]: u["skipped"] for u in prog["labelers"]}["a"] == 1


def test_skip_a_gold_task_drops_its_slot_and_serves_another(tc, admin, app):
    p = project(admin, n=3, overlap=1, gold={"day0": [["day0-c0"], ["day0-c1"], ["day0-c2"]]}, gold_rate=1.0)
    a = labeler(tc, admin, "a", p["id"])
    t = a.next_task()
    assert t["prompt_id"] == "day0"  # gold first at rate 1
    a.skip(t["task_id"], "other")
    assert t["task_id"] not in {s.id for s in rows(app, Slot)}  # the per-labeler gold slot is gone
    t2 = a.next_task()
    assert t2["prompt_id"] != "day0"


def test_skip_refuses_what_is_not_yours_answered_or_badly_given(tc, admin):
    p = project(admin, n=2, overlap=1)
    a, b = labeler(tc, admin, "a", p["id"]), labeler(tc, admin, "b", p["id"])
    t = a.next_task()
    with pytest.raises(LabelingError) as e:
        b.skip(t["task_id"], "unclear")
    assert e.value.status == 404 and "not yours" in e.value.detail
    for bad in ("", "   ", "x" * 65, "two\nlines"):
        with pytest.raises(LabelingError) as e:
            a.skip(t["task_id"], bad)
        assert e.value.status == 422
    with pytest.raises(LabelingError) as e:
        a.skip(t["task_id"], "other", note="n" * 1001)
    assert e.value.status == 422
    a.submit(t["task_id"], best_first(t))
    with pytest.raises(LabelingError) as e:
        a.skip(t["task_id"], "unclear")
    assert e.value.status == 409 and "already submitted" in e.value.detail


def test_skip_works_in_pairwise_mode_and_with_overlap(tc, admin):
    p = project(admin, n=1, k=2, overlap=2, mode="pairwise")
    a, b, c = (labeler(tc, admin, n, p["id"]) for n in "abc")
    ta = a.next_task()
    a.skip(ta["task_id"], "expertise")
    tb, tc_ = b.next_task(), c.next_task()
    assert {tb["task_id"], tc_["task_id"]} >= {ta["task_id"]} and tb["task_id"] != tc_["task_id"]
    assert a.next_task() is None
