"""Richer feedback (issue 15 item 1) through the REST API, on SQLite and PostgreSQL: a project's
feedback settings, a pairwise strength, per-candidate ratings and unsafe candidates — checked
against the settings, stored, listed and exported (rankings, TRL, ratings) and read back by the
trainers' readers."""

from __future__ import annotations

import json

import pytest

from rankloop.io import read_preferences, read_ratings
from rankloop.labeling.client import LabelingError
from rankloop.records import Rating, RankedExample
from labhelp import labeler, make_records

LABELS = ["Fails to follow the instruction", "Hallucination", "Harmful"]
FULL = {"strength_scale": 5, "acceptability": True, "likert": True, "labels": LABELS, "comments": True}


def jsonl(text: str) -> list[dict]:
    return [json.loads(ln) for ln in text.splitlines() if ln.strip()]


def pairwise_project(admin, feedback=FULL, n=2, name="pairs"):
    p = admin.create_project(name, mode="pairwise", overlap=1, feedback=feedback)
    prompts, cands = make_records(n, 2)
    admin.import_candidates(p["id"], prompts, cands)
    return p


def test_settings_are_checked_stored_and_shown_on_the_task(tc, admin):
    p = pairwise_project(admin)
    assert p["feedback"] == FULL
    with pytest.raises(LabelingError) as e:  # a strength is a pairwise judgement's
        admin.create_project("ranked", k=3, feedback={"strength_scale": 5})
    assert e.value.status == 422 and "strength_scale" in str(e.value) and "pairwise" in str(e.value)
    for bad, what in (({"strength_scale": 11}, "strength_scale"), ({"labels": ["a", "a"]}, "repeated"),
                      ({"labels": ["x\ny"]}, "control"), ({"likert": True, "colour": "red"}, "colour")):
        with pytest.raises(LabelingError) as e:
            admin.create_project("bad", mode="pairwise", feedback=bad)
        assert e.value.status == 422 and what in str(e.value), (bad, str(e.value))
    plain = admin.create_project("plain", k=3)
    assert plain["feedback"] is None
    a = labeler(tc, admin, "a", p["id"])
    t = a.next_task()
    assert t["feedback"] == FULL  # the page and scripts know what to ask
    changed = admin.set_feedback(p["id"], strength_scale=8, likert=True)
    assert changed["feedback"]["strength_scale"] == 8 and changed["feedback"]["labels"] == []
    with pytest.raises(LabelingError) as e:
        admin.set_feedback(plain["id"], strength_scale=8)
    assert e.value.status == 422 and "pairwise" in str(e.value)


def test_strength_and_ratings_are_stored_listed_and_exported(tc, admin, tmp_path):
    p = pairwise_project(admin)
    a = labeler(tc, admin, "a", p["id"])
    t = a.next_task()
    x, y = (c["id"] for c in t["candidates"])
    ratings = [{"candidate_id": x, "score": 6, "acceptable": True, "labels": [], "comment": "  clear and right  "},
               {"candidate_id": y, "score": 2, "acceptable": False, "labels": ["Hallucination", "Harmful"]}]
    a.submit(t["task_id"], [[x], [y]], strength=2, ratings=ratings, unsafe_ids=[y])
    t2 = a.next_task()
    u, v = (c["id"] for c in t2["candidates"])
    a.submit(t2["task_id"], [[u, v]])  # a tie: no strength, no ratings

    rows = admin.rankings(p["id"])
    first = next(r for r in rows if r["task_id"] == t["task_id"])
    assert (first["strength"], first["strength_scale"], first["margin"]) == (2, 5, 1.0)
    assert first["unsafe"] and first["unsafe_ids"] == [y]
    tie = next(r for r in rows if r["task_id"] == t2["task_id"])
    assert tie["strength"] is None and tie["margin"] is None and not tie["unsafe"]

    listed = admin.ratings(p["id"])
    assert [(r["candidate_id"], r["score"], r["acceptable"], r["labels"], r["comment"]) for r in listed] == [
        (x, 6, True, [], "clear and right"), (y, 2, False, ["Hallucination", "Harmful"], None)]
    assert {r["labeler"] for r in listed} == {"a"}

    (tmp_path / "rankings.jsonl").write_text(admin.export(p["id"], "rankings"), encoding="utf-8")
    exs = read_preferences(tmp_path / "rankings.jsonl")
    ex = next(e for e in exs if e.ranking.candidate_ids == [x, y])
    assert (ex.ranking.strength, ex.ranking.strength_scale, ex.margin) == (2, 5, 1.0)
    assert ex.ranking.unsafe and ex.ranking.unsafe_ids == [y]

    trl = jsonl(admin.export(p["id"], "trl"))  # x chosen over the unsafe y: kept, with the strength's margin
    assert len(trl) == 1 and trl[0]["margin"] == 1.0

    (tmp_path / "ratings.jsonl").write_text(admin.export(p["id"], "ratings"), encoding="utf-8")
    back = read_ratings(tmp_path / "ratings.jsonl", need_texts=True)
    texts = {c["id"]: c["text"] for c in t["candidates"]}
    assert [(r.candidate_id, r.score, r.text, r.prompt, r.labeler) for r in back] == [
        (x, 6, texts[x], t["prompt"], "a"), (y, 2, texts[y], t["prompt"], "a")]


def test_submission_is_checked_against_the_settings(tc, admin):
    p = pairwise_project(admin, feedback={"strength_scale": 8, "likert": True, "labels": LABELS})
    a = labeler(tc, admin, "a", p["id"])
    t = a.next_task()
    x, y = (c["id"] for c in t["candidates"])
    strict = [[x], [y]]
    cases = [
        (dict(order=strict), "strength: this project asks how much better"),
        (dict(order=strict, strength=5), "at most 4 on this project's 8-point scale"),
        (dict(order=[[x, y]], strength=1), "a tie has no strength"),
        (dict(order=strict, strength=1, ratings=[{"candidate_id": x, "acceptable": True}]), "acceptable: this project asks for no"),
        (dict(order=strict, strength=1, ratings=[{"candidate_id": x, "comment": "no"}]), "no per-candidate comments"),
        (dict(order=strict, strength=1, ratings=[{"candidate_id": x, "labels": ["Rude"]}]), "labels: not among this project's labels"),
        (dict(order=strict, strength=1, ratings=[{"candidate_id": x, "score": 3}, {"candidate_id": x, "score": 4}]),
         "rated twice"),
        (dict(order=strict, strength=1, ratings=[{"candidate_id": "elsewhere", "score": 3}]), "not a candidate shown"),
        (dict(order=strict, strength=1, unsafe_ids=["elsewhere"]), "unsafe_ids: not shown"),
        (dict(order=strict, strength=1, ratings=[{"candidate_id": x, "score": 8}]), "less than or equal to 7"),
    ]
    for kw, message in cases:
        with pytest.raises(LabelingError) as e:
            a.submit(t["task_id"], **kw)
        assert e.value.status == 422 and message in str(e.value), (kw, str(e.value))
    # nothing was stored, and the task is still the labeler's to answer
    assert admin.rankings(p["id"]) == [] and a.next_task()["task_id"] == t["task_id"]
    a.submit(t["task_id"], strict, strength=4, ratings=[{"candidate_id": y, "score": 1, "labels": ["Harmful"]}])
    [row] = admin.rankings(p["id"])
    assert (row["strength"], row["strength_scale"], row["margin"]) == (4, 8, 1.0)

    plain = admin.create_project("plain", mode="pairwise")
    prompts, cands = make_records(1, 2, prefix="q")
    admin.import_candidates(plain["id"], prompts, cands)
    admin.add_member(plain["id"], "a")
    t = a.next_task(plain["id"])
    ids = [c["id"] for c in t["candidates"]]
    for kw, message in ((dict(strength=1), "takes no preference strength"),
                        (dict(ratings=[{"candidate_id": ids[0], "score": 5}]), "asks for no Likert rating")):
        with pytest.raises(LabelingError) as e:
            a.submit(t["task_id"], [[ids[0]], [ids[1]]], **kw)
        assert e.value.status == 422 and message in str(e.value)


def test_all_bad_and_unsafe_reach_the_exports_and_keep_bad_pairs_out_of_trl(tc, admin, tmp_path):
    p = admin.create_project("ranked", k=3, overlap=3)
    prompts, cands = make_records(1, 3)
    admin.import_candidates(p["id"], prompts, cands)
    a, b, c = (labeler(tc, admin, n, p["id"]) for n in "abc")
    order = [["p0-c0"], ["p0-c1"], ["p0-c2"]]
    a.submit(a.next_task()["task_id"], order, all_bad=True)
    b.submit(b.next_task()["task_id"], order, unsafe_ids=["p0-c1"])  # the middle one: never "chosen"
    c.submit(c.next_task()["task_id"], order, unsafe=True)  # unsafe, not saying which: no pair is safe to keep

    rows = jsonl(admin.export(p["id"], "rankings"))
    assert [(r["labeler"], r.get("all_bad", False), r.get("unsafe", False), r.get("unsafe_ids")) for r in rows] == [
        ("a", True, False, None), ("b", False, True, ["p0-c1"]), ("c", False, True, None)]

    texts = {cand.id: cand.text for cand in cands}
    pairs = {(r["chosen"], r["rejected"]) for r in jsonl(admin.export(p["id"], "trl"))}
    assert pairs == {(texts["p0-c0"], texts["p0-c2"])}  # b's c0 > c2 only: c1 was chosen over c2 and is unsafe
    every = jsonl(tc.get(f"/api/projects/{p['id']}/export", params={"format": "trl", "all_bad": "keep", "unsafe": "keep"},
                         headers={"Authorization": f"Bearer {admin.token}"}).text)
    assert len(every) == 9  # 3 rankings × C(3, 2)
    r = tc.get(f"/api/projects/{p['id']}/export", params={"format": "trl", "all_bad": "maybe"},
               headers={"Authorization": f"Bearer {admin.token}"})
    assert r.status_code == 422


def test_export_command_writes_ratings_and_applies_flags(tc, admin, db_url, tmp_path):
    from rankloop.labeling.export import export_project

    p = pairwise_project(admin, feedback={"likert": True, "strength_scale": 5}, n=1)
    a = labeler(tc, admin, "a", p["id"])
    t = a.next_task()
    x, y = (cand["id"] for cand in t["candidates"])
    a.submit(t["task_id"], [[x], [y]], strength=1, all_bad=True,
             ratings=[{"candidate_id": x, "score": 3}, {"candidate_id": y, "score": 2}])
    info = export_project(db_url, p["name"], tmp_path / "r.jsonl", tmp_path / "trl.jsonl",
                          ratings_out=tmp_path / "ratings.jsonl")
    assert info["rankings_exported"] == 1 and info["comparisons"] == 0 and info["ratings"] == 2
    assert "ranking_ids" not in info
    info = export_project(db_url, p["name"], tmp_path / "r.jsonl", tmp_path / "trl.jsonl", trl_all_bad="keep")
    assert info["comparisons"] == 1 and "ratings" not in info
    [row] = jsonl((tmp_path / "trl.jsonl").read_text())
    assert row["margin"] == 0.0  # strength 1 of 2 on a 5-point scale: the least degree
    rs = [Rating.model_validate(r) for r in jsonl((tmp_path / "ratings.jsonl").read_text())]
    assert [r.score for r in rs] == [3, 2]
    RankedExample.model_validate(jsonl((tmp_path / "r.jsonl").read_text())[0])


def test_rankloop_export_writes_ratings_and_takes_the_trl_policies(tc, admin, db_url, tmp_path):
    import typer
    from typer.testing import CliRunner

    from rankloop.labeling.cli import register

    app = typer.Typer()
    register(app)
    p = pairwise_project(admin, feedback={"likert": True}, n=1, name="cli-feedback")
    a = labeler(tc, admin, "a", p["id"])
    t = a.next_task()
    x, y = (cand["id"] for cand in t["candidates"])
    a.submit(t["task_id"], [[x], [y]], all_bad=True, ratings=[{"candidate_id": x, "score": 2}])
    db = ["--database-url", db_url]
    out = ["-o", str(tmp_path / "r.jsonl"), "--trl", str(tmp_path / "t.jsonl"), "--ratings", str(tmp_path / "ratings.jsonl")]
    r = CliRunner().invoke(app, ["export", "cli-feedback", *out, *db])
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    assert (info["comparisons"], info["ratings"]) == (0, 1)  # all bad: no "chosen"
    assert [r.score for r in read_ratings(tmp_path / "ratings.jsonl", need_texts=True)] == [2]
    r = CliRunner().invoke(app, ["export", "cli-feedback", *out, "--trl-all-bad", "keep", *db])
    assert r.exit_code == 0 and json.loads(r.output)["comparisons"] == 1
    r = CliRunner().invoke(app, ["export", "cli-feedback", *out, "--trl-unsafe", "drop", *db])
    assert r.exit_code == 2 and "never_chosen" in r.output


def test_migration_0006_upgrades_a_0002_database_with_data_and_back(db_url):
    """A database at 0002 with a ranking gains the feedback columns and the ratings table (the old
    ranking keeps its data, no strength), and downgrades back keeping the ranking."""
    from alembic import command
    from sqlalchemy import inspect, text

    from labhelp import OLD_NOW as now, database_at, seed_answered_slot

    cfg, engine = database_at(db_url, "0002")
    with engine.begin() as c:
        seed_answered_slot(c, "pairwise")
        c.execute(text("INSERT INTO rankings (id, slot_id, project_id, item_id, labeler_id, ranking, all_bad, unsafe, "
                       f"idempotency_key, is_gold, created_at) VALUES (1, 1, 1, 1, 1, '[]', true, false, 'k', false, '{now}')"))
    command.upgrade(cfg, "0006")
    with engine.begin() as c:
        assert c.execute(text("SELECT all_bad, strength, strength_scale, unsafe_ids FROM rankings")).one() == (True, None, None, None)
        assert c.execute(text("SELECT feedback FROM projects")).scalar_one() is None
        c.execute(text("INSERT INTO ratings (ranking_id, project_id, item_id, labeler_id, candidate_id, score, labels, created_at) "
                       f"VALUES (1, 1, 1, 1, 'a', 5, '[]', '{now}')"))
    uniques = {tuple(u["column_names"]) for u in inspect(engine).get_unique_constraints("rankings")}
    assert ("project_id", "labeler_id", "idempotency_key") in uniques and ("slot_id",) in uniques
    command.downgrade(cfg, "0002")
    assert "ratings" not in inspect(engine).get_table_names()
    assert "strength" not in {c["name"] for c in inspect(engine).get_columns("rankings")}
    uniques = {tuple(u["column_names"]) for u in inspect(engine).get_unique_constraints("rankings")}
    assert ("project_id", "labeler_id", "idempotency_key") in uniques and ("slot_id",) in uniques
    with engine.begin() as c:
        assert c.execute(text("SELECT count(*) FROM rankings")).scalar_one() == 1
    engine.dispose()


def test_admin_page_creates_a_project_with_feedback_settings(tc):
    import re

    from labhelp import ADMIN

    def csrf_of(html: str) -> str:
        return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)

    token = csrf_of(tc.get("/login").text)
    tc.post("/login", data={"username": ADMIN[0], "password": ADMIN[1], "csrf_token": token}, follow_redirects=False)
    page = tc.get("/admin")
    assert "More feedback" in page.text and "Hallucination" in page.text
    csrf = csrf_of(page.text)
    base = {"k": "2", "overlap": "1", "gold_rate": "0", "mode": "pairwise", "instructions": "", "csrf_token": csrf}
    r = tc.post("/admin/projects", data={**base, "name": "fb", "fb_strength_scale": "8", "fb_likert": "true",
                                         "fb_labels": "Hallucination\n\n  <b>Harmful</b>  \n"}, follow_redirects=False)
    assert r.status_code == 303, r.text
    project = tc.get(r.headers["location"])
    assert "strength on a 8-point scale" in project.text and "&lt;b&gt;Harmful&lt;/b&gt;" in project.text
    assert "<b>Harmful</b>" not in project.text  # the lead's label is text
    pid = int(r.headers["location"].rsplit("/", 1)[1])
    got = tc.get(f"/api/projects/{pid}").json()["feedback"]
    assert got == {"strength_scale": 8, "acceptability": False, "likert": True, "labels": ["Hallucination", "<b>Harmful</b>"],
                   "comments": False}
    r = tc.post("/admin/projects", data={**base, "name": "plain"}, follow_redirects=False)
    assert r.status_code == 303 and tc.get(f"/api/projects/{pid + 1}").json()["feedback"] is None
    for bad, message in (({"fb_strength_scale": "lots"}, "a number of points"), ({"fb_strength_scale": "12"}, "must be one of"),
                         ({"fb_labels": "a\na"}, "labels repeated"), ({"fb_strength_scale": "5", "mode": "ranking", "k": "3"},
                                                                      "for pairwise projects")):
        r = tc.post("/admin/projects", data={**base, "name": "bad", **bad}, follow_redirects=False)
        assert r.status_code == 422 and message in r.text, (bad, r.status_code)
