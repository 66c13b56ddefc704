"""Demonstration tasks (issue 12 item 1): autosave what a labeler is writing, store what they
submit, review it, and export it as ``records.Demonstration`` rows for ``rankloop train-sft``.

Assignment itself is the ranking queue's (``assign.Queue``: slots, overlap, leases); a
demonstration task is a slot of a ``demonstration`` project's item. Who may do what:

- a task's autosaved text and its submission belong to the labeler holding the slot: anyone else
  (another labeler, an admin) is told the task is not theirs, as ``Queue.submit`` does;
- reviewing and listing demonstrations is for admins (the routes check it);
- a demonstration is kept as written: a reviewer's edit is stored beside it (``accepted_text``)
  and exported in its place, with the original in the row's ``meta``.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from rankloop.labeling.db import writing
from rankloop.labeling.models import (DemoDraftRow, DemonstrationRow, Item, Project, PromptRow, Slot, User, as_utc)
from rankloop.labeling.schemas import (DemonstrationIn, DemonstrationOut, DemonstrationSubmitOut, DraftIn, DraftOut, ReviewIn,
                                       SavedDraft)
from rankloop.labeling.services.errors import Conflict, Invalid, NotFound, brief, listing
from rankloop.records import Demonstration

MODE = "demonstration"


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _held_slot(db: Session, task_id: int, uid: int) -> tuple[Slot, Project, Item]:
    """The slot ``task_id`` if ``uid`` holds it, with its project and item; ``NotFound`` otherwise
    (whoever else asks learns nothing about it), ``Invalid`` for a task of a ranking project."""
    slot = db.get(Slot, task_id)
    if slot is None or slot.labeler_id != uid:
        raise NotFound(f"task {task_id} is not yours (unknown, or its lease expired and it was given to someone else)")
    project = db.get(Project, slot.project_id)
    if project.mode != MODE:
        raise Invalid(f"task {task_id} is a {project.mode} task, not a demonstration: submit a ranking to "
                      f"/api/tasks/{task_id}/submit")
    return slot, project, db.get(Item, slot.item_id)


def _check_origin(edited_from: str | None, item: Item) -> None:
    if edited_from is not None and edited_from not in item.candidate_ids:
        shown = listing([repr(c) for c in item.candidate_ids]) or "none"
        raise Invalid(f"edited_from {brief(edited_from)} is not one of this task's drafts (drafts: {shown})")


def check_response(text: str, field: str = "response") -> str:
    """The text as stored (exactly as written), or ``Invalid`` when there is nothing in it."""
    if not text.strip():
        raise Invalid(f"{field}: the response is {'empty' if not text else 'only whitespace'}: write the answer "
                      "you want the model to give")
    return text


def save_draft(db: Session, task_id: int, uid: int, body: DraftIn) -> DraftOut:
    """Store what the labeler has written so far (replacing the last autosave) and renew the
    task's lease: someone still writing a long answer keeps their task."""
    with writing(db):
        slot, project, item = _held_slot(db, task_id, uid)
        if slot.status == "done":
            raise Conflict(f"task {task_id} was already submitted; the autosave is not needed any more")
        _check_origin(body.edited_from, item)
        now = _now()
        row = db.execute(select(DemoDraftRow).where(DemoDraftRow.slot_id == task_id, DemoDraftRow.labeler_id == uid)
                         ).scalar_one_or_none()
        if row is None:
            row = DemoDraftRow(slot_id=task_id, labeler_id=uid, text=body.text, edited_from=body.edited_from, updated_at=now)
            db.add(row)
        else:
            row.text, row.edited_from, row.updated_at = body.text, body.edited_from, now
        slot.lease_expires = now + timedelta(seconds=project.lease_seconds)
        out = DraftOut(task_id=task_id, saved=SavedDraft(text=body.text, edited_from=body.edited_from, updated_at=now),
                       lease_expires=slot.lease_expires)
    return out


def submit(db: Session, task_id: int, uid: int, body: DemonstrationIn) -> DemonstrationSubmitOut:
    """Store the labeler's demonstration once (a retry with the same idempotency key is
    recognised), close the slot and drop the autosave."""
    for attempt in range(2):  # a concurrent double submit loses the unique race: look again
        try:
            with writing(db):
                slot, _project, item = _held_slot(db, task_id, uid)
                done = db.execute(select(DemonstrationRow).where(DemonstrationRow.slot_id == task_id)).scalar_one_or_none()
                if done is not None:
                    if done.idempotency_key == body.idempotency_key:
                        return DemonstrationSubmitOut(demonstration_id=done.id, task_id=task_id, duplicate=True)
                    raise Conflict(f"task {task_id} was already submitted (with another idempotency key)")
                other = db.execute(select(DemonstrationRow.slot_id).where(
                    DemonstrationRow.project_id == slot.project_id, DemonstrationRow.labeler_id == uid,
                    DemonstrationRow.idempotency_key == body.idempotency_key)).scalar_one_or_none()
                if other is not None:
                    raise Conflict(f"idempotency key already used for task {other}")
                check_response(body.response)
                _check_origin(body.edited_from, item)
                row = DemonstrationRow(slot_id=task_id, project_id=slot.project_id, item_id=slot.item_id, labeler_id=uid,
                                       response=body.response, edited_from=body.edited_from,
                                       idempotency_key=body.idempotency_key, review="pending", created_at=_now())
                db.add(row)
                slot.status = "done"
                db.execute(delete(DemoDraftRow).where(DemoDraftRow.slot_id == task_id))
                db.flush()
                return DemonstrationSubmitOut(demonstration_id=row.id, task_id=task_id, duplicate=False)
        except IntegrityError:
            if attempt == 1:
                raise
    raise AssertionError("unreachable")


def _rows(db: Session, project_id: int, reviews: tuple[str, ...] | None = None, demo_id: int | None = None):
    reviewer = aliased(User)
    q = (select(DemonstrationRow, PromptRow.external_id, PromptRow.content, User.username, reviewer.username)
         .join(Item, Item.id == DemonstrationRow.item_id).join(PromptRow, PromptRow.id == Item.prompt_row_id)
         .join(User, User.id == DemonstrationRow.labeler_id)
         .outerjoin(reviewer, reviewer.id == DemonstrationRow.reviewer_id)
         .where(DemonstrationRow.project_id == project_id).order_by(DemonstrationRow.id))
    if reviews is not None:
        q = q.where(DemonstrationRow.review.in_(reviews))
    if demo_id is not None:
        q = q.where(DemonstrationRow.id == demo_id)
    return db.execute(q).all()


def _out(r: DemonstrationRow, prompt_id: str, content, labeler: str, reviewer: str | None) -> DemonstrationOut:
    return DemonstrationOut(id=r.id, task_id=r.slot_id, item_id=r.item_id, project_id=r.project_id, prompt_id=prompt_id,
                            prompt=content, labeler=labeler, response=r.response, edited_from=r.edited_from, review=r.review,
                            accepted_text=r.accepted_text, reviewer=reviewer, reviewed_at=as_utc(r.reviewed_at),
                            created_at=as_utc(r.created_at))


def list_demonstrations(db: Session, project_id: int, review: str | None = None) -> list[DemonstrationOut]:
    """A project's submitted demonstrations, oldest first (``review``: only those in that state)."""
    return [_out(*row) for row in _rows(db, project_id, (review,) if review else None)]


def review(db: Session, demo_id: int, reviewer_id: int, body: ReviewIn) -> DemonstrationOut:
    """Accept (optionally with an edit, kept as the accepted text) or reject a demonstration. A
    later verdict replaces an earlier one: reviewers may change their mind."""
    with writing(db):
        row = db.get(DemonstrationRow, demo_id)
        if row is None:
            raise NotFound(f"demonstration {demo_id} not found")
        if body.verdict == "rejected":
            if body.text is not None:
                raise Invalid("a rejection takes no text: to keep an edited version, accept it with the edit")
            row.accepted_text = None
        else:
            edit = body.text
            if edit is not None:
                check_response(edit, "text")
            row.accepted_text = edit if edit is not None and edit != row.response else None
        row.review, row.reviewer_id, row.reviewed_at = body.verdict, reviewer_id, _now()
        project_id = row.project_id
    return _out(*_rows(db, project_id, demo_id=demo_id)[0])


def records(db: Session, project_id: int, include_pending: bool = False) -> list[Demonstration]:
    """What ``rankloop train-sft`` reads: accepted demonstrations (with pending ones too when
    ``include_pending``); rejected ones never. An accepted edit is the response; the labeler's
    original and the task are in ``meta``."""
    reviews = ("accepted", "pending") if include_pending else ("accepted",)
    out = []
    for r, prompt_id, content, labeler, reviewer in _rows(db, project_id, reviews):
        meta = {"task_id": r.slot_id, "project_id": r.project_id}
        if r.accepted_text is not None:
            meta["original_response"] = r.response
        if reviewer is not None:
            meta["reviewer"] = reviewer
        out.append(Demonstration(prompt_id=prompt_id, prompt=content, response=r.accepted_text or r.response,
                                 labeler=labeler, edited_from=r.edited_from, review=r.review,
                                 created_at=as_utc(r.created_at), meta=meta))
    return out


def export_rows(db: Session, project_id: int, include_pending: bool = False) -> list[dict]:
    return [d.to_row() for d in records(db, project_id, include_pending)]
