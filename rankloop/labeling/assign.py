"""Assignment: which task a labeler gets next, and storing what they submit.

Each non-gold item has ``overlap`` slots (rows in ``slots``, made at import). A labeler claims an
open slot, or a leased one whose lease expired, of an item they hold no slot of. Correctness rests
on constraints, not on luck:

- ``UNIQUE (item_id, slot_no)``: a slot is one row, so two labelers cannot hold the same one; the
  claim is a conditional ``UPDATE … WHERE status = 'open' OR lease expired`` whose row count says
  whether we won. On PostgreSQL the candidate row is picked with ``FOR UPDATE SKIP LOCKED`` so
  concurrent claimers skip each other instead of queueing; on SQLite writers are serialised
  (``db.writing``).
- ``UNIQUE (item_id, labeler_id)``: never the same item twice to one labeler (a race that would
  break it fails the transaction, which is retried).
- ``UNIQUE (slot_id)`` and ``UNIQUE (labeler_id, idempotency_key)`` on rankings: a slot is
  answered once, and a retried or double-clicked submission is recognised and stored once.

Gold items get a slot per labeler when served, at the project's ``gold_rate``: a labeler is given
a gold item whenever fewer than ``gold_rate`` × (tasks so far + 1) of their tasks were gold.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from fastapi import HTTPException
from sqlalchemy import and_, case, exists, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from rankloop.labeling.db import writing
from rankloop.labeling.deps import as_utc
from rankloop.labeling.models import CandidateRow, Item, Member, Project, PromptRow, RankingRow, Slot
from rankloop.labeling.schemas import CandidateView, SubmitIn, SubmitOut, TaskOut
from rankloop.records import normalise_order

RETRIES = 8


@dataclass(frozen=True)
class ItemView:
    """An item as shown: immutable after import, so it is cached per process."""

    item_id: int
    project_id: int
    prompt_id: str
    prompt: object
    candidates: tuple[tuple[str, str], ...]  # (id, text) in stored order
    is_gold: bool

    @property
    def ids(self) -> frozenset[str]:
        return frozenset(c for c, _ in self.candidates)


class ItemCache:
    def __init__(self, max_size: int = 50000):
        self._d: dict[int, ItemView] = {}
        self._lock = threading.Lock()
        self.max_size = max_size

    def get(self, db: Session, item_id: int) -> ItemView:
        v = self._d.get(item_id)
        if v is not None:
            return v
        it = db.execute(
            select(Item.project_id, Item.candidate_ids, Item.is_gold, Item.prompt_row_id, PromptRow.external_id, PromptRow.content)
            .join(PromptRow, PromptRow.id == Item.prompt_row_id)
            .where(Item.id == item_id)
        ).one()
        texts = dict(
            db.execute(
                select(CandidateRow.external_id, CandidateRow.text).where(
                    CandidateRow.prompt_row_id == it.prompt_row_id, CandidateRow.external_id.in_(it.candidate_ids)
                )
            ).all()
        )
        v = ItemView(item_id, it.project_id, it.external_id, it.content,
                     tuple((c, texts[c]) for c in it.candidate_ids), bool(it.is_gold))
        with self._lock:
            if len(self._d) >= self.max_size:
                self._d.clear()
            self._d[item_id] = v
        return v


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


def member_projects(db: Session, user_id: int, is_admin: bool, project_id: int | None) -> list[int]:
    if project_id is not None:
        if not is_admin:
            ok = db.execute(select(Member.project_id).where(Member.project_id == project_id, Member.user_id == user_id)).first()
            if ok is None:
                raise HTTPException(404, f"project {project_id} not found among your projects")
        elif db.get(Project, project_id) is None:
            raise HTTPException(404, f"project {project_id} not found")
        return [project_id]
    return list(db.execute(select(Member.project_id).where(Member.user_id == user_id).order_by(Member.project_id)).scalars())


def _task_out(view: ItemView, slot_id: int, project: Project | None, lease_expires: datetime, db: Session) -> TaskOut:
    if project is None:
        project = db.get(Project, view.project_id)
    cands = list(view.candidates)
    random.Random(slot_id).shuffle(cands)  # each labeler sees their own order: no position bias shared
    return TaskOut(task_id=slot_id, project_id=view.project_id, mode=project.mode, instructions=project.instructions,
                   prompt_id=view.prompt_id, prompt=view.prompt,
                   candidates=[CandidateView(id=c, text=t) for c, t in cands], lease_expires=lease_expires)


def _claim(db: Session, project: Project, user_id: int, now: datetime) -> tuple[int, int] | None:
    """Take a slot in ``project`` for ``user_id``: (slot id, item id) or None when none is left."""
    lease_until = now + timedelta(seconds=project.lease_seconds)
    if project.gold_rate > 0:
        total, gold = db.execute(
            select(func.count(), func.coalesce(func.sum(case((Slot.is_gold, 1), else_=0)), 0)).where(
                Slot.labeler_id == user_id, Slot.project_id == project.id
            )
        ).one()
        if gold < project.gold_rate * (total + 1):
            gid = db.execute(
                select(Item.id).where(
                    Item.project_id == project.id, Item.is_gold,
                    ~exists().where(Slot.item_id == Item.id, Slot.labeler_id == user_id),
                ).order_by(Item.id).limit(1)
            ).scalar()
            if gid is not None:
                sid = db.execute(
                    insert(Slot).values(project_id=project.id, item_id=gid, slot_no=None, labeler_id=user_id, status="leased",
                                        is_gold=True, leased_at=now, lease_expires=lease_until).returning(Slot.id)
                ).scalar_one()
                return sid, gid
    mine = aliased(Slot)
    claimable = or_(Slot.status == "open", and_(Slot.status == "leased", Slot.lease_expires < now))
    for _ in range(RETRIES):
        row = db.execute(
            select(Slot.id, Slot.item_id)
            .where(Slot.project_id == project.id, Slot.status.in_(("open", "leased")), claimable, Slot.slot_no.is_not(None),
                   ~exists().where(mine.item_id == Slot.item_id, mine.labeler_id == user_id))
            .order_by(Slot.id).limit(1)
            .with_for_update(skip_locked=True, of=Slot)
        ).first()
        if row is None:
            return None
        won = db.execute(
            update(Slot).where(Slot.id == row.id, claimable)
            .values(labeler_id=user_id, status="leased", leased_at=now, lease_expires=lease_until)
            .execution_options(synchronize_session=False)
        ).rowcount
        if won == 1:
            return row.id, row.item_id
    return None


def next_task(db: Session, items: ItemCache, user_id: int, is_admin: bool, project_id: int | None = None) -> TaskOut | None:
    """The labeler's current task if they hold one (its lease renewed), else a newly claimed one."""
    pids = member_projects(db, user_id, is_admin, project_id)
    if not pids:
        return None
    for attempt in range(RETRIES):
        try:
            with writing(db):
                now = now_utc()
                held = db.execute(
                    select(Slot.id, Slot.item_id, Slot.project_id).where(
                        Slot.labeler_id == user_id, Slot.status == "leased", Slot.project_id.in_(pids)
                    ).order_by(Slot.id).limit(1)
                ).first()
                if held is not None:
                    project = db.get(Project, held.project_id)
                    until = now + timedelta(seconds=project.lease_seconds)
                    db.execute(update(Slot).where(Slot.id == held.id).values(lease_expires=until)
                               .execution_options(synchronize_session=False))
                    return _task_out(items.get(db, held.item_id), held.id, project, until, db)
                for pid in pids:
                    project = db.get(Project, pid)
                    got = _claim(db, project, user_id, now)
                    if got is not None:
                        until = now + timedelta(seconds=project.lease_seconds)
                        return _task_out(items.get(db, got[1]), got[0], project, until, db)
                return None
        except IntegrityError:
            if attempt == RETRIES - 1:
                raise
    return None


def get_task(db: Session, items: ItemCache, task_id: int, user_id: int, is_admin: bool) -> TaskOut:
    s = db.execute(select(Slot.item_id, Slot.labeler_id, Slot.lease_expires).where(Slot.id == task_id)).first()
    if s is None or (s.labeler_id != user_id and not is_admin):
        raise HTTPException(404, f"task {task_id} not found among your tasks")
    return _task_out(items.get(db, s.item_id), task_id, None, as_utc(s.lease_expires) or now_utc(), db)


def check_permutation(order: list[list[str]], shown: frozenset[str]) -> None:
    """422 unless ``order`` names each shown candidate exactly once."""
    flat = [c for g in order for c in g]
    counts: dict[str, int] = {}
    for c in flat:
        counts[c] = counts.get(c, 0) + 1
    problems = []
    if any(len(g) == 0 for g in order):
        problems.append("a tie group is empty")
    rep = sorted(c for c, n in counts.items() if n > 1)
    unknown = sorted(set(counts) - shown)
    missing = sorted(shown - set(counts))
    if rep:
        problems.append(f"repeated: {rep}")
    if unknown:
        problems.append(f"not shown in this task: {unknown}")
    if missing:
        problems.append(f"missing: {missing}")
    if problems:
        raise HTTPException(422, "the ranking must be a permutation of the shown candidate ids "
                                 f"{sorted(shown)}; " + "; ".join(problems))


def submit(db: Session, items: ItemCache, task_id: int, user_id: int, body: SubmitIn) -> SubmitOut:
    try:
        order = normalise_order(body.order)
    except ValueError as e:
        raise HTTPException(422, str(e)) from None
    conflict = False  # set after a unique violation: find out which constraint, in a fresh transaction
    for attempt in range(RETRIES):
        try:
            with writing(db):
                s = db.execute(select(Slot.item_id, Slot.labeler_id, Slot.status, Slot.project_id, Slot.is_gold)
                               .where(Slot.id == task_id)).first()
                if s is None or s.labeler_id != user_id:
                    raise HTTPException(404, f"task {task_id} is not yours (unknown, or its lease expired and it was "
                                             "given to someone else)")
                done = db.execute(select(RankingRow.id, RankingRow.idempotency_key).where(RankingRow.slot_id == task_id)).first()
                if done is not None:
                    if done.idempotency_key == body.idempotency_key:
                        return SubmitOut(ranking_id=done.id, task_id=task_id, duplicate=True)
                    raise HTTPException(409, f"task {task_id} was already submitted (with another idempotency key)")
                if conflict:
                    other = db.execute(select(RankingRow.slot_id).where(
                        RankingRow.labeler_id == user_id, RankingRow.idempotency_key == body.idempotency_key)).scalar()
                    if other is not None:
                        raise HTTPException(409, f"idempotency key already used for task {other}")
                check_permutation(order, items.get(db, s.item_id).ids)
                rid = db.execute(insert(RankingRow).values(
                    slot_id=task_id, project_id=s.project_id, item_id=s.item_id, labeler_id=user_id, order=order,
                    all_bad=body.all_bad, unsafe=body.unsafe, rationale=body.rationale or None,
                    idempotency_key=body.idempotency_key, is_gold=s.is_gold, created_at=now_utc(),
                ).returning(RankingRow.id)).scalar_one()
                db.execute(update(Slot).where(Slot.id == task_id).values(status="done")
                           .execution_options(synchronize_session=False))
                return SubmitOut(ranking_id=rid, task_id=task_id, duplicate=False)
        except IntegrityError:
            conflict = True
            if attempt == RETRIES - 1:
                raise
    raise AssertionError("unreachable")
