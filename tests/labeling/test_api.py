"""REST API: projects, import, assignment, submission, quality, export, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import threading
from collections import Counter

import pytest
from sqlalchemy import select

from rankloop.io import read_preferences
from rankloop.labeling.client import LabelingClient, LabelingError
from rankloop.labeling.models import RankingRow, Slot, User
from labhelp import ADMIN, best_first, labeler, make_records


def setup_project(admin, n=4, k=3, overlap=2, gold=None, gold_rate=0.0, mode="ranking", lease_seconds=1800):
    p = admin.create_project("proj", k=k, mode=mode, overlap=overlap, gold_rate=gold_rate, instructions="Rank them.",
                             lease_seconds=lease_seconds)
    prompts, cands = make_records(n, k)
    out = admin.import_candidates(p["id"], prompts, cands, gold=gold)
    return p, out


def drain(c: LabelingClient, project_id=None, order_fn=best_first) -> list[dict]:
    done = []
    while (t := c.next_task(project_id)) is not None:
        c.submit(t["task_id"], order_fn(t))
        done.append(t)
    return done


def test_overlap_distinct_labelers_and_queue_end(tc, admin):
    p, out = setup_project(admin, n=4, k=3, overlap=2)
    assert out == {"prompts": 4, "candidates": 12, "items": 4, "gold_items": 0, "slots": 8}
    a, b, c = (labeler(tc, admin, n, p["id"]) for n in "abc")
    got_a, got_b = drain(a), drain(b)
    assert len(got_a) == 4 and len(got_b) == 4  # each item once to each of a and b
    assert {t["prompt_id"] for t in got_a} == {f"p{i}" for i in range(4)}
    assert c.next_task() is None  # overlap 2 reached: nothing left for a third labeler
    prog = admin.progress(p["id"])
    assert prog["slots_done"] == 8 and prog["items_complete"] == 4 and prog["rankings"] == 8
    ag = admin.agreement(p["id"])
    assert ag["items_multi"] == 4 and ag["pairwise_agreement"] == 1.0 and ag["krippendorff_alpha"] == pytest.approx(1.0)


def test_task_shows_k_candidates_text_and_instructions(tc, admin):
    p, _ = setup_project(admin, n=1, k=3, overlap=1)
    a = labeler(tc, admin, "a", p["id"])
    t = a.next_task()
    assert t["instructions"] == "Rank them." and t["prompt"] == "Prompt number 0" and t["mode"] == "ranking"
    assert sorted(c["id"] for c in t["candidates"]) == ["p0-c0", "p0-c1", "p0-c2"]
    assert a.next_task()["task_id"] == t["task_id"]  # the held task comes back, not a second one


def test_submit_must_be_a_permutation_of_the_shown_ids(tc, admin):
    p, _ = setup_project(admin, n=1, k=3, overlap=1)
    a = labeler(tc, admin, "a", p["id"])
    t = a.next_task()
    cases = {
        "missing": ([["p0-c0"], ["p0-c1"]], "missing: ['p0-c2']"),
        "unknown": ([["p0-c0"], ["p0-c1"], ["p0-c2"], ["zzz"]], "not shown in this task: ['zzz']"),
        "repeated": ([["p0-c0"], ["p0-c0", "p0-c1"], ["p0-c2"]], "repeated: ['p0-c0']"),
    }
    for order, why in cases.values():
        with pytest.raises(LabelingError) as e:
            a.submit(t["task_id"], order)
        assert e.value.status == 422 and why in e.value.detail and "permutation" in e.value.detail
    # ties and a flat list are fine
    assert a.submit(t["task_id"], [["p0-c2", "p0-c0"], ["p0-c1"]], all_bad=True, unsafe=True, rationale="meh")["duplicate"] is False
    r = admin.rankings(p["id"])[0]
    assert r["order"] == [["p0-c2", "p0-c0"], ["p0-c1"]] and r["all_bad"] and r["unsafe"] and r["rationale"] == "meh"


def test_idempotency_double_submit_and_retry_store_once(tc, admin):
    p, _ = setup_project(admin, n=2, k=3, overlap=1)
    a = labeler(tc, admin, "a", p["id"])
    t = a.next_task()
    first = a.submit(t["task_id"], best_first(t), idempotency_key="click-1")
    again = a.submit(t["task_id"], best_first(t), idempotency_key="click-1")
    assert first["duplicate"] is False and again == {**first, "duplicate": True}
    with pytest.raises(LabelingError) as e:  # a different submission for an answered task
        a.submit(t["task_id"], best_first(t), idempotency_key="click-2")
    assert e.value.status == 409
    t2 = a.next_task()
    with pytest.raises(LabelingError) as e:  # the key belongs to another task
        a.submit(t2["task_id"], best_first(t2), idempotency_key="click-1")
    assert e.value.status == 409 and "already used" in e.value.detail
    assert len(admin.rankings(p["id"])) == 1


def test_concurrent_double_submit_is_stored_once(tc, admin, app):
    p, _ = setup_project(admin, n=1, k=3, overlap=1)
    a = labeler(tc, admin, "a", p["id"])
    t = a.next_task()
    barrier, results = threading.Barrier(8), []

    def go():
        barrier.wait()
        try:
            results.append(a.submit(t["task_id"], best_first(t), idempotency_key="same")["duplicate"])
        except LabelingError as e:
            results.append(e.status)

    threads = [threading.Thread(target=go) for _ in range(8)]
    [th.start() for th in threads]
    [th.join() for th in threads]
    assert sorted(results, key=str) == [False] + [True] * 7
    with app.state.sessionmaker() as db:
        assert db.execute(select(RankingRow.id)).all().__len__() == 1


def test_concurrent_claims_never_share_a_slot(app, tc, admin):
    """Many labelers claiming at the same instant, on separate connections (real concurrency)."""
    from rankloop.labeling.schemas import SubmitIn

    queue = app.state.queue
    p, _ = setup_project(admin, n=30, k=2, overlap=3)
    names = [f"u{i}" for i in range(12)]
    for n in names:
        admin.create_user(n, "labeler-password")
        admin.add_member(p["id"], n)
    with app.state.sessionmaker() as db:
        ids = dict(db.execute(select(User.username, User.id)).all())
    barrier = threading.Barrier(len(names))
    claimed: list[tuple[int, int, int]] = []
    lock = threading.Lock()
    errors = []

    def work(name):
        uid = ids[name]
        try:
            barrier.wait()
            while True:
                t = queue.next_task(uid, False, None)
                if t is None:
                    return
                with lock:
                    claimed.append((t.task_id, uid, int(t.prompt_id[1:])))
                queue.submit(t.task_id, uid, SubmitIn(order=[c.id for c in t.candidates], idempotency_key=f"{name}-{t.task_id}"))
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))

    threads = [threading.Thread(target=work, args=(n,)) for n in names]
    [th.start() for th in threads]
    [th.join() for th in threads]
    assert not errors
    assert len(claimed) == 90  # 30 items x overlap 3: every slot taken exactly once
    assert len({c[0] for c in claimed}) == 90
    per_item = Counter(c[2] for c in claimed)
    assert set(per_item.values()) == {3}
    assert len({(c[1], c[2]) for c in claimed}) == 90  # never the same item twice to one labeler


def test_expired_lease_returns_the_task_to_the_queue(tc, admin, app):
    p, _ = setup_project(admin, n=1, k=2, overlap=1, lease_seconds=5)
    a, b = labeler(tc, admin, "a", p["id"]), labeler(tc, admin, "b", p["id"])
    t = a.next_task()
    assert b.next_task() is None  # leased to a
    with app.state.sessionmaker() as db:  # let the lease run out
        slot = db.get(Slot, t["task_id"])
        slot.lease_expires = slot.lease_expires.replace(year=2000)
        db.commit()
    app.state.queue.reap_every = 0  # reap now rather than within the next few seconds
    tb = b.next_task()
    assert tb["task_id"] == t["task_id"]
    with pytest.raises(LabelingError) as e:  # a's late answer: the task is b's now
        a.submit(t["task_id"], best_first(t))
    assert e.value.status == 404
    b.submit(tb["task_id"], best_first(tb))
    assert a.next_task() is None  # overlap 1 is done


def test_gold_items_rate_and_accuracy(tc, admin):
    gold = {"p0": [["p0-c0"], ["p0-c1"], ["p0-c2"]], "p1": [["p1-c2"], ["p1-c1"], ["p1-c0"]]}
    p, out = setup_project(admin, n=8, k=3, overlap=1, gold=gold, gold_rate=0.25)
    assert out["gold_items"] == 2 and out["slots"] == 6
    good, bad = labeler(tc, admin, "good", p["id"]), labeler(tc, admin, "bad", p["id"])
    truth = {**gold}

    def right(t):
        return truth.get(t["prompt_id"], best_first(t))

    def wrong(t):
        return list(reversed(right(t)))

    seen = []
    while (t := good.next_task()) is not None:
        seen.append(t["prompt_id"] in gold)
        good.submit(t["task_id"], right(t))
        if len(seen) >= 4:
            break
    assert seen[0] is True and sum(seen) == 1  # gold first (0 < 0.25 * 1), then 1 in 4
    drain(bad, order_fn=wrong)
    labelers = {l["username"]: l for l in admin.progress(p["id"])["labelers"]}
    assert labelers["good"]["gold_accuracy"] == 1.0
    assert labelers["bad"]["gold_accuracy"] == 0.0 and labelers["bad"]["gold_done"] == 2


def test_pairwise_mode(tc, admin):
    p = admin.create_project("pairs", mode="pairwise", overlap=1)
    assert p["k"] == 2
    prompts, cands = make_records(2, 3)
    out = admin.import_candidates(p["id"], prompts, cands)
    assert out["items"] == 6  # C(3,2) pairs per prompt
    a = labeler(tc, admin, "a", p["id"])
    t = a.next_task()
    assert t["mode"] == "pairwise" and len(t["candidates"]) == 2
    ids = [c["id"] for c in t["candidates"]]
    a.submit(t["task_id"], [ids], all_bad=True)  # both bad: a tie flagged all_bad
    t = a.next_task()
    a.submit(t["task_id"], [[t["candidates"][1]["id"]], [t["candidates"][0]["id"]]])
    rows = admin.rankings(p["id"])
    assert rows[0]["all_bad"] and len(rows[0]["order"]) == 1


def test_import_errors_say_why(tc, admin):
    from rankloop.records import Candidate, Prompt

    p = admin.create_project("x", k=3)
    prompts, cands = make_records(2, 3)
    with pytest.raises(LabelingError) as e:
        admin.import_candidates(p["id"], prompts, cands[:-1])
    assert e.value.status == 422 and "'p1' has 2" in e.value.detail
    with pytest.raises(LabelingError) as e:
        admin.import_candidates(p["id"], prompts, cands + [Candidate(id="o", prompt_id="nope", text="t")])
    assert "not in this import" in e.value.detail
    admin.import_candidates(p["id"], prompts, cands)
    with pytest.raises(LabelingError) as e:
        admin.import_candidates(p["id"], prompts, cands)
    assert e.value.status == 422 and "already imported" in e.value.detail
    # A later round: same prompts, new candidates -> new items
    _, c2 = make_records(2, 3)
    c2 = [c.model_copy(update={"id": c.id + "-r1", "round": 1}) for c in c2]
    assert admin.import_candidates(p["id"], prompts, c2)["items"] == 2
    with pytest.raises(LabelingError) as e:
        admin.import_candidates(p["id"], [Prompt(id="p0", text="changed")], [c.model_copy(update={"id": c.id + "x"}) for c in c2[:3]])
    assert "different content" in e.value.detail


def test_import_files_endpoint_combined_and_sample_output(tc, admin, tmp_path):
    p = admin.create_project("files", k=2)
    combined = [{"prompt_id": "q1", "prompt": [{"role": "user", "content": "hi"}], "candidates": [{"id": "a", "text": "A"}, {"id": "b", "text": "B"}],
                 "gold": [["a"], ["b"]]},
                {"prompt_id": "q2", "prompt": "plain", "candidates": ["x", "y"]}]
    body = "\n".join(json.dumps(r) for r in combined).encode()
    r = tc.post(f"/api/projects/{p['id']}/import-files", files={"candidates": ("combined.jsonl", body)},
                headers={"Authorization": f"Bearer {admin.token}"})
    assert r.status_code == 200, r.text
    assert r.json()["items"] == 2 and r.json()["gold_items"] == 1
    prompts = b'{"id": "s1", "text": "sampled"}\n'
    cands = b'{"id": "s1-0", "prompt_id": "s1", "text": "one", "policy": "pi", "round": 0}\n{"id": "s1-1", "prompt_id": "s1", "text": "two"}\n'
    r = tc.post(f"/api/projects/{p['id']}/import-files", files={"candidates": ("candidates.jsonl", cands), "prompts": ("prompts.jsonl", prompts)},
                headers={"Authorization": f"Bearer {admin.token}"})
    assert r.status_code == 200 and r.json()["items"] == 1
    r = tc.post(f"/api/projects/{p['id']}/import-files", files={"candidates": ("bad.jsonl", b'{"id": "z", "prompt_id": "s1", "text": ""}\n'),
                "prompts": ("prompts.jsonl", prompts)}, headers={"Authorization": f"Bearer {admin.token}"})
    assert r.status_code == 422 and "row 1" in r.json()["detail"] and "empty" in r.json()["detail"]


def test_export_rankings_and_trl_with_filters(tc, admin, db_url, tmp_path):
    from rankloop.labeling.export import export_project

    gold = {"p0": [["p0-c0"], ["p0-c1"], ["p0-c2"]]}
    p, _ = setup_project(admin, n=4, k=3, overlap=2, gold=gold, gold_rate=0.3)
    a, b, c = (labeler(tc, admin, n, p["id"]) for n in "abc")
    drain(a)  # agrees with gold and with b
    drain(b)
    drain(c, order_fn=lambda t: list(reversed(best_first(t))))  # c gets gold wrong
    out = export_project(db_url, "proj", tmp_path / "rankings.jsonl", tmp_path / "trl.jsonl")
    rows = read_preferences(tmp_path / "rankings.jsonl", "rankings")  # what train-rm reads
    assert out["rankings_exported"] == len(rows) == len(admin.rankings(p["id"]))
    assert {r.ranking.labeler for r in rows} == {"a", "b", "c"} and all(r.k == 3 for r in rows)
    trl = [json.loads(line) for line in (tmp_path / "trl.jsonl").read_text().splitlines()]
    assert len(trl) == out["comparisons"] == 3 * len(rows) and set(trl[0]) == {"prompt", "chosen", "rejected"}
    out = export_project(db_url, p["id"], tmp_path / "r2.jsonl", min_gold_accuracy=0.5)
    assert out["labelers_below_gold_accuracy"] == ["c"]
    assert {r.ranking.labeler for r in read_preferences(tmp_path / "r2.jsonl", "rankings")} == {"a", "b"}
    out = export_project(db_url, "proj", tmp_path / "r3.jsonl", min_agreement=0.9)
    kept = read_preferences(tmp_path / "r3.jsonl", "rankings")
    assert out["rankings_exported"] == len(kept) > 0
    # the download endpoint gives the same rows
    text = admin.export(p["id"], "rankings", min_gold_accuracy=0.5)
    assert len(text.splitlines()) == len(read_preferences(tmp_path / "r2.jsonl", "rankings"))


def test_authorisation(tc, admin):
    p, _ = setup_project(admin, n=2, k=2, overlap=1)
    a, b = labeler(tc, admin, "a", p["id"]), labeler(tc, admin, "b", p["id"])
    outsider = labeler(tc, admin, "outsider")
    ta = a.next_task()
    for call in (lambda: b.task(ta["task_id"]), lambda: b.submit(ta["task_id"], best_first(ta))):
        with pytest.raises(LabelingError) as e:
            call()
        assert e.value.status == 404
    for call in (lambda: a.progress(p["id"]), lambda: a.create_project("mine"), lambda: a.create_user("x", "password1"),
                 lambda: a.rankings(p["id"]), lambda: a.export(p["id"])):
        with pytest.raises(LabelingError) as e:
            call()
        assert e.value.status == 403
    assert outsider.next_task() is None and outsider.projects() == []
    with pytest.raises(LabelingError) as e:
        outsider.next_task(p["id"])
    assert e.value.status == 404
    anon = LabelingClient(tc)
    with pytest.raises(LabelingError) as e:
        anon.next_task()
    assert e.value.status == 401
    assert tc.get("/openapi.json").json()["paths"]["/api/tasks/{task_id}/submit"]


def test_passwords_hashed_tokens_work_and_logout_revokes(tc, admin, app):
    with app.state.sessionmaker() as db:
        h = db.execute(select(User.password_hash).where(User.username == "admin")).scalar_one()
    assert h.startswith("$argon2id$") and ADMIN[1] not in h
    tok = admin.api_token("script")
    script = LabelingClient(tc, token=tok)
    assert script.me()["username"] == "admin"
    script._call("POST", "/api/auth/logout")
    with pytest.raises(LabelingError) as e:
        script.me()
    assert e.value.status == 401


def test_login_rate_limited(tc, admin):
    anon = LabelingClient(tc)
    statuses = []
    for _ in range(12):
        try:
            anon.login("admin", "wrong-password")
        except LabelingError as e:
            statuses.append(e.status)
    assert statuses[:10] == [401] * 10 and statuses[10:] == [429, 429]
    with pytest.raises(LabelingError) as e:  # even the right password waits
        anon.login(*ADMIN)
    assert e.value.status == 429


def test_session_cookie_flags_and_csrf(tc, admin):
    p, _ = setup_project(admin, n=1, k=2, overlap=1)
    admin.create_user("web", "web-password")
    admin.add_member(p["id"], "web")
    login_page = tc.get("/login")
    csrf_login = login_page.text.split('name="csrf_token" value="')[1].split('"')[0]
    r = tc.post("/login", data={"username": "web", "password": "web-password", "csrf_token": csrf_login}, follow_redirects=False)
    assert r.status_code == 303
    cookie = [v for k, v in r.headers.multi_items() if k == "set-cookie" and v.startswith("rankloop_session=")][0]
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie.replace("samesite", "SameSite")
    page = tc.get("/label", follow_redirects=True)
    assert page.status_code == 200 and 'id="ranking"' in page.text
    task_id = int(str(page.url).rstrip("/").split("/")[-1])
    csrf = page.text.split('name="csrf_token" value="')[1].split('"')[0]
    key = page.text.split('name="idempotency_key" value="')[1].split('"')[0]
    order = json.dumps([["p0-c0"], ["p0-c1"]])
    forged = tc.post(f"/label/{task_id}", data={"order": order, "idempotency_key": key}, follow_redirects=False)
    assert forged.status_code == 403  # no CSRF token: refused
    r = tc.post("/api/tasks/next", follow_redirects=False)  # cookie-authenticated API call without the header
    assert r.status_code == 403
    ok = tc.post(f"/label/{task_id}", data={"order": order, "idempotency_key": key, "csrf_token": csrf}, follow_redirects=False)
    assert ok.status_code == 303
    again = tc.post(f"/label/{task_id}", data={"order": order, "idempotency_key": key, "csrf_token": csrf}, follow_redirects=False)
    assert again.status_code == 303  # the double click is harmless
    assert len(admin.rankings(p["id"])) == 1
    assert tc.get("/admin").status_code == 403  # a labeler on an admin page


def test_model_text_is_escaped_in_pages(tc, admin):
    from rankloop.records import Candidate, Prompt

    p = admin.create_project("xss", k=2)
    evil = '<script>window.pwned=1</script><img src=x onerror="window.pwned=2">'
    admin.import_candidates(p["id"], [Prompt(id="e", text=evil)], [Candidate(id="e1", prompt_id="e", text=evil),
                                                                   Candidate(id="e2", prompt_id="e", text="fine")])
    admin.create_user("web", "web-password")
    admin.add_member(p["id"], "web")
    csrf_login = tc.get("/login").text.split('name="csrf_token" value="')[1].split('"')[0]
    tc.post("/login", data={"username": "web", "password": "web-password", "csrf_token": csrf_login})
    page = tc.get("/label", follow_redirects=True)
    assert "<script>window.pwned" not in page.text and "<img src=x" not in page.text
    assert "&lt;script&gt;window.pwned=1&lt;/script&gt;&lt;img src=x onerror=" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]


def test_migrations_match_the_models(db_url):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from rankloop.labeling.db import make_engine, upgrade
    from rankloop.labeling.models import Base

    upgrade(db_url)
    upgrade(db_url)  # idempotent at start-up
    engine = make_engine(db_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == []


def test_labeling_imports_no_torch():
    import subprocess
    import sys

    code = ("import sys; import rankloop.labeling.app, rankloop.labeling.client, rankloop.labeling.export, "
            "rankloop.labeling.cli; bad = [m for m in sys.modules if m == 'torch' or m.startswith('torch.')]; "
            "assert not bad, bad; print('ok')")
    from pathlib import Path

    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2])
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr
