"""A labeler's day (issue 15 item 3) through the REST API, on SQLite and PostgreSQL: skip, edits
that supersede, progress, time on task, one's own password."""

from __future__ import annotations

import pytest
from labhelp import best_first, labeler, make_records
from sqlalchemy import select
from sqlalchemy.orm import Session

from rankloop.labeling.client import LabelingError
from rankloop.labeling.models import Skip, Slot


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


# ------------------------------------------------------------------ corrections within a window


def reversed_order(task):
    return list(reversed(best_first(task)))


def test_edit_supersedes_keeps_history_and_export_uses_current(tc, admin, app):
    import json

    p = project(admin, n=1, k=3, overlap=2)
    a, b = labeler(tc, admin, "a", p["id"]), labeler(tc, admin, "b", p["id"])
    ta, tb = a.next_task(), b.next_task()
    first = a.submit(ta["task_id"], best_first(ta))
    b.submit(tb["task_id"], best_first(tb))
    assert admin.agreement(p["id"])["pairwise_agreement"] == 1.0
    (mine,) = a.my_rankings(p["id"])
    assert mine["ranking_id"] == first["ranking_id"] and mine["editable"] and mine["project_name"] == "day"
    fixed = a.edit_ranking(first["ranking_id"], reversed_order(ta), idempotency_key="fix-1", rationale="misread")
    assert fixed["supersedes_id"] == first["ranking_id"] and fixed["duplicate"] is False
    assert a.edit_ranking(first["ranking_id"], reversed_order(ta), idempotency_key="fix-1")["duplicate"] is True
    # agreement and consensus see the correction, not what it replaced
    assert admin.agreement(p["id"])["pairwise_agreement"] == 0.0
    assert admin.progress(p["id"])["rankings"] == 2 and admin.progress(p["id"])["corrections"] == 1
    # the old row is kept, marked not current; the export writes current rows unless asked
    raw = {r["id"]: r for r in admin.rankings(p["id"])}
    assert raw[first["ranking_id"]]["current"] is False and raw[fixed["ranking_id"]]["current"] is True
    assert raw[fixed["ranking_id"]]["task_id"] == ta["task_id"]  # a correction answers the same task
    rows = [json.loads(x) for x in admin.export(p["id"]).splitlines()]
    assert len(rows) == 2 and all(r["current"] for r in rows)
    ann = next(r for r in rows if r["labeler"] == "a")
    assert ann["ranking_id"] == fixed["ranking_id"] and ann["supersedes"] == first["ranking_id"]
    assert ann["ranking"] == reversed_order(ta) and ann["rationale"] == "misread"
    full = [json.loads(x) for x in admin.export(p["id"], include_superseded=True).splitlines()]
    assert len(full) == 3 and [r["current"] for r in full if r["labeler"] == "a"] == [False, True]
    trl = admin.export(p["id"], format="trl", include_superseded=True).splitlines()
    assert len(trl) == 2 * 3  # TRL pairs come from the two current rankings only
    # a superseded ranking cannot be edited again; the current one can
    with pytest.raises(LabelingError) as e:
        a.edit_ranking(first["ranking_id"], best_first(ta))
    assert e.value.status == 409 and "already corrected" in e.value.detail
    again = a.edit_ranking(fixed["ranking_id"], best_first(ta))
    assert again["supersedes_id"] == fixed["ranking_id"]
    (mine,) = a.my_rankings(p["id"])
    assert mine["ranking_id"] == again["ranking_id"]


def test_edit_refused_outside_window_for_others_and_when_invalid(tc, admin, app):
    from datetime import timedelta

    from rankloop.labeling.models import RankingRow

    p = project(admin, n=2, k=3, overlap=1, edit_window_seconds=60)
    closed = project(admin, n=1, k=3, overlap=1, name="closed", edit_window_seconds=0)
    a, b = labeler(tc, admin, "a", p["id"]), labeler(tc, admin, "b", p["id"])
    admin.add_member(closed["id"], "a")
    t = a.next_task(p["id"])
    r = a.submit(t["task_id"], best_first(t))
    with pytest.raises(LabelingError) as e:
        b.edit_ranking(r["ranking_id"], best_first(t))
    assert e.value.status == 404
    with pytest.raises(LabelingError) as e:
        a.edit_ranking(r["ranking_id"], [["zzz"]])
    assert e.value.status == 422 and "permutation" in e.value.detail
    with Session(app.state.engine) as db:  # the submission was made 61 s ago
        row = db.get(RankingRow, r["ranking_id"])
        row.created_at = row.created_at - timedelta(seconds=61)
        db.commit()
    with pytest.raises(LabelingError) as e:
        a.edit_ranking(r["ranking_id"], reversed_order(t))
    assert e.value.status == 409 and "edit window" in e.value.detail
    assert not a.my_rankings(p["id"])[0]["editable"]
    tc_ = a.next_task(closed["id"])
    rc = a.submit(tc_["task_id"], best_first(tc_))
    with pytest.raises(LabelingError) as e:
        a.edit_ranking(rc["ranking_id"], reversed_order(tc_))
    assert e.value.status == 409
    assert admin.create_project("x", edit_window_seconds=600)["edit_window_seconds"] == 600


# ------------------------------------------------------------------ progress, time on task, project name


def test_my_progress_counts_today_project_remaining(tc, admin):
    p = project(admin, n=4, k=3, overlap=1)
    other = project(admin, n=2, k=3, overlap=1, name="other")
    a = labeler(tc, admin, "a", p["id"])
    admin.add_member(other["id"], "a")
    assert a.my_progress(p["id"]) == {"project_id": p["id"], "project_name": "day", "done_today": 0, "done": 0,
                                      "remaining": 4, "skipped": 0}
    t = a.next_task(p["id"])
    assert t["project_name"] == "day"
    assert a.my_progress(p["id"])["remaining"] == 4  # the held task still counts
    r = a.submit(t["task_id"], best_first(t))
    a.edit_ranking(r["ranking_id"], reversed_order(t))  # a correction is not one more done
    a.skip(a.next_task(p["id"])["task_id"], "unclear")
    assert a.my_progress(p["id"]) == {"project_id": p["id"], "project_name": "day", "done_today": 1, "done": 1,
                                      "remaining": 2, "skipped": 1}
    assert a.my_progress(other["id"])["remaining"] == 2
    b = labeler(tc, admin, "b")
    with pytest.raises(LabelingError) as e:
        b.my_progress(p["id"])
    assert e.value.status == 404


def test_time_on_task_recorded_and_exported(tc, admin):
    import json

    p = project(admin, n=1, k=3, overlap=1)
    a = labeler(tc, admin, "a", p["id"])
    t = a.next_task()
    body = {"order": best_first(t), "idempotency_key": "k1", "active_seconds": 4.25}
    a._call("POST", f"/api/tasks/{t['task_id']}/submit", json=body)
    (row,) = [json.loads(x) for x in admin.export(p["id"]).splitlines()]
    assert row["active_seconds"] == 4.25 and 0 <= row["time_on_task"] < 60
    (raw,) = admin.rankings(p["id"])
    assert raw["time_on_task"] == pytest.approx(row["time_on_task"], abs=1e-3)
    with pytest.raises(LabelingError) as e:
        a._call("POST", f"/api/tasks/{t['task_id']}/submit", json={**body, "active_seconds": -1})
    assert e.value.status == 422


# ------------------------------------------------------------------ one's own password


def test_own_password_change_needs_current_and_revokes_other_sessions(tc, admin):
    from rankloop.labeling.client import LabelingClient

    a = labeler(tc, admin, "a", password="first-password")
    other = LabelingClient(tc)
    other.login("a", "first-password")
    with pytest.raises(LabelingError) as e:
        a.change_password("wrong-password", "second-password")
    assert e.value.status == 422 and "current password is wrong" in e.value.detail
    with pytest.raises(LabelingError) as e:
        a.change_password("first-password", "short")
    assert e.value.status == 422
    a.change_password("first-password", "second-password")
    assert a.me()["username"] == "a"  # this session stays
    with pytest.raises(LabelingError) as e:
        other.me()
    assert e.value.status == 401  # the other one ended
    with pytest.raises(LabelingError):
        LabelingClient(tc).login("a", "first-password")
    LabelingClient(tc).login("a", "second-password")


# ------------------------------------------------------------------ markdown, safely (render.py)


ATTACKS = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    '<div onclick="alert(1)">raw block</div>\n\ntext',
    "<!-- comment --><style>body{display:none}</style>",
    "[x](javascript:alert(1))",
    "[x](JaVaScRiPt:alert(1))",
    "[x](java&#115;cript:alert(1))",
    "[x](data:text/html;base64,PHNjcmlwdD4=)",
    '<a href="javascript:alert(1)">a</a>',
    "![pixel](https://tracker.example/p.png)",
    '[t](https://e.org "x\\" onmouseover=\\"alert(1)")',
    "<https://auto.example/link>",
]


def elements(html: str) -> list[tuple[str, dict]]:
    from html.parser import HTMLParser

    out: list[tuple[str, dict]] = []

    class P(HTMLParser):
        def handle_starttag(self, tag, attrs):
            out.append((tag, dict(attrs)))

    P().feed(html)
    return out


@pytest.mark.parametrize("attack", ATTACKS)
def test_markdown_renders_attacks_inert(attack):
    from rankloop.labeling.render import TAGS, to_html

    html = to_html(attack)
    for tag, attrs in elements(html):
        assert tag in TAGS and tag not in ("script", "img", "style", "div", "iframe"), html
        assert not any(a.startswith("on") or a in ("style", "src") and tag not in ("th", "td") for a in attrs), html
        if tag == "a":
            assert attrs["href"].split(":")[0] in ("http", "https", "mailto"), html
            assert attrs["rel"] == "noopener noreferrer nofollow" and attrs["target"] == "_blank"
    assert "<!--" not in html


def test_markdown_code_links_direction():
    from rankloop.labeling.render import markdown, to_html

    html = to_html("Use `x`:\n\n```\nprint(1)\n```\n\n[docs](https://example.org) مرحبا\nnext line")
    assert "<pre><code" in html and "print(1)" in html and "<code>x</code>" in html
    assert 'rel="noopener noreferrer nofollow"' in html and 'target="_blank"' in html
    assert html.count('dir="auto"') >= 2 and "<br" in html  # a single newline is a line break
    assert markdown("**b**") == markdown("**b**") and str(markdown(None)) == ""


def _ann_on_the_task_page(tc, admin, n: int):
    """A project of ``n`` items (k 3) with labeler ann, logged in through the login form (the
    browser's way, cookies in ``tc``) and sent to her first task: (the project, the task page,
    its task id, the page's CSRF token)."""
    import re

    p = project(admin, n=n, k=3, overlap=1)
    admin.create_user("ann", "ann-password")
    admin.add_member(p["id"], "ann")
    token = re.search(r'name="csrf_token" value="([^"]+)"', tc.get("/login").text).group(1)
    tc.post("/login", data={"username": "ann", "password": "ann-password", "csrf_token": token})
    page = tc.get("/label", follow_redirects=True)
    task = str(page.url).rsplit("/", 1)[1].split("?")[0]
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    return p, page, task, csrf


def test_task_page_forms_need_csrf_and_name_the_project(tc, admin):
    _, page, task, csrf = _ann_on_the_task_page(tc, admin, n=2)
    assert 'id="project-name" dir="auto">day<' in page.text and "Remaining for you: <strong>2</strong>" in page.text
    assert tc.post(f"/label/{task}/skip", data={"reason": "unclear"}, follow_redirects=False).status_code == 403
    r = tc.post(f"/label/{task}/skip", data={"reason": "", "csrf_token": csrf})
    assert r.status_code == 422  # a blank reason: the page again, with why
    r = tc.post(f"/label/{task}/skip", data={"reason": "unclear", "note": "?", "csrf_token": csrf}, follow_redirects=False)
    assert r.status_code == 303 and "notice=skipped" in r.headers["location"]
    assert tc.post("/account/password", data={"current_password": "ann-password", "new_password": "x" * 9,
                                              "new_password_again": "x" * 9}).status_code == 403
    r = tc.post("/account/password", data={"current_password": "ann-password", "new_password": "x" * 9,
                                           "new_password_again": "y" * 9, "csrf_token": csrf})
    assert "the two new passwords differ" in r.text
    assert "My recent submissions" in tc.get("/label/recent").text


# ------------------------------------------------------------------ the schema change (migration 0004)


def test_migration_0004_upgrades_a_0002_database_and_downgrades(db_url):
    """A 0002 database with a ranking upgrades in place (edit window 600, the ranking current); a
    correction (no slot of its own) and a skip can then be stored; downgrading to 0002 drops them
    and keeps the original."""
    from alembic import command
    from sqlalchemy import inspect, text

    from labhelp import OLD_NOW as now, database_at, seed_answered_slot

    cfg, engine = database_at(db_url, "0002")
    with engine.begin() as c:
        seed_answered_slot(c, "ranking")
        # (no explicit id: PostgreSQL's sequence would not know it was taken)
        first = c.execute(text("INSERT INTO rankings (slot_id, project_id, item_id, labeler_id, ranking, all_bad, unsafe, "
                               f"idempotency_key, is_gold, created_at) VALUES (1, 1, 1, 1, '[]', false, false, 'k', false, '{now}') "
                               "RETURNING id")).scalar_one()
    command.upgrade(cfg, "0004")
    with engine.begin() as c:
        assert c.execute(text("SELECT edit_window_seconds FROM projects")).scalar_one() == 600
        c.execute(text("INSERT INTO rankings (slot_id, project_id, item_id, labeler_id, ranking, all_bad, unsafe, idempotency_key, "
                       f"is_gold, created_at, supersedes_id) VALUES (NULL, 1, 1, 1, '[]', false, false, 'k2', false, '{now}', {first})"))
        c.execute(text(f"INSERT INTO skips (project_id, item_id, slot_id, labeler_id, reason, created_at) VALUES (1, 1, 1, 1, 'other', '{now}')"))
    from sqlalchemy.exc import IntegrityError

    with pytest.raises(IntegrityError), engine.begin() as c:  # a ranking is superseded at most once
            c.execute(text("INSERT INTO rankings (slot_id, project_id, item_id, labeler_id, ranking, all_bad, unsafe, "
                           f"idempotency_key, is_gold, created_at, supersedes_id) VALUES (NULL, 1, 1, 1, '[]', false, false, 'k3', "
                           f"false, '{now}', {first})"))
    with pytest.raises(IntegrityError), engine.begin() as c:  # a slot is still answered once
            c.execute(text("INSERT INTO rankings (slot_id, project_id, item_id, labeler_id, ranking, all_bad, unsafe, "
                           f"idempotency_key, is_gold, created_at) VALUES (1, 1, 1, 1, '[]', false, false, 'k4', false, '{now}')"))
    command.downgrade(cfg, "0002")
    assert "skips" not in inspect(engine).get_table_names()
    with engine.begin() as c:
        assert c.execute(text("SELECT id FROM rankings")).scalars().all() == [first]
    command.upgrade(cfg, "heads")
    engine.dispose()


def test_exported_app_fields_read_back():
    """``rankings.jsonl`` rows with the app's fields parse back into the same record (and rows
    without them are written as before)."""
    from rankloop.records import CandidateText, RankedExample, Ranking

    cands = [CandidateText(id="a", text="x"), CandidateText(id="b", text="y")]
    r = RankedExample(prompt_id="q", prompt="p", candidates=cands,
                      ranking=Ranking(prompt_id="q", order=[["b"], ["a"]], ranking_id=7, supersedes=3, current=True,
                                      time_on_task=12.5, active_seconds=9.0))
    row = r.to_row()
    assert {k: row[k] for k in ("ranking_id", "supersedes", "current", "time_on_task", "active_seconds")} == {
        "ranking_id": 7, "supersedes": 3, "current": True, "time_on_task": 12.5, "active_seconds": 9.0}
    assert RankedExample.model_validate(row) == r
    plain = RankedExample(prompt_id="q", prompt="p", candidates=cands, ranking=Ranking(prompt_id="q", order=[["a"], ["b"]]))
    assert set(plain.to_row()) == {"prompt_id", "prompt", "candidates", "ranking", "labeler"}


def test_edit_page_form_without_the_script(tc, admin):
    import json
    import re

    p, page, task, csrf = _ann_on_the_task_page(tc, admin, n=1)
    ids = sorted(re.findall(r'<li class="card" data-id="([^"]+)"', page.text))
    tc.post(f"/label/{task}", data={"order": json.dumps([[i] for i in ids]), "idempotency_key": "k1", "csrf_token": csrf})
    (rid,) = [r["id"] for r in admin.rankings(p["id"])]
    page = tc.get(f"/label/edit/{rid}")
    assert page.status_code == 200 and f'action="/label/edit/{rid}"' in page.text and 'id="skip-box"' not in page.text
    assert f"data-order=\"{json.dumps([[i] for i in ids]).replace(chr(34), '&#34;')}\"" in page.text
    r = tc.post(f"/label/edit/{rid}", data={"order": json.dumps([ids[::-1]]), "idempotency_key": "k2", "csrf_token": csrf},
                follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/label/recent?notice=edited"
    assert admin.rankings(p["id"])[-1]["order"] == [ids[::-1]] and admin.rankings(p["id"])[-1]["supersedes_id"] == rid
    r = tc.post(f"/label/edit/{rid}", data={"order": json.dumps([ids]), "idempotency_key": "k3", "csrf_token": csrf})
    assert r.status_code == 409 and "already corrected" in r.text
    assert tc.get(f"/label/edit/{rid}").status_code == 409
