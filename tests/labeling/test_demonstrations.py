"""Demonstration projects over the REST API (issue 12 item 1), on SQLite and PostgreSQL: import
prompts and drafts, assignment with overlap and leases, autosave kept per labeler, submit with
validation and idempotency, review (accept / edit / reject), export read by ``rankloop train-sft``."""

from __future__ import annotations

import json
import time

import pytest
from sqlalchemy import func, select

from labhelp import labeler
from rankloop.labeling.client import LabelingError
from rankloop.labeling.models import DemoDraftRow
from rankloop.records import Candidate, Demonstration, Prompt

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi! Name a colour."},
        {"role": "assistant", "content": "Blue."}, {"role": "user", "content": "Another one?"}]


def demo_project(admin, overlap: int = 2, lease_seconds: int = 1800, name: str = "demos"):
    p = admin.create_project(name, mode="demonstration", overlap=overlap, instructions="Answer kindly.",
                             lease_seconds=lease_seconds)
    prompts = [Prompt(id="t1", text="Say hello."), Prompt(id="chat", messages=CHAT), Prompt(id="t2", text="Count to 3.")]
    drafts = [Candidate(id="t1-d", prompt_id="t1", text="hello there", policy="sft-0"),
              Candidate(id="chat-d", prompt_id="chat", text="Red.", policy="sft-0")]
    out = admin.import_prompts(p["id"], prompts, drafts)
    return p, out


def raises(status: int, fn, *args, **kw) -> str:
    with pytest.raises(LabelingError) as e:
        fn(*args, **kw)
    assert e.value.status == status, e.value.detail
    return str(e.value.detail)


def test_tasks_carry_the_prompt_the_draft_and_overlap_spreads_them(tc, admin):
    p, out = demo_project(admin, overlap=2)
    assert p["mode"] == "demonstration" and p["k"] == 0
    assert out == {"prompts": 3, "candidates": 2, "items": 3, "gold_items": 0, "slots": 6}
    a, b, c = (labeler(tc, admin, n, p["id"]) for n in "abc")
    seen = {}
    for who in (a, b):
        got = []
        while (t := who.next_task()) is not None:
            assert t["kind"] == "demonstration" and t["mode"] == "demonstration" and t["instructions"] == "Answer kindly."
            assert t["saved"] is None
            got.append(t["prompt_id"])
            seen[t["prompt_id"]] = t
            who.submit_demonstration(t["task_id"], f"{who.me()['username']} answers {t['prompt_id']}")
        assert sorted(got) == ["chat", "t1", "t2"]  # each prompt once to each of the two
    assert c.next_task() is None  # overlap 2 reached
    assert seen["t1"]["prompt"] == "Say hello." and seen["t1"]["draft"] == {"id": "t1-d", "text": "hello there"}
    assert seen["chat"]["prompt"] == CHAT and seen["chat"]["candidates"] == [{"id": "chat-d", "text": "Red."}]
    assert seen["t2"]["draft"] is None and seen["t2"]["candidates"] == []
    assert admin.progress(p["id"])["slots_done"] == 6


def test_import_refuses_what_no_labeler_could_answer(tc, admin):
    p = admin.create_project("d", mode="demonstration")
    bad_chat = Prompt(id="c", messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}])
    msg = raises(422, admin.import_prompts, p["id"], [bad_chat])
    assert "must end with the user's turn" in msg and "'c' ends with 'assistant'" in msg
    assert "empty text" in raises(422, admin.import_prompts, p["id"], [Prompt(id="e", text="   ")])
    msg = raises(422, admin.import_candidates, p["id"], [Prompt(id="g", text="q")],
                 [Candidate(id="g1", prompt_id="g", text="a"), Candidate(id="g2", prompt_id="g", text="b")],
                 gold={"g": ["g1", "g2"]})
    assert "gold rankings do not apply" in msg
    assert admin.progress(p["id"])["items"] == 0  # nothing half-imported


def test_autosave_comes_back_to_its_writer_only_and_renews_the_lease(tc, admin, app):
    p, _ = demo_project(admin, overlap=2)
    a, b = labeler(tc, admin, "a", p["id"]), labeler(tc, admin, "b", p["id"])
    ta = a.next_task()
    saved = a.save_draft(ta["task_id"], "half an ans", edited_from=ta["draft"]["id"] if ta["draft"] else None)
    assert saved["saved"]["text"] == "half an ans"
    assert saved["lease_expires"] >= ta["lease_expires"]
    saved = a.save_draft(ta["task_id"], "half an answer, now longer")  # replaces the last autosave
    again = a.next_task()  # a reload: the same task, with the text
    assert again["task_id"] == ta["task_id"] and again["saved"]["text"] == "half an answer, now longer"
    assert a.task(ta["task_id"])["saved"]["text"] == "half an answer, now longer"
    # another labeler: their own task (never a's slot), without a's text; a's task is not theirs
    tb = b.next_task()
    assert tb["task_id"] != ta["task_id"] and tb["saved"] is None
    raises(404, b.task, ta["task_id"])
    raises(404, b.save_draft, ta["task_id"], "overwrite?")
    raises(404, b.submit_demonstration, ta["task_id"], "steal")
    # an admin may look at the task, but not at the unsent text
    assert admin.task(ta["task_id"])["saved"] is None
    raises(404, admin.save_draft, ta["task_id"], "admin text")
    assert a.next_task()["saved"]["text"] == "half an answer, now longer"
    # an unknown draft id is refused
    assert "not one of this task's drafts" in raises(422, a.save_draft, ta["task_id"], "x", edited_from="nope")
    # submitting drops the autosave
    a.submit_demonstration(ta["task_id"], "the full answer")
    with app.state.sessionmaker() as db:
        assert db.execute(select(func.count()).select_from(DemoDraftRow).where(DemoDraftRow.slot_id == ta["task_id"])).scalar_one() == 0
    assert "already submitted" in raises(409, a.save_draft, ta["task_id"], "late autosave")


def test_an_expired_lease_goes_to_another_labeler_without_the_first_ones_text(tc, admin, app):
    p, _ = demo_project(admin, overlap=1, lease_seconds=5)
    a, b = labeler(tc, admin, "a", p["id"]), labeler(tc, admin, "b", p["id"])
    ta = a.next_task()
    a.save_draft(ta["task_id"], "a's private words")
    queue = app.state.queue
    queue.reap_every = 0.0
    with app.state.sessionmaker() as db:  # the lease runs out (without sleeping 5 s)
        from sqlalchemy import update

        from rankloop.labeling.models import Slot

        db.execute(update(Slot).where(Slot.id == ta["task_id"]).values(lease_expires=Slot.leased_at))
        db.commit()
    time.sleep(0.01)
    got = []
    while (t := b.next_task()) is not None:
        assert t["saved"] is None  # never a's text, whichever slot b gets
        got.append(t["task_id"])
        b.submit_demonstration(t["task_id"], "b's answer")
    assert ta["task_id"] in got
    raises(404, a.save_draft, ta["task_id"], "too late")
    raises(404, a.submit_demonstration, ta["task_id"], "too late")


def test_submit_validates_and_stores_once(tc, admin):
    p, _ = demo_project(admin, overlap=1)
    a = labeler(tc, admin, "a", p["id"])
    t = a.next_task()
    for empty, word in (("", "empty"), ("  \n\t ", "only whitespace")):
        msg = raises(422, a.submit_demonstration, t["task_id"], empty)
        assert f"the response is {word}" in msg
    assert "not one of this task's drafts" in raises(422, a.submit_demonstration, t["task_id"], "ok", edited_from="zzz")
    assert "demonstration task" in raises(422, a.submit, t["task_id"], [["x"]])  # not a ranking
    draft = t["draft"]["id"] if t["draft"] else None
    first = a.submit_demonstration(t["task_id"], "  kept as written \n", edited_from=draft, idempotency_key="k1")
    assert first["duplicate"] is False
    assert a.submit_demonstration(t["task_id"], "  kept as written \n", edited_from=draft, idempotency_key="k1") == {
        **first, "duplicate": True}
    assert "already submitted" in raises(409, a.submit_demonstration, t["task_id"], "again", idempotency_key="k2")
    t2 = a.next_task()
    assert "idempotency key already used" in raises(409, a.submit_demonstration, t2["task_id"], "x", idempotency_key="k1")
    [d] = admin.demonstrations(p["id"])
    assert d["response"] == "  kept as written \n" and d["edited_from"] == draft and d["review"] == "pending"
    assert d["labeler"] == "a" and d["prompt_id"] == t["prompt_id"]


def test_a_ranking_task_refuses_a_demonstration(tc, admin):
    from labhelp import make_records

    p = admin.create_project("ranks", k=2)
    admin.import_candidates(p["id"], *make_records(1, 2))
    a = labeler(tc, admin, "a", p["id"])
    t = a.next_task()
    assert t["kind"] == "ranking" and t["draft"] is None
    assert "not a demonstration" in raises(422, a.submit_demonstration, t["task_id"], "text")
    assert "not a demonstration" in raises(422, a.save_draft, t["task_id"], "text")


def test_review_accept_edit_reject_and_the_export(tc, admin, tmp_path):
    from rankloop.sft.data import read_demonstrations

    p, _ = demo_project(admin, overlap=1)
    a = labeler(tc, admin, "a", p["id"])
    ids = {}
    while (t := a.next_task()) is not None:
        draft = t["draft"]["id"] if t["draft"] else None
        ids[t["prompt_id"]] = a.submit_demonstration(t["task_id"], f"answer to {t['prompt_id']}", edited_from=draft)["demonstration_id"]
    # labelers review nothing and list nothing
    raises(403, a.demonstrations, p["id"])
    raises(403, a.review_demonstration, ids["t1"], "accepted")
    raises(403, a.export, p["id"], format="demonstrations")
    assert admin.review_demonstration(ids["t1"], "accepted")["review"] == "accepted"
    edited = admin.review_demonstration(ids["chat"], "accepted", text="Green, or yellow.")
    assert edited["accepted_text"] == "Green, or yellow." and edited["response"] == "answer to chat" and edited["reviewer"] == "admin"
    # t2 stays pending; a rejection (after a change of mind) is never exported
    admin.review_demonstration(ids["t2"], "accepted")
    rejected = admin.review_demonstration(ids["t2"], "rejected")
    assert rejected["review"] == "rejected" and rejected["accepted_text"] is None
    assert "takes no text" in raises(422, admin.review_demonstration, ids["t2"], "rejected", text="x")
    assert "only whitespace" in raises(422, admin.review_demonstration, ids["t1"], "accepted", text="   ")
    raises(404, admin.review_demonstration, 99999, "accepted")
    assert [d["prompt_id"] for d in admin.demonstrations(p["id"], review="rejected")] == ["t2"]

    rows = [json.loads(x) for x in admin.export(p["id"], format="demonstrations").splitlines()]
    by = {r["prompt_id"]: r for r in rows}
    assert sorted(by) == ["chat", "t1"]
    assert by["t1"] == {**by["t1"], "prompt": "Say hello.", "response": "answer to t1", "edited_from": "t1-d",
                        "review": "accepted", "labeler": "a"}
    assert by["chat"]["prompt"] == CHAT and by["chat"]["response"] == "Green, or yellow."
    assert by["chat"]["meta"]["original_response"] == "answer to chat"
    for r in rows:
        Demonstration.model_validate(r)
    # pending too, when asked; rejected never
    admin.review_demonstration(ids["t2"], "rejected")
    admin.review_demonstration(ids["t1"], "accepted")
    a2 = labeler(tc, admin, "a2", None)
    p2, _ = demo_project(admin, overlap=1, name="demos2")
    admin.add_member(p2["id"], "a2")
    t = a2.next_task()
    a2.submit_demonstration(t["task_id"], "pending one")
    assert admin.export(p2["id"], format="demonstrations") == ""  # nothing accepted yet: an empty file
    pend = [json.loads(x) for x in admin.export(p2["id"], format="demonstrations", include_pending=True).splitlines()]
    assert [r["review"] for r in pend] == ["pending"]
    # what train-sft reads
    path = tmp_path / "demonstrations.jsonl"
    path.write_text(admin.export(p["id"], format="demonstrations"), encoding="utf-8")
    got = read_demonstrations(path)
    assert len(got) == 2 and {d.prompt_id for d in got} == {"t1", "chat"}
    assert next(d for d in got if d.prompt_id == "chat").conversation[-1] == {"role": "assistant", "content": "Green, or yellow."}


def test_import_files_without_drafts(tc, admin):
    """A plain prompts file imports into a demonstration project (combined rows need no candidates
    there) through the upload API; a ranking project still wants them."""
    p = admin.create_project("files", mode="demonstration")
    rows = [{"id": "f1", "text": "Write a haiku."}, {"prompt_id": "f2", "prompt": CHAT, "candidates": ["Purple."]}]
    body = "".join(json.dumps(r) + "\n" for r in rows).encode()
    r = admin.http.post(f"/api/projects/{p['id']}/import-files", files={"candidates": ("prompts.jsonl", body)},
                        headers={"Authorization": f"Bearer {admin.token}"})
    assert r.status_code == 200, r.text
    assert r.json()["prompts"] == 2 and r.json()["candidates"] == 1
    # a ranking project still asks for candidates
    rp = admin.create_project("rank-files", k=2)
    r = admin.http.post(f"/api/projects/{rp['id']}/import-files", files={"candidates": ("prompts.jsonl", body)},
                        headers={"Authorization": f"Bearer {admin.token}"})
    assert r.status_code == 422 and "'candidates' must be a list" in r.json()["detail"]


def test_cli_import_and_export(sqlite_url, tmp_path):
    import typer
    from typer.testing import CliRunner

    from rankloop.labeling.app import create_app
    from rankloop.labeling.client import LabelingClient
    from rankloop.labeling.db import dispose

    from rankloop.labeling.cli import register

    cli_app = typer.Typer()
    register(cli_app)
    run = CliRunner().invoke
    db = ["--database-url", sqlite_url]
    assert run(cli_app, ["labeling", "create-project", "cli-demos", "--mode", "demonstration", *db]).exit_code == 0
    src = tmp_path / "prompts.jsonl"
    src.write_text(json.dumps({"id": "q1", "text": "Why is the sky blue?"}) + "\n", encoding="utf-8")
    res = run(cli_app, ["labeling", "import", "cli-demos", str(src), *db])
    assert res.exit_code == 0 and json.loads(res.stdout)["prompts"] == 1, res.output
    assert run(cli_app, ["labeling", "create-user", "w", "--password", "w-password", *db]).exit_code == 0
    assert run(cli_app, ["labeling", "add-member", "cli-demos", "w", *db]).exit_code == 0

    from fastapi.testclient import TestClient

    app = create_app(sqlite_url)
    with TestClient(app) as tc:
        w = LabelingClient(tc)
        w.login("w", "w-password")
        w.submit_demonstration(w.next_task()["task_id"], "Rayleigh scattering.")
    dispose(app.state.engine)
    out = tmp_path / "demonstrations.jsonl"
    res = run(cli_app, ["export", "cli-demos", "--demonstrations", str(out), *db])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert out.read_text() == "" and info["demonstrations_exported"] == 0  # pending: not by default
    assert info["demonstrations_in_db"] == {"pending": 1, "accepted": 0, "rejected": 0}
    res = run(cli_app, ["export", "cli-demos", "--demonstrations", str(out), "--include-pending", *db])
    assert res.exit_code == 0, res.output
    [row] = [json.loads(x) for x in out.read_text().splitlines()]
    assert row["response"] == "Rayleigh scattering." and row["review"] == "pending"


def test_exported_demonstrations_train_sft(tc, admin, tmp_path, tiny_gpt2):
    """export → ``rankloop.sft`` reader → a couple of training steps on a tiny model."""
    from rankloop.sft.config import SFTConfig
    from rankloop.sft.train import train_sft

    p = admin.create_project("sft", mode="demonstration")
    admin.import_prompts(p["id"], [Prompt(id=f"s{i}", text=f"the cat number {i}") for i in range(6)])
    a = labeler(tc, admin, "a", p["id"])
    while (t := a.next_task()) is not None:
        d = a.submit_demonstration(t["task_id"], " sat on the mat and was happy.")
        admin.review_demonstration(d["demonstration_id"], "accepted")
    data = tmp_path / "demonstrations.jsonl"
    data.write_text(admin.export(p["id"], format="demonstrations"), encoding="utf-8")
    out = train_sft(SFTConfig(data=str(data), model=str(tiny_gpt2), output=str(tmp_path / "run"), max_steps=2,
                              batch_size=4, log_every=1, progress=False))
    losses = [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines() if "loss" in json.loads(x)]
    assert len(losses) == 2 and all(x > 0 for x in losses)


def test_skip_gives_a_demonstration_task_back_and_drops_its_autosave(tc, admin, app):
    p, _ = demo_project(admin, overlap=1)
    a, b = labeler(tc, admin, "a", p["id"]), labeler(tc, admin, "b", p["id"])
    t = a.next_task()
    a.save_draft(t["task_id"], "thoughts I will not send")
    assert a.skip(t["task_id"], "expertise")["duplicate"] is False
    with app.state.sessionmaker() as db:
        assert db.execute(select(func.count()).select_from(DemoDraftRow)).scalar_one() == 0
    assert a.next_task()["prompt_id"] != t["prompt_id"]  # never offered to a again
    got = b.next_task()
    assert got["task_id"] == t["task_id"] and got["saved"] is None  # back in the pool, without a's text


def test_loop_human_demonstrations_wait_for_every_answer_and_its_review(tmp_path):
    """The loop's demonstration step with people (``demonstrations.mode: human``): the app serves
    over real HTTP with the prompts loaded, and the step returns only once every prompt has its
    answer and no answer is waiting for review; then it exports the accepted ones and stops the app."""
    import threading

    from labhelp import free_port

    from rankloop.labeling.client import LabelingClient
    from rankloop.testing import wait_for_project
    from rankloop.loop import LoopConfig, step_demonstrations

    port = free_port()
    cfg = LoopConfig(output=str(tmp_path / "run"), policy="unused", prompts="unused",
                     labeling={"mode": "human", "port": port, "admin_password": "admin-pw-123", "poll_seconds": 0.1},
                     demonstrations={"enabled": True, "mode": "human"})
    prompts = [Prompt(id=f"p{i}", text=f"Say something kind, number {i}") for i in range(3)]
    (tmp_path / "run").mkdir()  # run_loop makes it before any step
    out = tmp_path / "demonstrations.jsonl"
    result: list = []
    errors: list[BaseException] = []

    def run():
        try:
            result.append(step_demonstrations(cfg, prompts, out))
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    base = f"http://127.0.0.1:{port}"
    admin, project = wait_for_project(base, "rankloop-demonstrations", 3, errors, timeout=60)
    assert project is not None and not errors, errors
    admin.create_user("wren", "wren-password")
    admin.add_member(project["id"], "wren")
    wren = LabelingClient(base)
    wren.login("wren", "wren-password")
    while (task := wren.next_task(project["id"])) is not None:
        wren.submit_demonstration(task["task_id"], f"A kind answer to {task['prompt']}", edited_from=None,
                                  idempotency_key=f"k-{task['task_id']}")
    time.sleep(0.5)  # every answer is in, none reviewed: the step keeps waiting
    assert t.is_alive() and not errors, errors
    pending = admin.demonstrations(project["id"], review="pending")
    assert len(pending) == 3
    for d in pending[:2]:
        admin.review_demonstration(d["id"], "accepted")
    admin.review_demonstration(pending[2]["id"], "rejected")
    t.join(timeout=60)
    assert not t.is_alive() and not errors, errors
    (res,) = result
    assert (res.source, res.demonstrations, res.prompts) == ("human", 2, 3)
    rows = [json.loads(ln) for ln in out.read_text().splitlines()]
    assert len(rows) == 2 and {r["labeler"] for r in rows} == {"wren"}
    with pytest.raises(Exception):
        LabelingClient(base, timeout=2).login("admin", "admin-pw-123")  # the app stopped
