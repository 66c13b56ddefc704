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

Leases that run out are reaped (the slot reopened, a gold slot dropped) at most every
``REAP_EVERY`` seconds per process, inside a claiming transaction.

This is the hot path of the app (every labeler, every few seconds), so it runs on a plain
SQLAlchemy ``Connection`` with pre-built SQL: about four statements per request, project settings
and item texts memoised in process (items never change after import; project settings are
re-read every ``SETTINGS_TTL`` seconds).

Gold items get a slot per labeler when served, at the project's ``gold_rate``: a labeler is given
a gold item whenever fewer than ``gold_rate`` × (tasks so far + 1) of their tasks were gold.
"""

from __future__ import annotations

import random
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator

from fastapi import HTTPException
from sqlalchemy import JSON, Boolean, DateTime, bindparam, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from rankloop.labeling.schemas import CandidateView, SubmitIn, SubmitOut, TaskOut
from rankloop.records import normalise_order

RETRIES = 8
REAP_EVERY = 5.0
SETTINGS_TTL = 5.0
TS = DateTime(timezone=True)


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class ItemView:
    """An item as shown: immutable after import, so it is memoised per process."""

    item_id: int
    project_id: int
    prompt_id: str
    prompt: Any
    candidates: tuple[tuple[str, str], ...]  # (id, text) in stored order
    is_gold: bool
    ids: frozenset[str]


@dataclass(frozen=True)
class Settings:
    mode: str
    instructions: str
    lease_seconds: int
    gold_rate: float


def _sql(dialect: str) -> dict[str, Any]:
    lock = " FOR UPDATE SKIP LOCKED" if dialect == "postgresql" else ""
    return {
        "held": text("SELECT id, item_id, project_id FROM slots WHERE labeler_id = :uid AND status = 'leased' "
                     "AND project_id IN :pids ORDER BY id LIMIT 1").bindparams(bindparam("pids", expanding=True)),
        "renew": text("UPDATE slots SET lease_expires = :until WHERE id = :sid").bindparams(bindparam("until", type_=TS)),
        "reap_open": text("UPDATE slots SET status = 'open', labeler_id = NULL, leased_at = NULL, lease_expires = NULL "
                          "WHERE status = 'leased' AND lease_expires < :now AND slot_no IS NOT NULL")
        .bindparams(bindparam("now", type_=TS)),
        "reap_gold": text("DELETE FROM slots WHERE status = 'leased' AND lease_expires < :now AND slot_no IS NULL")
        .bindparams(bindparam("now", type_=TS)),
        "claim": text("SELECT s.id, s.item_id FROM slots s WHERE s.project_id = :pid AND s.status = 'open' "
                      "AND NOT EXISTS (SELECT 1 FROM slots m WHERE m.item_id = s.item_id AND m.labeler_id = :uid) "
                      "ORDER BY s.id LIMIT 1" + lock),
        "take": text("UPDATE slots SET labeler_id = :uid, status = 'leased', leased_at = :now, lease_expires = :until "
                     "WHERE id = :sid AND status = 'open'").bindparams(bindparam("now", type_=TS), bindparam("until", type_=TS)),
        "my_counts": text("SELECT count(*), coalesce(sum(CASE WHEN is_gold THEN 1 ELSE 0 END), 0) FROM slots "
                          "WHERE labeler_id = :uid AND project_id = :pid"),
        "gold_item": text("SELECT i.id FROM items i WHERE i.project_id = :pid AND i.is_gold AND NOT EXISTS "
                          "(SELECT 1 FROM slots m WHERE m.item_id = i.id AND m.labeler_id = :uid) ORDER BY i.id LIMIT 1"),
        "gold_slot": text("INSERT INTO slots (project_id, item_id, slot_no, labeler_id, status, is_gold, leased_at, lease_expires) "
                          "VALUES (:pid, :iid, NULL, :uid, 'leased', :true, :now, :until) RETURNING id")
        .bindparams(bindparam("now", type_=TS), bindparam("until", type_=TS), bindparam("true", type_=Boolean)),
        "slot": text("SELECT s.item_id, s.labeler_id, s.project_id, s.is_gold, s.lease_expires, r.id, r.idempotency_key "
                     "FROM slots s LEFT JOIN rankings r ON r.slot_id = s.id WHERE s.id = :sid")
        .columns(lease_expires=TS),
        "key_used": text("SELECT slot_id FROM rankings WHERE labeler_id = :uid AND idempotency_key = :key"),
        "insert_ranking": text(
            "INSERT INTO rankings (slot_id, project_id, item_id, labeler_id, ranking, all_bad, unsafe, rationale, "
            "idempotency_key, is_gold, created_at) VALUES (:sid, :pid, :iid, :uid, :order, :all_bad, :unsafe, :rationale, "
            ":key, :is_gold, :now) RETURNING id"
        ).bindparams(bindparam("order", type_=JSON), bindparam("now", type_=TS), bindparam("all_bad", type_=Boolean),
                     bindparam("unsafe", type_=Boolean), bindparam("is_gold", type_=Boolean)),
        "done": text("UPDATE slots SET status = 'done' WHERE id = :sid"),
        "settings": text("SELECT mode, instructions, lease_seconds, gold_rate FROM projects WHERE id = :pid"),
        "member_of": text("SELECT project_id FROM members WHERE user_id = :uid ORDER BY project_id"),
        "exists": text("SELECT id FROM projects WHERE id = :pid"),
        "item": text("SELECT i.project_id, i.candidate_ids, i.is_gold, i.prompt_row_id, p.external_id, p.content "
                     "FROM items i JOIN prompts p ON p.id = i.prompt_row_id WHERE i.id = :iid")
        .columns(candidate_ids=JSON, content=JSON),
        "texts": text("SELECT external_id, text FROM candidates WHERE prompt_row_id = :prow"),
    }


class Queue:
    """Task assignment and submission over one engine (one per app)."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.sql = _sql(engine.dialect.name)
        self.sqlite = engine.dialect.name == "sqlite"
        self._write_lock = getattr(engine, "info_write_lock", None)
        self._items: dict[int, ItemView] = {}
        self._settings: dict[int, tuple[float, Settings]] = {}
        self._members: dict[int, tuple[float, list[int]]] = {}
        self._last_reap = 0.0
        self.reap_every = REAP_EVERY
        self._lock = threading.Lock()

    # ------------------------------------------------------------ plumbing
    @contextmanager
    def writing(self) -> Iterator[Connection]:
        """One write transaction; on SQLite under the process's write lock, with BEGIN IMMEDIATE."""
        with self._write_lock if self._write_lock is not None else nullcontext():
            with self.engine.connect() as conn:
                if self.sqlite:
                    conn.execution_options(sqlite_immediate=True)
                with conn.begin():
                    yield conn

    def forget(self, project_id: int | None = None, user_id: int | None = None) -> None:
        """Drop memoised settings/memberships (after an admin changes them in this process)."""
        with self._lock:
            if project_id is not None:
                self._settings.pop(project_id, None)
            if user_id is not None:
                self._members.pop(user_id, None)
            if project_id is None and user_id is None:
                self._settings.clear()
                self._members.clear()

    def settings(self, conn: Connection, pid: int) -> Settings:
        hit = self._settings.get(pid)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        row = conn.execute(self.sql["settings"], {"pid": pid}).first()
        if row is None:
            raise HTTPException(404, f"project {pid} not found")
        s = Settings(row[0], row[1], row[2], row[3])
        self._settings[pid] = (time.monotonic() + SETTINGS_TTL, s)
        return s

    def projects_of(self, conn: Connection, uid: int, is_admin: bool, project_id: int | None) -> list[int]:
        hit = self._members.get(uid)
        if hit is not None and hit[0] > time.monotonic():
            mine = hit[1]
        else:
            mine = [r[0] for r in conn.execute(self.sql["member_of"], {"uid": uid})]
            self._members[uid] = (time.monotonic() + SETTINGS_TTL, mine)
        if project_id is None:
            return mine
        if project_id in mine or (is_admin and conn.execute(self.sql["exists"], {"pid": project_id}).first()):
            return [project_id]
        raise HTTPException(404, f"project {project_id} not found among your projects")

    def item(self, conn: Connection, item_id: int) -> ItemView:
        v = self._items.get(item_id)
        if v is not None:
            return v
        it = conn.execute(self.sql["item"], {"iid": item_id}).one()
        texts = dict(conn.execute(self.sql["texts"], {"prow": it.prompt_row_id}).all())
        cands = tuple((c, texts[c]) for c in it.candidate_ids)
        v = ItemView(item_id, it.project_id, it.external_id, it.content, cands, bool(it.is_gold), frozenset(it.candidate_ids))
        with self._lock:
            if len(self._items) > 100_000:
                self._items.clear()
            self._items[item_id] = v
        return v

    def _task(self, conn: Connection, item_id: int, slot_id: int, pid: int, until: datetime) -> TaskOut:
        view, st = self.item(conn, item_id), self.settings(conn, pid)
        cands = list(view.candidates)
        random.Random(slot_id).shuffle(cands)  # each labeler sees their own order: no shared position bias
        return TaskOut(task_id=slot_id, project_id=pid, mode=st.mode, instructions=st.instructions, prompt_id=view.prompt_id,
                       prompt=view.prompt, candidates=[CandidateView(id=c, text=t) for c, t in cands], lease_expires=until)

    # ------------------------------------------------------------ assignment
    def _reap(self, conn: Connection, now: datetime) -> None:
        if time.monotonic() - self._last_reap < self.reap_every:
            return
        self._last_reap = time.monotonic()
        conn.execute(self.sql["reap_open"], {"now": now})
        conn.execute(self.sql["reap_gold"], {"now": now})

    def _claim(self, conn: Connection, pid: int, uid: int, now: datetime) -> tuple[int, int, datetime] | None:
        st = self.settings(conn, pid)
        until = now + timedelta(seconds=st.lease_seconds)
        if st.gold_rate > 0:
            total, gold = conn.execute(self.sql["my_counts"], {"uid": uid, "pid": pid}).one()
            if gold < st.gold_rate * (total + 1):
                gid = conn.execute(self.sql["gold_item"], {"pid": pid, "uid": uid}).scalar()
                if gid is not None:
                    sid = conn.execute(self.sql["gold_slot"], {"pid": pid, "iid": gid, "uid": uid, "true": True, "now": now,
                                                               "until": until}).scalar_one()
                    return sid, gid, until
        for _ in range(RETRIES):
            row = conn.execute(self.sql["claim"], {"pid": pid, "uid": uid}).first()
            if row is None:
                return None
            if conn.execute(self.sql["take"], {"uid": uid, "now": now, "until": until, "sid": row[0]}).rowcount == 1:
                return row[0], row[1], until
        return None

    def next_task(self, uid: int, is_admin: bool, project_id: int | None = None) -> TaskOut | None:
        """The task the labeler holds (lease renewed), else a newly claimed one; None when none is left."""
        for attempt in range(RETRIES):
            try:
                with self.writing() as conn:
                    pids = self.projects_of(conn, uid, is_admin, project_id)
                    if not pids:
                        return None
                    now = now_utc()
                    held = conn.execute(self.sql["held"], {"uid": uid, "pids": pids}).first()
                    if held is not None:
                        until = now + timedelta(seconds=self.settings(conn, held[2]).lease_seconds)
                        conn.execute(self.sql["renew"], {"until": until, "sid": held[0]})
                        return self._task(conn, held[1], held[0], held[2], until)
                    self._reap(conn, now)
                    for pid in pids:
                        got = self._claim(conn, pid, uid, now)
                        if got is not None:
                            return self._task(conn, got[1], got[0], pid, got[2])
                    return None
            except IntegrityError:  # a concurrent claim by the same labeler: start over
                if attempt == RETRIES - 1:
                    raise
        return None

    def get_task(self, task_id: int, uid: int, is_admin: bool) -> TaskOut:
        with self.engine.connect() as conn:
            s = conn.execute(self.sql["slot"], {"sid": task_id}).first()
            if s is None or (s.labeler_id != uid and not is_admin):
                raise HTTPException(404, f"task {task_id} not found among your tasks")
            return self._task(conn, s.item_id, task_id, s.project_id, s.lease_expires or now_utc())

    # ------------------------------------------------------------ submission
    def submit(self, task_id: int, uid: int, body: SubmitIn) -> SubmitOut:
        try:
            order = normalise_order(body.order)
        except ValueError as e:
            raise HTTPException(422, str(e)) from None
        conflict = False  # after a unique violation: find out which, in a fresh transaction
        for attempt in range(RETRIES):
            try:
                with self.writing() as conn:
                    s = conn.execute(self.sql["slot"], {"sid": task_id}).first()
                    if s is None or s.labeler_id != uid:
                        raise HTTPException(404, f"task {task_id} is not yours (unknown, or its lease expired and it "
                                                 "was given to someone else)")
                    if s.id is not None:  # already answered
                        if s.idempotency_key == body.idempotency_key:
                            return SubmitOut(ranking_id=s.id, task_id=task_id, duplicate=True)
                        raise HTTPException(409, f"task {task_id} was already submitted (with another idempotency key)")
                    if conflict:
                        other = conn.execute(self.sql["key_used"], {"uid": uid, "key": body.idempotency_key}).scalar()
                        if other is not None:
                            raise HTTPException(409, f"idempotency key already used for task {other}")
                    check_permutation(order, self.item(conn, s.item_id).ids)
                    rid = conn.execute(self.sql["insert_ranking"], {
                        "sid": task_id, "pid": s.project_id, "iid": s.item_id, "uid": uid, "order": order,
                        "all_bad": body.all_bad, "unsafe": body.unsafe, "rationale": body.rationale or None,
                        "key": body.idempotency_key, "is_gold": bool(s.is_gold), "now": now_utc()}).scalar_one()
                    conn.execute(self.sql["done"], {"sid": task_id})
                    return SubmitOut(ranking_id=rid, task_id=task_id, duplicate=False)
            except IntegrityError:
                conflict = True
                if attempt == RETRIES - 1:
                    raise
        raise AssertionError("unreachable")


def check_permutation(order: list[list[str]], shown: frozenset[str]) -> None:
    """422 unless ``order`` names each shown candidate exactly once."""
    counts: dict[str, int] = {}
    for g in order:
        for c in g:
            counts[c] = counts.get(c, 0) + 1
    problems = []
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
