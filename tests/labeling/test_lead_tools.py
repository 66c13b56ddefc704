"""A lead's tools (issue 15 item 4), through the REST API on SQLite and PostgreSQL: invite links,
live project settings, the review queue and the reviewer role, qualification and pausing, the
per-labeler dashboard; and who may do what."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select

from labhelp import best_first, labeler, make_records
from rankloop.labeling.client import LabelingClient, LabelingError
from rankloop.labeling.models import Invite, LabelerState, RankingRow, Slot, User
from rankloop.labeling.services.qualification import evaluate
from rankloop.records import RankedExample


def project(admin, n=4, k=3, overlap=2, gold=None, gold_rate=0.0, name="proj"):
    p = admin.create_project(name, k=k, overlap=overlap, gold_rate=gold_rate, instructions="Rank them.")
    prompts, cands = make_records(n, k)
    admin.import_candidates(p["id"], prompts, cands, gold=gold)
    return p


def status(fn, *a, **kw) -> int:
    with pytest.raises(LabelingError) as e:
        fn(*a, **kw)
    return e.value.status


def slots_per_item(app, pid) -> dict[int, Counter]:
    with app.state.sessionmaker() as db:
        rows = db.execute(select(Slot.item_id, Slot.status).where(Slot.project_id == pid, Slot.slot_no.is_not(None))).all()
    out: dict[int, Counter] = defaultdict(Counter)
    for item, st in rows:
        out[item][st] += 1
    return out


# ---------------------------------------------------------------- invite links


def test_invite_link_makes_an_account_once_and_stores_only_a_hash(tc, admin, app):
    p = project(admin, n=2, overlap=1)
    inv = admin.create_invite(p["id"], role="labeler", days=7)
    secret = inv["token"]
    assert inv["path"] == f"/invite/{secret}" and inv["status"] == "open" and len(secret) >= 40
    with app.state.sessionmaker() as db:
        row = db.get(Invite, inv["id"])
        assert row.token_hash == hashlib.sha256(secret.encode()).hexdigest() and secret not in row.token_hash
    assert "token" not in admin.invites(p["id"])[0]  # never listed again

    newbie = LabelingClient(tc)
    out = newbie.accept_invite(secret, "my-own-password", username="newbie")
    assert out["user"] == {"id": out["user"]["id"], "username": "newbie", "role": "labeler", "active": True,
                           "external": False}  # an invitee is a real account, not an imported rater
    assert newbie.next_task(p["id"]) is not None  # a member of the project at once
    assert LabelingClient(tc).login("newbie", "my-own-password")  # the password they chose

    again = LabelingClient(tc)
    with pytest.raises(LabelingError) as e:
        again.accept_invite(secret, "other-password", username="second")
    assert e.value.status == 404 and "already used" in e.value.detail
    listed = admin.invites(p["id"])[0]
    assert listed["status"] == "used" and listed["used_by"] == "newbie"
    assert status(LabelingClient(tc).accept_invite, "not-a-real-secret", "whatever-pass", username="x") == 404


def test_invite_expiry_preset_username_reviewer_role_and_refusals(tc, admin, app):
    p = project(admin, n=1, overlap=1)
    old = admin.create_invite(p["id"], days=1)
    with app.state.sessionmaker() as db:
        db.get(Invite, old["id"]).expires_at = datetime.now(timezone.utc) - timedelta(seconds=1)
        db.commit()
    with pytest.raises(LabelingError) as e:
        LabelingClient(tc).accept_invite(old["token"], "password-123", username="late")
    assert e.value.status == 404 and "expired" in e.value.detail

    preset = admin.create_invite(p["id"], role="reviewer", username="rita")
    assert preset["username"] == "rita" and preset["role"] == "reviewer"
    assert status(LabelingClient(tc).accept_invite, preset["token"], "password-123", username="other") == 422
    rita = LabelingClient(tc)
    assert rita.accept_invite(preset["token"], "password-123")["user"]["role"] == "reviewer"
    assert status(admin.create_invite, p["id"], username="rita") == 409  # the account exists: no link to take it over
    assert status(LabelingClient(tc).accept_invite, admin.create_invite(p["id"])["token"], "short") == 422
    taken = admin.create_invite(p["id"])
    assert status(LabelingClient(tc).accept_invite, taken["token"], "password-123", username="rita") == 409
    assert LabelingClient(tc).accept_invite(taken["token"], "password-123", username="ok2")  # the link survived the clash
    revoked = admin.create_invite(p["id"])
    admin.revoke_invite(p["id"], revoked["id"])
    assert status(LabelingClient(tc).accept_invite, revoked["token"], "password-123", username="z") == 404
    assert status(admin.create_invite, p["id"], role="admin") == 422  # never an admin by link
    assert status(admin.create_invite, p["id"], days=0) == 422

    # who may make links: admins only
    lab = labeler(tc, admin, "lab", p["id"])
    assert status(lab.create_invite, p["id"]) == 403 and status(rita.create_invite, p["id"]) == 403
    assert status(lab.invites, p["id"]) == 403


def test_invite_page_needs_its_csrf_cookie_and_logs_in(tc, admin):
    p = project(admin, n=1, overlap=1)
    secret = admin.create_invite(p["id"])["token"]
    page = tc.get(f"/invite/{secret}")
    assert page.status_code == 200 and "Join proj" in page.text
    csrf = page.text.split('name="csrf_token" value="')[1].split('"')[0]
    form = {"username": "webby", "password": "web-password", "password2": "web-password"}
    tc.cookies.clear()
    assert tc.post(f"/invite/{secret}", data={**form, "csrf_token": csrf}, follow_redirects=False).status_code == 403
    page = tc.get(f"/invite/{secret}")
    csrf = page.text.split('name="csrf_token" value="')[1].split('"')[0]
    foreign = tc.post(f"/invite/{secret}", data={**form, "csrf_token": csrf}, headers={"sec-fetch-site": "cross-site"},
                      follow_redirects=False)
    assert foreign.status_code == 403
    csrf = foreign.text.split('name="csrf_token" value="')[1].split('"')[0]  # each form render sets a fresh one
    differ = tc.post(f"/invite/{secret}", data={**form, "password2": "other-password", "csrf_token": csrf}, follow_redirects=False)
    assert differ.status_code == 422 and "differ" in differ.text
    csrf = differ.text.split('name="csrf_token" value="')[1].split('"')[0]
    ok = tc.post(f"/invite/{secret}", data={**form, "csrf_token": csrf}, follow_redirects=False)
    assert ok.status_code == 303 and ok.headers["location"] == "/label"
    assert any(k == "set-cookie" and v.startswith("rankloop_session=") for k, v in ok.headers.multi_items())
    used = tc.get(f"/invite/{secret}")
    assert used.status_code == 410 and "already used" in used.text and "<form method=\"post\" class=\"card narrow\"" not in used.text


def test_invite_on_the_command_line(sqlite_url):
    import typer
    from typer.testing import CliRunner

    from rankloop.labeling.cli import register
    from rankloop.labeling.db import make_engine
    from sqlalchemy.orm import Session

    app = typer.Typer()
    register(app)
    run = CliRunner().invoke
    db = ["--database-url", sqlite_url]
    assert run(app, ["labeling", "create-project", "myproj", *db]).exit_code == 0
    r = run(app, ["labeling", "invite", "myproj", "--days", "7", "--base-url", "https://label.example", *db])
    assert r.exit_code == 0, r.output
    link = r.stdout.strip().splitlines()[-1]
    assert link.startswith("https://label.example/invite/")
    secret = link.rsplit("/", 1)[1]
    engine = make_engine(sqlite_url)
    with Session(engine) as s:
        (row,) = s.execute(select(Invite)).scalars()
        assert row.token_hash == hashlib.sha256(secret.encode()).hexdigest() and row.role == "labeler"
        exp = row.expires_at.replace(tzinfo=timezone.utc)
        assert timedelta(days=6.9) < exp - datetime.now(timezone.utc) < timedelta(days=7.1)
    engine.dispose()
    bad = run(app, ["labeling", "invite", "nope", *db])
    assert bad.exit_code == 2 and "no project 'nope'" in bad.output


# ---------------------------------------------------------------- live settings


def test_overlap_raised_and_lowered_on_a_live_project(tc, admin, app):
    p = project(admin, n=3, k=2, overlap=2)
    a, b = labeler(tc, admin, "a", p["id"]), labeler(tc, admin, "b", p["id"])
    t = a.next_task()
    a.submit(t["task_id"], best_first(t))  # a: one done
    held = b.next_task()  # b: one leased
    before = slots_per_item(app, p["id"])
    assert sum(sum(c.values()) for c in before.values()) == 6

    assert admin.update_project(p["id"], overlap=4)["overlap"] == 4
    after = slots_per_item(app, p["id"])
    assert all(sum(c.values()) == 4 for c in after.values())
    assert sum(c["done"] for c in after.values()) == 1 and sum(c["leased"] for c in after.values()) == 1

    admin.update_project(p["id"], overlap=1)
    low = slots_per_item(app, p["id"])
    for item, c in low.items():  # done and leased kept; no item under 1 slot; the rest of the open slots gone
        assert sum(c.values()) == max(1, c["done"] + c["leased"])
    assert sum(c["done"] for c in low.values()) == 1 and sum(c["leased"] for c in low.values()) == 1
    b.submit(held["task_id"], best_first(held))  # the held task still counts
    assert len(admin.rankings(p["id"])) == 2

    admin.update_project(p["id"], overlap=3)  # raising again tops every item up to 3
    assert all(sum(c.values()) == 3 for c in slots_per_item(app, p["id"]).values())
    assert status(admin.update_project, p["id"], overlap=0) == 422
    lab = labeler(tc, admin, "c", p["id"])
    assert status(lab.update_project, p["id"], overlap=5) == 403


def test_gold_rate_and_instructions_apply_to_the_next_task(tc, admin):
    gold = {"p0": [["p0-c0"], ["p0-c1"], ["p0-c2"]]}
    p = project(admin, n=5, overlap=1, gold=gold)
    a = labeler(tc, admin, "a", p["id"])
    t = a.next_task()
    assert t["prompt_id"] != "p0"  # gold rate 0: no gold
    a.submit(t["task_id"], best_first(t))
    admin.update_project(p["id"], gold_rate=1.0, instructions="New guidance.")
    t = a.next_task()
    assert t["prompt_id"] == "p0" and t["instructions"] == "New guidance."


def test_overlap_changes_under_concurrent_labeling_lose_nothing(app, tc, admin):
    """Labelers claim and submit on their own connections while the admin raises and lowers the
    overlap: every answer stays, no slot goes to two labelers, no item twice to one."""
    from rankloop.labeling.schemas import ProjectUpdate, SubmitIn
    from rankloop.labeling.services import projects as projects_svc

    p = project(admin, n=40, k=2, overlap=2)
    names = [f"u{i}" for i in range(6)]
    for n in names:
        admin.create_user(n, "labeler-password")
        admin.add_member(p["id"], n)
    with app.state.sessionmaker() as db:
        ids = dict(db.execute(select(User.username, User.id)).all())
    queue, errors, submitted = app.state.queue, [], []
    lock, stop, settled = threading.Lock(), threading.Event(), threading.Event()

    def work(name):
        uid = ids[name]
        try:
            while not stop.is_set():
                t = queue.next_task(uid, False, None)
                if t is None:
                    # Nothing open for now. Until the admin's last change, a raise may open new slots:
                    # a labeler who left at a low overlap would leave them undrained (a race of the
                    # test, not of the app: on a fast machine the six drain overlap 1 before the raise).
                    if settled.is_set():
                        return
                    time.sleep(0.005)
                    continue
                queue.submit(t.task_id, uid, SubmitIn(order=[c.id for c in t.candidates], idempotency_key=f"{name}-{t.task_id}"))
                with lock:
                    submitted.append(t.task_id)
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))

    threads = [threading.Thread(target=work, args=(n,)) for n in names]
    [th.start() for th in threads]
    for ov in (3, 1, 4, 2, 5, 3):
        with app.state.sessionmaker() as db:
            projects_svc.update_project(db, p["id"], ProjectUpdate(overlap=ov))
    settled.set()
    [th.join(120) for th in threads]
    stop.set()
    assert not errors, errors[:3]
    with app.state.sessionmaker() as db:
        n_rankings = db.execute(select(func.count()).select_from(RankingRow).where(RankingRow.project_id == p["id"])).scalar_one()
        done_slots = db.execute(select(Slot.id).where(Slot.project_id == p["id"], Slot.status == "done")).scalars().all()
        pairs = db.execute(select(Slot.item_id, Slot.labeler_id).where(Slot.project_id == p["id"],
                                                                       Slot.labeler_id.is_not(None))).all()
    assert n_rankings == len(submitted) == len(set(submitted)) == len(done_slots)  # nothing lost, nothing twice
    assert len(pairs) == len(set(pairs))  # never one item twice to one labeler
    per_item = slots_per_item(app, p["id"])
    assert all(sum(c.values()) >= 3 for c in per_item.values())  # the last overlap holds everywhere
    assert all(c["open"] == 0 for c in per_item.values())  # and the labelers drained it


# ---------------------------------------------------------------- review queue and reviewer role


def disputed(tc, admin, n=3):
    p = project(admin, n=n, k=3, overlap=2)
    a, b = labeler(tc, admin, "a", p["id"]), labeler(tc, admin, "b", p["id"])
    for t in iter(a.next_task, None):  # a: c0 best; b: c0 best on p0 only, reversed elsewhere
        a.submit(t["task_id"], best_first(t))
    for t in iter(b.next_task, None):
        b.submit(t["task_id"], best_first(t) if t["prompt_id"] == "p0" else list(reversed(best_first(t))))
    return p, a, b


def test_review_queue_adjudication_and_export_provenance(tc, admin, app):
    p, a, b = disputed(tc, admin)
    admin.create_user("rev", "rev-password", role="reviewer")
    rev = LabelingClient(tc)
    rev.login("rev", "rev-password")
    assert status(rev.review_queue, p["id"]) == 404  # not a member: not their project
    admin.add_member(p["id"], "rev")
    q = rev.review_queue(p["id"])
    assert [e["prompt_id"] for e in q] == ["p1", "p2"] and all(e["agreement"] == 0.0 for e in q)  # p0 agrees
    item = rev.review_item(p["id"], q[0]["item_id"])
    assert {r["labeler"] for r in item["rankings"]} == {"a", "b"} and item["agreement"] == 0.0
    assert {c["id"] for c in item["candidates"]} == {"p1-c0", "p1-c1", "p1-c2"}
    assert status(rev.adjudicate, p["id"], q[0]["item_id"], [["p1-c0"], ["p1-c1"]]) == 422  # not a permutation
    adj = rev.adjudicate(p["id"], q[0]["item_id"], [["p1-c1"], ["p1-c0", "p1-c2"]], note="c1 is the only correct one")
    assert adj["reviewer"] == "rev" and adj["note"] == "c1 is the only correct one"
    assert [e["prompt_id"] for e in rev.review_queue(p["id"])] == ["p2"]
    assert [e["adjudicated"] for e in rev.review_queue(p["id"], include_done=True)] == [True, False]

    rows = [json.loads(line) for line in admin.export(p["id"]).splitlines()]
    p1 = [r for r in rows if r["prompt_id"] == "p1"]
    assert p1 == [{**p1[0], "ranking": [["p1-c1"], ["p1-c0", "p1-c2"]], "labeler": "rev", "provenance": "adjudicated",
                   "rationale": "c1 is the only correct one"}]
    assert all("provenance" not in r for r in rows if r["prompt_id"] != "p1") and len(rows) == 5
    RankedExample.model_validate(p1[0])  # the trainers' reader takes the row
    raw = [json.loads(line) for line in admin.export(p["id"], prefer_adjudicated=False).splitlines()]
    assert len(raw) == 6 and all("provenance" not in r for r in raw)
    assert len(admin.rankings(p["id"])) == 6  # raw rankings stay as given
    # an adjudicated item is kept by min_agreement (the reviewer settled its disagreement)
    kept = [json.loads(line) for line in admin.export(p["id"], min_agreement=0.5).splitlines()]
    assert sorted(r["prompt_id"] for r in kept) == ["p0", "p0", "p1"]
    trl = [json.loads(line) for line in admin.export(p["id"], format="trl").splitlines()]
    assert {"prompt": "Prompt number 1", "chosen": "answer 1 to prompt 1", "rejected": "answer 0 to prompt 1"} in trl

    # a newer adjudication is the one in force
    rev.adjudicate(p["id"], q[0]["item_id"], [["p1-c2"], ["p1-c1"], ["p1-c0"]])
    rows = [json.loads(line) for line in admin.export(p["id"]).splitlines()]
    assert [r["ranking"] for r in rows if r["prompt_id"] == "p1"] == [[["p1-c2"], ["p1-c1"], ["p1-c0"]]]


def test_review_threshold_and_who_may_review(tc, admin):
    p, a, b = disputed(tc, admin)
    assert len(admin.review_queue(p["id"])) == 2  # admins review every project
    admin.update_project(p["id"], review_below=0.0)
    assert admin.review_queue(p["id"]) == []  # nothing is below 0
    admin.update_project(p["id"], review_below=1.0)
    assert len(admin.review_queue(p["id"])) == 2  # p0 agrees fully: 1.0 is not below 1.0
    item_id = admin.review_queue(p["id"])[0]["item_id"]
    for call in (lambda: a.review_queue(p["id"]), lambda: a.review_item(p["id"], item_id),
                 lambda: a.adjudicate(p["id"], item_id, [["p1-c0"], ["p1-c1"], ["p1-c2"]])):
        assert status(call) == 403  # a labeler cannot review
    admin.create_user("rev", "rev-password", role="reviewer")
    admin.add_member(p["id"], "rev")
    rev = LabelingClient(tc)
    rev.login("rev", "rev-password")
    assert status(rev.create_user, "mallory", "mallory-password") == 403  # a reviewer administers no users
    assert status(rev.update_project, p["id"], overlap=5) == 403
    assert status(rev.dashboard, p["id"]) == 403 and status(rev.labeler_states, p["id"]) == 403
    assert status(rev.export, p["id"]) == 403
    assert status(rev.review_item, p["id"], 999999) == 404


# ---------------------------------------------------------------- qualification and pausing


def test_evaluate_rule():
    assert evaluate("qualifying", [(3, 3)], 2, 0.8, None, 10) == ("qualifying", None)
    assert evaluate("qualifying", [(3, 3), (2, 3)], 2, 0.8, None, 10) == ("qualified", 5 / 6)
    assert evaluate("qualifying", [(3, 3), (1, 3)], 2, 0.8, None, 10) == ("failed", 4 / 6)
    assert evaluate("qualified", [(0, 3), (0, 3)], 0, 0.0, 0.5, 3) == ("qualified", None)  # window not full yet
    assert evaluate("qualified", [(3, 3), (0, 3), (1, 3)], 0, 0.0, 0.5, 2) == ("paused", 1 / 6)
    assert evaluate("qualified", [(0, 3), (3, 3), (3, 3)], 0, 0.0, 0.5, 2) == ("qualified", 1.0)  # only the last 2
    assert evaluate("paused", [(3, 3)] * 5, 0, 0.0, 0.5, 2) == ("paused", None)  # only the lead un-pauses


GOLD = {f"p{i}": [[f"p{i}-c0"], [f"p{i}-c1"], [f"p{i}-c2"]] for i in range(3)}


def right(t):
    return GOLD.get(t["prompt_id"], best_first(t))


def wrong(t):
    return list(reversed(right(t)))


def test_qualification_serves_gold_first_then_decides(tc, admin, app):
    p = project(admin, n=8, overlap=2, gold=GOLD)
    admin.update_project(p["id"], qualify_items=2, qualify_accuracy=0.8)
    good, bad = labeler(tc, admin, "good", p["id"]), labeler(tc, admin, "bad", p["id"])
    states = {s["username"]: s for s in admin.labeler_states(p["id"])}
    assert states["good"]["state"] == "qualifying" and states["bad"]["state"] == "qualifying"
    for c, how in ((good, right), (bad, wrong)):
        for _ in range(2):
            t = c.next_task()
            assert t["prompt_id"] in GOLD  # gold first, whatever the gold rate (0 here)
            c.submit(t["task_id"], how(t))
    states = {s["username"]: s for s in admin.labeler_states(p["id"])}
    assert states["good"]["state"] == "qualified" and states["good"]["accuracy"] == 1.0
    assert states["bad"]["state"] == "failed" and states["bad"]["accuracy"] == 0.0
    t = good.next_task()
    assert t["prompt_id"] not in GOLD  # qualified: real items now
    good.submit(t["task_id"], right(t))
    assert bad.next_task() is None  # failed: nothing
    out = admin.set_labeler_state(p["id"], states["bad"]["user_id"], "qualified")
    assert out["state"] == "qualified"
    assert bad.next_task()["prompt_id"] not in GOLD
    assert status(admin.set_labeler_state, p["id"], states["bad"]["user_id"], "paused") == 422  # the lead un-pauses only
    lab = labeler(tc, admin, "other", p["id"])
    assert status(lab.set_labeler_state, p["id"], states["bad"]["user_id"], "qualified") == 403
    assert status(lab.labeler_states, p["id"]) == 403


def test_qualifying_labeler_without_gold_left_waits(tc, admin):
    p = project(admin, n=4, overlap=1, gold={"p0": GOLD["p0"]})
    admin.update_project(p["id"], qualify_items=2, qualify_accuracy=0.5)
    a = labeler(tc, admin, "a", p["id"])
    t = a.next_task()
    assert t["prompt_id"] == "p0"
    a.submit(t["task_id"], right(t))
    assert a.next_task() is None  # one gold item, two needed: never a real item before qualifying
    page = tc.get("/label", headers={"authorization": f"Bearer {a.token}"})
    assert "you are qualifying (1 of 2 test items done)" in page.text
    assert admin.labeler_states(p["id"])[0] | {"user_id": 0} == {"user_id": 0, "username": "a", "state": "qualifying",
                                                                 "gold_answered": 1, "accuracy": None}


def test_rolling_gold_accuracy_pauses_and_the_lead_unpauses(tc, admin, app):
    gold = {f"p{i}": GOLD.get(f"p{i}", [[f"p{i}-c0"], [f"p{i}-c1"], [f"p{i}-c2"]]) for i in range(6)}
    p = project(admin, n=12, overlap=1, gold=gold, gold_rate=0.5)
    admin.update_project(p["id"], pause_below=0.6, pause_window=2)
    a = labeler(tc, admin, "a", p["id"])

    def answer(t):
        return list(reversed(gold[t["prompt_id"]])) if t["prompt_id"] in gold else best_first(t)

    golds = 0
    while golds < 2:
        t = a.next_task()
        golds += t["prompt_id"] in gold
        a.submit(t["task_id"], answer(t))
    (st,) = admin.labeler_states(p["id"])
    assert st["state"] == "paused" and st["accuracy"] == 0.0
    assert a.next_task() is None  # paused: nothing new
    page = tc.get("/label", headers={"authorization": f"Bearer {a.token}"})
    assert page.status_code == 200 and 'data-state="paused"' in page.text and "you are paused" in page.text
    admin.set_labeler_state(p["id"], st["user_id"], "qualified")
    t = a.next_task()
    assert t is not None
    a.submit(t["task_id"], answer(t))
    (st,) = admin.labeler_states(p["id"])
    assert st["state"] == "qualified" and st["gold_answered"] <= 1  # the old window no longer counts
    with app.state.sessionmaker() as db:
        assert db.get(LabelerState, (p["id"], st["user_id"])).since_ranking_id > 0
    admin.update_project(p["id"], pause_off=True)
    assert admin.update_project(p["id"], qualify_items=0)["pause_below"] is None


# ---------------------------------------------------------------- dashboard


def test_dashboard_figures(tc, admin, app):
    gold = {"p0": GOLD["p0"]}
    p = project(admin, n=4, k=3, overlap=3, gold=gold, gold_rate=0.2)
    a, b, c = (labeler(tc, admin, n, p["id"]) for n in "abc")
    for who, how in ((a, right), (b, right), (c, wrong)):
        for t in iter(who.next_task, None):
            who.submit(t["task_id"], how(t))
    rows = {r["username"]: r for r in admin.dashboard(p["id"])}
    assert set(rows) == {"a", "b", "c"}
    # 3 non-gold items; a and b agree with each other (and with their shared consensus), c reverses them
    assert rows["a"]["rankings"] == 4 and rows["a"]["gold_answered"] == 1 and rows["a"]["gold_accuracy"] == 1.0
    assert rows["c"]["gold_accuracy"] == 0.0
    assert rows["c"]["agreement_with_consensus"] == 0.0  # the others' consensus is the reverse of c's
    # a against consensus(b, c): b and c are exact reverses, so every pair ties in their consensus: 0 agreement
    assert rows["a"]["agreement_with_consensus"] == 0.0
    today = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    assert rows["b"]["per_day"] == {today: 4}
    assert rows["a"]["median_seconds"] is not None and 0 <= rows["a"]["median_seconds"] < 60
    assert all(r["state"] == "qualified" for r in rows.values())
    lab = labeler(tc, admin, "d", p["id"])
    assert status(lab.dashboard, p["id"]) == 403


def test_dashboard_agreement_with_others_consensus_is_leave_one_out():
    from rankloop.labeling.stats import Raw, agreement_with_consensus

    now = datetime.now(timezone.utc)

    def raw(i, who, order):
        return Raw(i, i, 1, who, order, False, False, None, now, False)

    rs = [raw(1, "a", [["x"], ["y"], ["z"]]), raw(2, "b", [["x"], ["y"], ["z"]]), raw(3, "c", [["x"], ["z"], ["y"]])]
    got = agreement_with_consensus(rs)
    # a vs consensus(b, c) = x > y = z: agrees on (x,y), (x,z); differs on (y,z): 2 of 3
    assert got["a"] == (2, 3) and got["b"] == (2, 3)
    # c vs consensus(a, b) = x > y > z: agrees on (x,y), (x,z), differs on (y,z)
    assert got["c"] == (2, 3)


def test_dashboard_and_review_pages_render_for_the_right_roles(tc, admin):
    p, a, b = disputed(tc, admin)
    tc.cookies.clear()
    page = tc.get(f"/admin/projects/{p['id']}/dashboard", headers={"authorization": f"Bearer {admin.token}"})
    assert page.status_code == 200 and "<svg" in page.text and 'data-labeler="a"' in page.text
    assert "<script" not in page.text
    labeler_page = tc.get(f"/admin/projects/{p['id']}/dashboard", headers={"authorization": f"Bearer {a.token}"})
    assert labeler_page.status_code == 403
    assert tc.get("/review", headers={"authorization": f"Bearer {a.token}"}).status_code == 403
    q = tc.get(f"/review/{p['id']}", headers={"authorization": f"Bearer {admin.token}"})
    assert q.status_code == 200 and "review-queue" in q.text


# ---------------------------------------------------------------- forms and the migration


def page_login(tc, username, password):
    page = tc.get("/login")
    csrf = page.text.split('name="csrf_token" value="')[1].split('"')[0]
    r = tc.post("/login", data={"username": username, "password": password, "csrf_token": csrf}, follow_redirects=False)
    assert r.status_code == 303
    return r.headers["location"]


def form_csrf(tc, url):
    return tc.get(url).text.split('name="csrf_token" value="')[1].split('"')[0]


def test_every_new_form_needs_the_session_csrf_token(tc, admin):
    from labhelp import ADMIN

    p, a, b = disputed(tc, admin)
    item_id = admin.review_queue(p["id"])[0]["item_id"]
    uid = next(s["user_id"] for s in admin.labeler_states(p["id"]) if s["username"] == "a")
    tc.cookies.clear()
    assert page_login(tc, *ADMIN) == "/admin"
    csrf = form_csrf(tc, f"/admin/projects/{p['id']}")
    ids = [c["id"] for c in admin.review_item(p["id"], item_id)["candidates"]]
    forms = {
        f"/admin/projects/{p['id']}/settings": {"overlap": "3"},
        f"/admin/projects/{p['id']}/invite-links": {"role": "labeler", "days": "1"},
        f"/review/{p['id']}/items/{item_id}": {f"place_{c}": str(i + 1) for i, c in enumerate(ids)},
        f"/admin/projects/{p['id']}/labelers/{uid}/state": {"state": "qualified"},
    }
    for url, data in forms.items():
        assert tc.post(url, data=data, follow_redirects=False).status_code == 403, url  # no token
        assert tc.post(url, data={**data, "csrf_token": "forged"}, follow_redirects=False).status_code == 403, url
        ok = tc.post(url, data={**data, "csrf_token": csrf}, follow_redirects=False)
        assert ok.status_code in (200, 303), (url, ok.status_code, ok.text[:300])
    assert admin.projects()[0]["overlap"] == 3
    assert len(admin.invites(p["id"])) == 1
    assert admin.review_queue(p["id"], include_done=True)[0]["adjudicated"] or \
        admin.review_queue(p["id"], include_done=True)[1]["adjudicated"]
    # the review form refuses a place that is not a number, and says which candidate
    bad = tc.post(f"/review/{p['id']}/items/{item_id}", data={f"place_{ids[0]}": "x", "csrf_token": csrf})
    assert bad.status_code == 422 and ids[0] in bad.text


def test_reviewer_login_lands_on_the_review_page(tc, admin):
    admin.create_user("rev", "rev-password", role="reviewer")
    tc.cookies.clear()
    assert page_login(tc, "rev", "rev-password") == "/review"
    page = tc.get("/review")
    assert page.status_code == 200 and 'href="/review"' in page.text and 'href="/admin"' not in page.text


def test_migration_0005_upgrades_a_0002_database_with_a_project(db_url):
    from alembic import command
    from sqlalchemy import text

    from labhelp import database_at

    cfg, engine = database_at(db_url, "0002")
    with engine.begin() as c:
        c.execute(text("INSERT INTO projects (id, name, instructions, k, mode, overlap, gold_rate, lease_seconds, created_at) "
                       "VALUES (1, 'old', '', 2, 'ranking', 1, 0, 60, '2026-01-01 00:00:00')"))
    command.upgrade(cfg, "0005")
    with engine.begin() as c:
        row = c.execute(text("SELECT qualify_items, qualify_accuracy, pause_below, pause_window, review_below FROM projects")).one()
    assert tuple(row) == (0, 0.0, None, 10, 0.6)  # no qualification, no pausing: served as before
    command.downgrade(cfg, "0002")
    with engine.begin() as c:
        assert c.execute(text("SELECT name FROM projects")).scalar_one() == "old"
    command.upgrade(cfg, "head")
    engine.dispose()


def test_one_link_opened_twice_at_once_makes_one_account(app, tc, admin):
    from rankloop.labeling.services import DomainError, invites

    p = project(admin, n=1, overlap=1)
    secret = admin.create_invite(p["id"])["token"]
    barrier, made, refused = threading.Barrier(4), [], []

    def use(i):
        with app.state.sessionmaker() as db:
            barrier.wait()
            try:
                made.append(invites.accept(db, secret, f"racer{i}", "racer-password").username)
            except DomainError as e:
                refused.append(str(e))

    threads = [threading.Thread(target=use, args=(i,)) for i in range(4)]
    [t.start() for t in threads]
    [t.join(60) for t in threads]
    assert len(made) == 1 and len(refused) == 3, (made, refused)
    assert all("used" in m for m in refused)
    with app.state.sessionmaker() as db:
        names = set(db.execute(select(User.username).where(User.username.like("racer%"))).scalars())
    assert names == set(made)
