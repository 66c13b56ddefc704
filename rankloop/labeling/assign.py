"""Assignment: which task a labeler gets next, and storing what they submit.

Each non-gold item has ``overlap`` slots (rows in ``slots``, made at import). A labeler claims an
open slot, or a leased one whose lease expired, of an item they hold no slot of. Correctness rests
on constraints, not on luck:

- ``UNIQUE (item_id, slot_no)``: a slot is one row, so two labelers cannot hold the same one; the
  claim is a conditional ``UPDATE … WHERE status = 'open'`` whose row count says whether we won. On PostgreSQL the candidate row is picked with ``FOR UPDATE SKIP LOCKED`` so
  concurrent claimers skip each other instead of queueing; on SQLite writers are serialised
  (``Queue.writing``: a process lock and ``BEGIN IMMEDIATE``).
- ``UNIQUE (item_id, labeler_id)``: never the same item twice to one labeler (a race that would
  break it fails the transaction, which is retried).
- ``UNIQUE (slot_id)`` and ``UNIQUE (project_id, labeler_id, idempotency_key)`` on rankings: a
  slot is answered once, and a retried or double-clicked submission is recognised and stored once
  (a key means nothing outside its project: another project may see the same one).

Leases that run out are reaped (the slot reopened, a gold slot dropped) at most every
``REAP_EVERY`` seconds per process, inside a claiming transaction.

This is the hot path of the app (every labeler, every few seconds), so it runs fixed SQL on the
pooled DB-API connection (SQLAlchemy's per-statement machinery costs more than SQLite's work
here): three statements per request, project settings and memberships memoised for
``SETTINGS_TTL`` seconds and item texts for the life of the process (items never change after
import). The schema is still SQLAlchemy's and Alembic's (``models``, ``migrations``).

Gold items get a slot per labeler when served, at the project's ``gold_rate``: a labeler is given
a gold item whenever fewer than ``gold_rate`` × (tasks so far + 1) of their tasks were gold.
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator

from sqlalchemy.engine import Engine

from rankloop.labeling.feedback import check_submission, settings_of
from rankloop.labeling.schemas import CandidateView, FeedbackSettings, SubmitIn, SubmitOut, TaskOut
from rankloop.labeling.services.errors import Conflict, Invalid, NotFound, listing
from rankloop.records import normalise_order

RETRIES = 8
REAP_EVERY = 5.0
SETTINGS_TTL = 5.0


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
    feedback: FeedbackSettings | None = None  # issue 15 item 1


SQL = {
    "mine": "SELECT id, item_id, project_id FROM slots WHERE labeler_id = :uid AND status = 'leased' ORDER BY id",
    "renew": "UPDATE slots SET lease_expires = :until WHERE id = :sid AND labeler_id = :uid AND status = 'leased'",
    "reap_open": "UPDATE slots SET status = 'open', labeler_id = NULL, leased_at = NULL, lease_expires = NULL "
                 "WHERE status = 'leased' AND lease_expires < :now AND slot_no IS NOT NULL",
    "reap_gold": "DELETE FROM slots WHERE status = 'leased' AND lease_expires < :now AND slot_no IS NULL",
    "claim": "SELECT s.id, s.item_id FROM slots s WHERE s.project_id = :pid AND s.status = 'open' "
             "AND NOT EXISTS (SELECT 1 FROM slots m WHERE m.item_id = s.item_id AND m.labeler_id = :uid) "
             "ORDER BY s.id LIMIT 1{lock}",
    "take": "UPDATE slots SET labeler_id = :uid, status = 'leased', leased_at = :now, lease_expires = :until "
            "WHERE id = :sid AND status = 'open'",
    "my_counts": "SELECT count(*), coalesce(sum(CASE WHEN is_gold THEN 1 ELSE 0 END), 0) FROM slots "
                 "WHERE labeler_id = :uid AND project_id = :pid",
    "gold_item": "SELECT i.id FROM items i WHERE i.project_id = :pid AND i.is_gold AND NOT EXISTS "
                 "(SELECT 1 FROM slots m WHERE m.item_id = i.id AND m.labeler_id = :uid) ORDER BY i.id LIMIT 1",
    "gold_slot": "INSERT INTO slots (project_id, item_id, slot_no, labeler_id, status, is_gold, leased_at, lease_expires) "
                 "VALUES (:pid, :iid, NULL, :uid, 'leased', :true, :now, :until) RETURNING id",
    "slot": "SELECT s.item_id, s.labeler_id, s.project_id, s.is_gold, s.lease_expires, r.id, r.idempotency_key "
            "FROM slots s LEFT JOIN rankings r ON r.slot_id = s.id WHERE s.id = :sid",
    "key_used": "SELECT slot_id FROM rankings WHERE project_id = :pid AND labeler_id = :uid AND idempotency_key = :key",
    "insert_ranking": "INSERT INTO rankings (slot_id, project_id, item_id, labeler_id, ranking, all_bad, unsafe, rationale, "
                      "idempotency_key, is_gold, created_at, strength, strength_scale, unsafe_ids) VALUES (:sid, :pid, :iid, "
                      ":uid, :order, :all_bad, :unsafe, :rationale, :key, :is_gold, :now, :strength, :scale, :unsafe_ids) "
                      "RETURNING id",
    "insert_rating": "INSERT INTO ratings (ranking_id, project_id, item_id, labeler_id, candidate_id, score, acceptable, labels, "
                     "comment, created_at) VALUES (:rid, :pid, :iid, :uid, :cid, :score, :acceptable, :labels, :comment, :now)",
    "done": "UPDATE slots SET status = 'done' WHERE id = :sid",
    "settings": "SELECT mode, instructions, lease_seconds, gold_rate, feedback FROM projects WHERE id = :pid",
    "member_of": "SELECT project_id FROM members WHERE user_id = :uid ORDER BY project_id",
    "exists": "SELECT id FROM projects WHERE id = :pid",
    "item": "SELECT i.project_id, i.candidate_ids, i.is_gold, i.prompt_row_id, p.external_id, p.content "
            "FROM items i JOIN prompts p ON p.id = i.prompt_row_id WHERE i.id = :iid",
    "texts": "SELECT external_id, text FROM candidates WHERE prompt_row_id = :prow",
}


class Queue:
    """Task assignment and submission over one engine (one per app)."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.sqlite = engine.dialect.name == "sqlite"
        pg = engine.dialect.name == "postgresql"
        self.integrity_error = engine.dialect.dbapi.IntegrityError
        self.sql = {k: v.replace("{lock}", " FOR UPDATE OF s SKIP LOCKED" if pg else "") for k, v in SQL.items()}
        if not self.sqlite:  # psycopg's parameter style
            self.sql = {k: re.sub(r"(?<!:):(\w+)", r"%(\1)s", v) for k, v in self.sql.items()}
        if pg:
            from psycopg.types.json import Json

            self._json = Json
        else:
            self._json = lambda v: json.dumps(v, ensure_ascii=False)
        self._write_lock = getattr(engine, "info_write_lock", None)
        self._items: dict[int, ItemView] = {}
        self._settings: dict[int, tuple[float, Settings]] = {}
        self._members: dict[int, tuple[float, list[int]]] = {}
        self._last_reap = 0.0
        self.reap_every = REAP_EVERY
        self._lock = threading.Lock()

    # ------------------------------------------------------------ plumbing
    def ts(self, dt: datetime) -> Any:
        """A UTC time as stored: SQLAlchemy's SQLite text format, or a timestamptz."""
        # == strftime("%Y-%m-%d %H:%M:%S.%f") of the UTC time, several times faster
        return dt.replace(tzinfo=None).isoformat(" ", "microseconds") if self.sqlite else dt

    def read_ts(self, v: Any) -> datetime | None:
        if isinstance(v, str):
            v = datetime.fromisoformat(v)
        if v is not None and v.tzinfo is None:
            v = v.replace(tzinfo=timezone.utc)
        return v

    def read_json(self, v: Any) -> Any:
        return json.loads(v) if self.sqlite else v

    @contextmanager
    def writing(self) -> Iterator[Any]:
        """A cursor in one write transaction; on SQLite under the process's write lock, begun with
        ``BEGIN IMMEDIATE`` (the pool's SQLite connections are in autocommit mode, see ``db``)."""
        with self._write_lock if self._write_lock is not None else nullcontext():
            raw = self.engine.raw_connection()
            try:
                cur = raw.cursor()
                if self.sqlite:
                    cur.execute("BEGIN IMMEDIATE")
                try:
                    yield cur
                    raw.commit() if not self.sqlite else cur.execute("COMMIT")
                except BaseException:
                    raw.rollback() if not self.sqlite else cur.execute("ROLLBACK")
                    raise
            finally:
                raw.close()  # back to the pool

    @contextmanager
    def reading(self) -> Iterator[Any]:
        raw = self.engine.raw_connection()
        try:
            yield raw.cursor()
            raw.rollback()
        finally:
            raw.close()

    def q(self, cur: Any, name: str, **params: Any) -> Any:
        cur.execute(self.sql[name], params)
        return cur

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

    def settings(self, cur: Any, pid: int) -> Settings:
        hit = self._settings.get(pid)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        row = self.q(cur, "settings", pid=pid).fetchone()
        if row is None:
            raise NotFound(f"project {pid} not found")
        s = Settings(row[0], row[1], int(row[2]), float(row[3]), settings_of(self.read_json(row[4])))
        self._settings[pid] = (time.monotonic() + SETTINGS_TTL, s)
        return s

    def projects_of(self, cur: Any, uid: int, is_admin: bool, project_id: int | None) -> list[int]:
        hit = self._members.get(uid)
        if hit is not None and hit[0] > time.monotonic():
            mine = hit[1]
        else:
            mine = [r[0] for r in self.q(cur, "member_of", uid=uid).fetchall()]
            self._members[uid] = (time.monotonic() + SETTINGS_TTL, mine)
        if project_id is None:
            return mine
        if project_id in mine or (is_admin and self.q(cur, "exists", pid=project_id).fetchone()):
            return [project_id]
        raise NotFound(f"project {project_id} not found among your projects")

    def item(self, cur: Any, item_id: int) -> ItemView:
        v = self._items.get(item_id)
        if v is not None:
            return v
        project_id, cids, is_gold, prow, prompt_id, content = self.q(cur, "item", iid=item_id).fetchone()
        cids, content = self.read_json(cids), self.read_json(content)
        texts = dict(self.q(cur, "texts", prow=prow).fetchall())
        v = ItemView(item_id, project_id, prompt_id, content, tuple((c, texts[c]) for c in cids), bool(is_gold), frozenset(cids))
        with self._lock:
            if len(self._items) > 100_000:
                self._items.clear()
            self._items[item_id] = v
        return v

    def _task(self, cur: Any, item_id: int, slot_id: int, pid: int, until: datetime) -> TaskOut:
        view, st = self.item(cur, item_id), self.settings(cur, pid)
        cands = list(view.candidates)
        random.Random(slot_id).shuffle(cands)  # each labeler sees their own order: no shared position bias
        return TaskOut(task_id=slot_id, project_id=pid, mode=st.mode, instructions=st.instructions, prompt_id=view.prompt_id,
                       prompt=view.prompt, candidates=[CandidateView(id=c, text=t) for c, t in cands], lease_expires=until,
                       feedback=st.feedback)

    # ------------------------------------------------------------ assignment
    def _reap(self, cur: Any, now: datetime) -> None:
        if time.monotonic() - self._last_reap < self.reap_every:
            return
        self._last_reap = time.monotonic()
        self.q(cur, "reap_open", now=self.ts(now))
        self.q(cur, "reap_gold", now=self.ts(now))

    def _claim(self, cur: Any, pid: int, uid: int, now: datetime) -> tuple[int, int, datetime] | None:
        st = self.settings(cur, pid)
        until = now + timedelta(seconds=st.lease_seconds)
        if st.gold_rate > 0:
            total, gold = self.q(cur, "my_counts", uid=uid, pid=pid).fetchone()
            if gold < st.gold_rate * (total + 1):
                gid = self.q(cur, "gold_item", pid=pid, uid=uid).fetchone()
                if gid is not None:
                    sid = self.q(cur, "gold_slot", pid=pid, iid=gid[0], uid=uid, true=True, now=self.ts(now),
                                 until=self.ts(until)).fetchone()[0]
                    return sid, gid[0], until
        for _ in range(RETRIES):
            row = self.q(cur, "claim", pid=pid, uid=uid).fetchone()
            if row is None:
                return None
            if self.q(cur, "take", uid=uid, now=self.ts(now), until=self.ts(until), sid=row[0]).rowcount == 1:
                return row[0], row[1], until
        return None

    def next_task(self, uid: int, is_admin: bool, project_id: int | None = None) -> TaskOut | None:
        """The task the labeler holds (lease renewed), else a newly claimed one; None when none is left."""
        for attempt in range(RETRIES):
            try:
                with self.writing() as cur:
                    pids = self.projects_of(cur, uid, is_admin, project_id)
                    if not pids:
                        return None
                    now = now_utc()
                    for sid, iid, pid in self.q(cur, "mine", uid=uid).fetchall():
                        if pid not in pids:
                            continue
                        until = now + timedelta(seconds=self.settings(cur, pid).lease_seconds)
                        # (0 rows: another process reaped the expired lease meanwhile; claim afresh)
                        if self.q(cur, "renew", until=self.ts(until), sid=sid, uid=uid).rowcount == 1:
                            return self._task(cur, iid, sid, pid, until)
                    self._reap(cur, now)
                    for pid in pids:
                        got = self._claim(cur, pid, uid, now)
                        if got is not None:
                            return self._task(cur, got[1], got[0], pid, got[2])
                    return None
            except self.integrity_error:  # a concurrent claim by the same labeler: start over
                if attempt == RETRIES - 1:
                    raise
        return None

    def get_task(self, task_id: int, uid: int, is_admin: bool) -> TaskOut:
        with self.reading() as cur:
            s = self.q(cur, "slot", sid=task_id).fetchone()
            if s is None or (s[1] != uid and not is_admin):
                raise NotFound(f"task {task_id} not found among your tasks")
            return self._task(cur, s[0], task_id, s[2], self.read_ts(s[4]) or now_utc())

    # ------------------------------------------------------------ submission
    def submit(self, task_id: int, uid: int, body: SubmitIn) -> SubmitOut:
        try:
            order = normalise_order(body.order)
        except ValueError as e:
            raise Invalid(str(e)) from None
        conflict = False  # after a unique violation: find out which, in a fresh transaction
        for attempt in range(RETRIES):
            try:
                with self.writing() as cur:
                    s = self.q(cur, "slot", sid=task_id).fetchone()
                    if s is None or s[1] != uid:
                        raise NotFound(f"task {task_id} is not yours (unknown, or its lease expired and it "
                                                 "was given to someone else)")
                    item_id, _, pid, is_gold, _, done_id, done_key = s
                    if done_id is not None:  # already answered
                        if done_key == body.idempotency_key:
                            return SubmitOut(ranking_id=done_id, task_id=task_id, duplicate=True)
                        raise Conflict(f"task {task_id} was already submitted (with another idempotency key)")
                    if conflict:
                        other = self.q(cur, "key_used", pid=pid, uid=uid, key=body.idempotency_key).fetchone()
                        if other is not None:
                            raise Conflict(f"idempotency key already used for task {other[0]}")
                    shown = self.item(cur, item_id).ids
                    check_permutation(order, shown)
                    st = self.settings(cur, pid)
                    fb = check_submission(st.feedback, st.mode, order, shown, body)
                    now = self.ts(now_utc())
                    rid = self.q(cur, "insert_ranking", sid=task_id, pid=pid, iid=item_id, uid=uid, order=self._json(order),
                                 all_bad=body.all_bad, unsafe=fb.unsafe, rationale=body.rationale or None,
                                 key=body.idempotency_key, is_gold=bool(is_gold), now=now, strength=fb.strength,
                                 scale=fb.strength_scale,
                                 unsafe_ids=self._json(fb.unsafe_ids) if fb.unsafe_ids else None).fetchone()[0]
                    if fb.ratings:
                        cur.executemany(self.sql["insert_rating"], [
                            {"rid": rid, "pid": pid, "iid": item_id, "uid": uid, "cid": r.candidate_id, "score": r.score,
                             "acceptable": r.acceptable, "labels": self._json(r.labels), "comment": r.comment, "now": now}
                            for r in fb.ratings])
                    self.q(cur, "done", sid=task_id)
                    return SubmitOut(ranking_id=rid, task_id=task_id, duplicate=False)
            except self.integrity_error:
                conflict = True
                if attempt == RETRIES - 1:
                    raise
        raise AssertionError("unreachable")


def check_permutation(order: list[list[str]], shown: frozenset[str]) -> None:
    """``Invalid`` unless ``order`` names each shown candidate exactly once."""
    counts: dict[str, int] = {}
    for g in order:
        for c in g:
            counts[c] = counts.get(c, 0) + 1
    problems = []
    rep = sorted(c for c, n in counts.items() if n > 1)
    unknown = sorted(set(counts) - shown)
    missing = sorted(shown - set(counts))
    for what, ids in (("repeated", rep), ("not shown in this task", unknown), ("missing", missing)):
        if ids:  # at most a few ids, each cut short: never the whole payload back
            problems.append(f"{what}: [{listing([repr(c) for c in ids])}]")
    if problems:
        raise Invalid("the ranking must be a permutation of the shown candidate ids "
                      f"{sorted(shown)}; " + "; ".join(problems))
