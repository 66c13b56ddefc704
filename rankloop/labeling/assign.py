"""Assignment: which task a labeler gets next, and storing what they submit.

Each non-gold item has ``overlap`` slots (rows in ``slots``, made at import). A labeler claims an
open slot, or a leased one whose lease expired, of an item they hold no slot of. Correctness rests
on constraints, not on luck:

- ``UNIQUE (item_id, slot_no)``: a slot is one row, so two labelers cannot hold the same one; the
  claim is one ``UPDATE … WHERE status = 'open' AND id = (the first candidate) RETURNING``. On
  PostgreSQL the candidate row is picked with ``FOR UPDATE SKIP LOCKED`` so concurrent claimers
  skip each other instead of queueing (a row another claimer took meanwhile fails the re-check
  and the next is picked); on SQLite writers are serialised
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
here): a claim is three to five statements (held tasks, the gate read of a gated project, the
claiming ``UPDATE … RETURNING``, the item when it is not memoised), a submission three (the slot,
the ranking, the slot marked done). On PostgreSQL each transaction runs in libpq's pipeline mode
and statements whose results can wait are sent together (``Queue.send``, ``Queue.commit_early``):
a claim or a submission is two round trips to the server, not one per statement. Project settings
and memberships are memoised for ``SETTINGS_TTL`` seconds and item texts for the life of the
process (items never change after import). The schema is still SQLAlchemy's and Alembic's
(``models``, ``migrations``).

Gold items get a slot per labeler when served, at the project's ``gold_rate``: a labeler is given
a gold item whenever fewer than ``gold_rate`` × (tasks so far + 1) of their tasks were gold.

Qualification (``services.qualification``): in a project with ``qualify_items`` or ``pause_below``
set, claiming reads the labeler's state (one primary-key lookup): ``qualifying`` labelers get gold
items only, ``failed`` and ``paused`` ones nothing new; a gold answer re-decides the state in the
submitting transaction. Projects without either setting pay nothing for it.
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

from rankloop.labeling import quality
from rankloop.labeling.feedback import check_submission, settings_of
from rankloop.labeling.schemas import (CandidateView, EditOut, FeedbackSettings, MyProgressOut, MyRankingOut, SavedDraft,
                                       SkipIn, SkipOut, SubmitIn, SubmitOut, TaskOut)
from rankloop.labeling.services import qualification
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
    name: str = ""
    edit_window_seconds: int = 600
    # --- lead tools: qualification and pausing (services/qualification.py)
    qualify_items: int = 0
    qualify_accuracy: float = 0.0
    pause_below: float | None = None
    pause_window: int = 10
    feedback: FeedbackSettings | None = None  # issue 15 item 1

    @property
    def gated(self) -> bool:
        return qualification.gated(self.qualify_items, self.pause_below)


SQL = {
    "mine": "SELECT id, item_id, project_id FROM slots WHERE labeler_id = :uid AND status = 'leased' ORDER BY id",
    "renew": "UPDATE slots SET lease_expires = :until WHERE id = :sid AND labeler_id = :uid AND status = 'leased' "
             "RETURNING id",
    "reap_open": "UPDATE slots SET status = 'open', labeler_id = NULL, leased_at = NULL, lease_expires = NULL "
                 "WHERE status = 'leased' AND lease_expires < :now AND slot_no IS NOT NULL",
    "reap_gold": "DELETE FROM slots WHERE status = 'leased' AND lease_expires < :now AND slot_no IS NULL",
    # the claim: the first open slot of an item the labeler holds no slot of and did not skip, taken
    # in the same statement (the subquery's row lock keeps it open until the update; SQLite: serialised).
    # {this_project:s} and ORDER BY s.project_id, s.id: on PostgreSQL the project is matched as a range so
    # that only ix_slots_claim gives the order (see Queue.__init__)
    "claim": "UPDATE slots SET labeler_id = :uid, status = 'leased', leased_at = :now, lease_expires = :until "
             "WHERE status = 'open' AND id = (SELECT s.id FROM slots s WHERE {this_project:s} AND s.status = 'open' "
             "AND NOT EXISTS (SELECT 1 FROM slots m WHERE m.item_id = s.item_id AND m.labeler_id = :uid) "
             "AND NOT EXISTS (SELECT 1 FROM skips k WHERE k.labeler_id = :uid AND k.item_id = s.item_id) "
             "ORDER BY s.project_id, s.id LIMIT 1{lock}) RETURNING id, item_id",
    # what a claim in a gated or gold-serving project decides on: the labeler's slots (all, gold) and
    # qualification state (NULL, NULL: no row yet), in one read
    "gate": "SELECT count(*), coalesce(sum(CASE WHEN is_gold THEN 1 ELSE 0 END), 0), "
            "(SELECT state FROM labeler_states WHERE project_id = :pid AND user_id = :uid), "
            "(SELECT since_ranking_id FROM labeler_states WHERE project_id = :pid AND user_id = :uid) "
            "FROM slots WHERE labeler_id = :uid AND project_id = :pid",
    # a gold item's slot, made for this labeler as it is served: their first unseen, unskipped one
    # ({this_project:i}: as in the claim)
    "gold_claim": "INSERT INTO slots (project_id, item_id, slot_no, labeler_id, status, is_gold, leased_at, lease_expires) "
                  "SELECT :pid, i.id, NULL, :uid, 'leased', :true, :now, :until FROM items i "
                  "WHERE {this_project:i} AND i.is_gold = :true AND NOT EXISTS "
                  "(SELECT 1 FROM slots m WHERE m.item_id = i.id AND m.labeler_id = :uid) AND NOT EXISTS "
                  "(SELECT 1 FROM skips k WHERE k.labeler_id = :uid AND k.item_id = i.id) ORDER BY i.project_id, i.id LIMIT 1 "
                  "RETURNING id, item_id",
    "slot": "SELECT s.item_id, s.labeler_id, s.project_id, s.is_gold, s.lease_expires, r.id, r.idempotency_key, "
            "s.leased_at, s.slot_no FROM slots s LEFT JOIN rankings r ON r.slot_id = s.id WHERE s.id = :sid",
    "key_used": "SELECT slot_id FROM rankings WHERE project_id = :pid AND labeler_id = :uid AND idempotency_key = :key",
    "insert_ranking": "INSERT INTO rankings (slot_id, project_id, item_id, labeler_id, ranking, all_bad, unsafe, rationale, "
                      "idempotency_key, is_gold, created_at, served_at, active_seconds, supersedes_id, strength, strength_scale, "
                      "unsafe_ids) VALUES (:sid, :pid, :iid, :uid, :order, :all_bad, :unsafe, :rationale, :key, :is_gold, :now, "
                      ":served, :active, :supersedes, :strength, :scale, :unsafe_ids) RETURNING id",
    "insert_rating": "INSERT INTO ratings (ranking_id, project_id, item_id, labeler_id, candidate_id, score, acceptable, labels, "
                     "comment, created_at) VALUES (:rid, :pid, :iid, :uid, :cid, :score, :acceptable, :labels, :comment, :now)",
    "done": "UPDATE slots SET status = 'done' WHERE id = :sid",
    "settings": "SELECT mode, instructions, lease_seconds, gold_rate, name, edit_window_seconds, qualify_items, "
                "qualify_accuracy, pause_below, pause_window, feedback FROM projects WHERE id = :pid",
    "member_of": "SELECT project_id FROM members WHERE user_id = :uid ORDER BY project_id",
    "exists": "SELECT id FROM projects WHERE id = :pid",
    "item": "SELECT i.project_id, i.candidate_ids, i.is_gold, p.external_id, p.content, c.external_id, c.text "
            "FROM items i JOIN prompts p ON p.id = i.prompt_row_id LEFT JOIN candidates c ON c.prompt_row_id = p.id "
            "WHERE i.id = :iid",
    # demonstration tasks: the autosaved text, only ever the asking labeler's
    "saved_draft": "SELECT text, edited_from, updated_at FROM demo_drafts WHERE slot_id = :sid AND labeler_id = :uid",
    "drop_draft": "DELETE FROM demo_drafts WHERE slot_id = :sid AND labeler_id = :uid",
    # --- skips (issue 15 item 3): an overlap slot reopens for others; a gold slot (per labeler) goes
    "skip_open": "UPDATE slots SET status = 'open', labeler_id = NULL, leased_at = NULL, lease_expires = NULL "
                 "WHERE id = :sid AND labeler_id = :uid AND status = 'leased' RETURNING id",
    "skip_gold": "DELETE FROM slots WHERE id = :sid AND labeler_id = :uid AND status = 'leased' RETURNING id",
    "insert_skip": "INSERT INTO skips (project_id, item_id, slot_id, labeler_id, reason, note, created_at) "
                   "VALUES (:pid, :iid, :sid, :uid, :reason, :note, :now) RETURNING id",
    "skipped": "SELECT id FROM skips WHERE slot_id = :sid AND labeler_id = :uid",
    # --- corrections (issue 15 item 3)
    "ranking": "SELECT r.id, r.project_id, r.item_id, r.labeler_id, r.is_gold, r.slot_id, r.supersedes_id, r.created_at, "
               "r.ranking, r.all_bad, r.unsafe, r.rationale, (SELECT x.id FROM rankings x WHERE x.supersedes_id = r.id) "
               "FROM rankings r WHERE r.id = :rid",
    "key_row": "SELECT id, supersedes_id FROM rankings WHERE project_id = :pid AND labeler_id = :uid AND idempotency_key = :key",
    "mine_recent": "SELECT r.id, r.project_id, r.item_id, r.ranking, r.created_at, r.supersedes_id FROM rankings r "
                   "WHERE r.labeler_id = :uid{project} AND NOT EXISTS (SELECT 1 FROM rankings x WHERE x.supersedes_id = r.id) "
                   "ORDER BY r.id DESC LIMIT :lim",
    # --- the task page's counter (issue 15 item 3)
    "count_done": "SELECT count(*), coalesce(sum(CASE WHEN created_at >= :today THEN 1 ELSE 0 END), 0) FROM rankings "
                  "WHERE labeler_id = :uid AND project_id = :pid AND supersedes_id IS NULL",
    "count_open": "SELECT count(DISTINCT s.item_id) FROM slots s WHERE s.project_id = :pid AND s.slot_no IS NOT NULL "
                  "AND s.status = 'open' "  # (an expired lease reopens at the next reaping, seconds away)
                  "AND NOT EXISTS (SELECT 1 FROM slots m WHERE m.item_id = s.item_id AND m.labeler_id = :uid) "
                  "AND NOT EXISTS (SELECT 1 FROM skips k WHERE k.labeler_id = :uid AND k.item_id = s.item_id)",
    "count_held": "SELECT count(*) FROM slots WHERE labeler_id = :uid AND project_id = :pid AND status = 'leased'",
    "count_skipped": "SELECT count(*) FROM skips WHERE labeler_id = :uid AND project_id = :pid",
    # --- lead tools: a labeler's qualification state (one primary-key read, only in gated projects)
    "my_state": "SELECT state, since_ranking_id FROM labeler_states WHERE project_id = :pid AND user_id = :uid",
    "my_gold": "SELECT r.ranking, i.gold_order FROM rankings r JOIN items i ON i.id = r.item_id "
               "WHERE r.project_id = :pid AND r.labeler_id = :uid AND r.is_gold AND r.id > :since "
               "AND NOT EXISTS (SELECT 1 FROM rankings x WHERE x.supersedes_id = r.id) ORDER BY r.id",  # current only
    "set_state": "UPDATE labeler_states SET state = :state, accuracy = :acc, changed_at = :now, changed_by = NULL "
                 "WHERE project_id = :pid AND user_id = :uid",
    "new_state": "INSERT INTO labeler_states (project_id, user_id, state, since_ranking_id, accuracy, changed_at) "
                 "VALUES (:pid, :uid, :state, 0, :acc, :now)",
}
DEMONSTRATION = "demonstration"


class _Rows:
    """Rows already read, behind a cursor's two read methods (``Queue.send`` on SQLite)."""

    def __init__(self, rows: list[Any]):
        self.rows = rows

    def fetchone(self) -> Any:
        return self.rows.pop(0) if self.rows else None

    def fetchall(self) -> list[Any]:
        rows, self.rows = self.rows, []
        return rows


class Queue:
    """Task assignment and submission over one engine (one per app)."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.sqlite = engine.dialect.name == "sqlite"
        pg = engine.dialect.name == "postgresql"
        self.integrity_error = engine.dialect.dbapi.IntegrityError
        self.sql = {k: v.replace("{lock}", " FOR UPDATE OF s SKIP LOCKED" if pg else "") for k, v in SQL.items()}
        # PostgreSQL: with `s.project_id = :pid` the ORDER BY reduces to `s.id`, which slots_pkey also gives, and the
        # planner costs "walk the primary key, filter, stop at the first match" as if the project's open slots were
        # spread evenly through the table: a near-tie with ix_slots_claim (0.60 vs 0.65) that flips between runs,
        # and when it goes to the primary key a claim walks every older project's slots (55,000 rows, 100-140 ms).
        # A range that holds one value is no equality, so the order stays (project_id, id), which only
        # ix_slots_claim (project_id, status, id) gives without a sort. SQLite needs the equality to use that index.
        # The gold claim likewise: items_pkey against ix_items_gold (project_id, is_gold, id).
        this_project = r"\1.project_id BETWEEN :pid AND :pid" if pg else r"\1.project_id = :pid"
        self.sql = {k: re.sub(r"\{this_project:(\w)\}", this_project, v) for k, v in self.sql.items()}
        self.sql["mine_recent_in"] = self.sql["mine_recent"].replace("{project}", " AND r.project_id = :pid")
        self.sql["mine_recent"] = self.sql["mine_recent"].replace("{project}", "")
        if not self.sqlite:  # psycopg's parameter style
            self.sql = {k: re.sub(r"(?<!:):(\w+)", r"%(\1)s", v) for k, v in self.sql.items()}
        if pg:
            from psycopg.types.json import Json

            self._json = Json
        else:
            self._json = lambda v: json.dumps(v, ensure_ascii=False)
        self._write_lock = getattr(engine, "info_write_lock", None)
        # PostgreSQL: each write transaction in libpq's pipeline mode, so statements whose results
        # are read later travel together (BEGIN with the first read, the writes with COMMIT)
        self.pipelined = pg
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
                try:
                    # (an error leaves the pipeline aborted: it is closed before the rollback)
                    with raw.driver_connection.pipeline() if self.pipelined else nullcontext():
                        if self.sqlite:
                            cur.execute("BEGIN IMMEDIATE")
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

    def send(self, cur: Any, name: str, **params: Any) -> Any:
        """Run statement ``name`` now, its result read later: in a pipelined transaction (its own
        cursor) it goes out with the next statement whose result is read, not on its own; on SQLite
        (nothing to save) its rows are read at once."""
        if not self.pipelined:
            return _Rows(self.q(cur, name, **params).fetchall())
        return self.q(cur.connection.cursor(), name, **params)

    def commit_early(self, cur: Any) -> None:
        """Commit now (PostgreSQL): the statements sent and not yet read travel with the COMMIT; their
        results stay readable. ``writing`` then commits nothing, or what was read after this."""
        if self.pipelined:
            cur.connection.commit()

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
        s = Settings(row[0], row[1], int(row[2]), float(row[3]), row[4], int(row[5]), int(row[6]), float(row[7]),
                     None if row[8] is None else float(row[8]), int(row[9]), settings_of(self.read_json(row[10])))
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

    def item_send(self, cur: Any, item_id: int) -> Any:
        """The item's read, sent now and read by ``item`` (None: it is memoised, nothing to read)."""
        return None if item_id in self._items else self.send(cur, "item", iid=item_id)

    def item(self, cur: Any, item_id: int, sent: Any = None) -> ItemView:
        v = self._items.get(item_id)
        if v is not None:
            return v
        rows = (sent or self.q(cur, "item", iid=item_id)).fetchall()  # one row per candidate of the prompt (or one)
        project_id, cids, is_gold, prompt_id, content = rows[0][:5]
        cids, content = self.read_json(cids), self.read_json(content)
        texts = {r[5]: r[6] for r in rows}
        v = ItemView(item_id, project_id, prompt_id, content, tuple((c, texts[c]) for c in cids), bool(is_gold), frozenset(cids))
        with self._lock:
            if len(self._items) > 100_000:
                self._items.clear()
            self._items[item_id] = v
        return v

    def _task(self, cur: Any, item_id: int, slot_id: int, pid: int, until: datetime, uid: int | None = None,
              sent: Any = None) -> TaskOut:
        view, st = self.item(cur, item_id, sent), self.settings(cur, pid)
        cands = list(view.candidates)
        if st.mode == DEMONSTRATION:
            return self._demo_task(cur, view, st, slot_id, pid, until, uid)
        random.Random(slot_id).shuffle(cands)  # each labeler sees their own order: no shared position bias
        return TaskOut(task_id=slot_id, project_id=pid, project_name=st.name, mode=st.mode, kind=st.mode, instructions=st.instructions,
                       prompt_id=view.prompt_id, prompt=view.prompt, candidates=[CandidateView(id=c, text=t) for c, t in cands],
                       lease_expires=until, feedback=st.feedback)

    def _demo_task(self, cur: Any, view: ItemView, st: Settings, slot_id: int, pid: int, until: datetime,
                   uid: int | None) -> TaskOut:
        """A demonstration task: the drafts in import order (nothing is ranked, so no position
        bias to break) and the asking labeler's autosaved text, if any (``uid`` None: nobody's)."""
        drafts = [CandidateView(id=c, text=t) for c, t in view.candidates]
        saved = None
        if uid is not None:
            row = self.q(cur, "saved_draft", sid=slot_id, uid=uid).fetchone()
            if row is not None:
                saved = SavedDraft(text=row[0], edited_from=row[1], updated_at=self.read_ts(row[2]))
        return TaskOut(task_id=slot_id, project_id=pid, project_name=st.name, mode=st.mode, kind=st.mode, instructions=st.instructions,
                       prompt_id=view.prompt_id, prompt=view.prompt, candidates=drafts, lease_expires=until,
                       draft=drafts[0] if drafts else None, saved=saved)

    # ------------------------------------------------------------ assignment
    def _reap(self, cur: Any, now: datetime) -> None:
        if time.monotonic() - self._last_reap < self.reap_every:
            return
        self._last_reap = time.monotonic()
        self.q(cur, "reap_open", now=self.ts(now))
        self.q(cur, "reap_gold", now=self.ts(now))

    def _gate_send(self, cur: Any, pid: int, uid: int) -> Any:
        """The claim's read in a gated or gold-serving project, sent now (None: the project needs none)."""
        st = self.settings(cur, pid)
        return self.send(cur, "gate", pid=pid, uid=uid) if st.gated or st.gold_rate > 0 else None

    def _claim(self, cur: Any, pid: int, uid: int, now: datetime, gate: Any = None) -> tuple[int, int, datetime] | None:
        st = self.settings(cur, pid)
        until = now + timedelta(seconds=st.lease_seconds)
        times = {"pid": pid, "uid": uid, "now": self.ts(now), "until": self.ts(until)}
        if st.gated or st.gold_rate > 0:
            total, gold, state, _ = (gate or self._gate_send(cur, pid, uid)).fetchone()
            qualifying = False
            if st.gated:  # failed or paused: nothing new here; qualifying: gold only, gold first
                state = state or qualification.initial_state(st.qualify_items)
                if state in ("failed", "paused"):
                    return None
                qualifying = state == "qualifying"
            if qualifying or gold < st.gold_rate * (total + 1):
                row = self.q(cur, "gold_claim", true=True, **times).fetchone()
                if row is not None:
                    return row[0], row[1], until
            if qualifying:  # no gold item left for them: they wait (the lead sees "qualifying")
                return None
        row = self.q(cur, "claim", **times).fetchone()
        return (row[0], row[1], until) if row is not None else None

    def next_task(self, uid: int, is_admin: bool, project_id: int | None = None) -> TaskOut | None:
        """The task the labeler holds (lease renewed), else a newly claimed one; None when none is left."""
        for attempt in range(RETRIES):
            try:
                with self.writing() as cur:
                    pids = self.projects_of(cur, uid, is_admin, project_id)
                    if not pids:
                        return None
                    now = now_utc()
                    mine = self.send(cur, "mine", uid=uid)
                    # one project asked for: its claim's read goes out with ``mine`` (one round trip)
                    gate = self._gate_send(cur, pids[0], uid) if len(pids) == 1 else None
                    for sid, iid, pid in mine.fetchall():
                        if pid not in pids:
                            continue
                        until = now + timedelta(seconds=self.settings(cur, pid).lease_seconds)
                        # (no row: another process reaped the expired lease meanwhile; claim afresh)
                        if self.q(cur, "renew", until=self.ts(until), sid=sid, uid=uid).fetchone() is not None:
                            return self._task(cur, iid, sid, pid, until, uid)
                    self._reap(cur, now)
                    for pid in pids:
                        got = self._claim(cur, pid, uid, now, gate)  # (gate: None unless one project)
                        if got is not None:
                            sent = self.item_send(cur, got[1])
                            self.commit_early(cur)  # the claim is kept; the item's read comes with the COMMIT
                            return self._task(cur, got[1], got[0], pid, got[2], uid, sent)
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
            # an admin looking at someone else's task does not see their unsent text
            return self._task(cur, s[0], task_id, s[2], self.read_ts(s[4]) or now_utc(), uid if s[1] == uid else None)

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
                    item_id, _, pid, is_gold, _, done_id, done_key, leased_at, _ = s
                    if done_id is not None:  # already answered
                        if done_key == body.idempotency_key:
                            return SubmitOut(ranking_id=done_id, task_id=task_id, duplicate=True)
                        raise Conflict(f"task {task_id} was already submitted (with another idempotency key)")
                    if self.settings(cur, pid).mode == DEMONSTRATION:
                        raise Invalid(f"task {task_id} is a demonstration task: send the response you wrote to "
                                      f"/api/tasks/{task_id}/demonstration, not a ranking")
                    if conflict:
                        other = self.q(cur, "key_used", pid=pid, uid=uid, key=body.idempotency_key).fetchone()
                        if other is not None:
                            raise Conflict(f"idempotency key already used for task {other[0]}")
                    shown = self.item(cur, item_id).ids
                    check_permutation(order, shown)
                    st = self.settings(cur, pid)
                    fb = check_submission(st.feedback, st.mode, order, shown, body)
                    now = self.ts(now_utc())
                    ins = self.send(cur, "insert_ranking", sid=task_id, pid=pid, iid=item_id, uid=uid, order=self._json(order),
                                    all_bad=body.all_bad, unsafe=fb.unsafe, rationale=body.rationale or None,
                                    key=body.idempotency_key, is_gold=bool(is_gold), now=now, served=leased_at,
                                    active=body.active_seconds, supersedes=None, strength=fb.strength,
                                    scale=fb.strength_scale, unsafe_ids=self._json(fb.unsafe_ids) if fb.unsafe_ids else None)
                    if fb.ratings:  # they need the ranking's id
                        rid = ins.fetchone()[0]
                        ins = None
                        self._ratings(cur, fb, rid, pid, item_id, uid, now)
                    self.q(cur, "done", sid=task_id)
                    if is_gold:
                        self._judge(cur, pid, uid)
                    self.commit_early(cur)  # the insert (if not read yet) and the slot's update go with the COMMIT
                    if ins is not None:
                        rid = ins.fetchone()[0]
                    return SubmitOut(ranking_id=rid, task_id=task_id, duplicate=False)
            except self.integrity_error:
                conflict = True
                if attempt == RETRIES - 1:
                    raise
        raise AssertionError("unreachable")

    def _ratings(self, cur: Any, fb: Any, rid: int, pid: int, item_id: int, uid: int, now: Any) -> None:
        """The per-candidate ratings that came with ranking ``rid`` (feedback, issue 15 item 1)."""
        if fb.ratings:
            cur.executemany(self.sql["insert_rating"], [
                {"rid": rid, "pid": pid, "iid": item_id, "uid": uid, "cid": r.candidate_id, "score": r.score,
                 "acceptable": r.acceptable, "labels": self._json(r.labels), "comment": r.comment, "now": now}
                for r in fb.ratings])

    # ------------------------------------------------------------ skip (issue 15 item 3)
    def skip(self, task_id: int, uid: int, body: SkipIn) -> SkipOut:
        """Give a held task back: an overlap slot reopens for other labelers, a gold slot is dropped,
        and the item is never offered to this labeler again (the claim skips items they skipped).
        Skipping the same task again (a retry) is recognised and stored once."""
        for attempt in range(RETRIES):
            try:
                with self.writing() as cur:
                    s = self.q(cur, "slot", sid=task_id).fetchone()
                    if s is None or s[1] != uid:
                        prev = self.q(cur, "skipped", sid=task_id, uid=uid).fetchone()
                        if prev is not None:
                            return SkipOut(skip_id=prev[0], task_id=task_id, duplicate=True)
                        raise NotFound(f"task {task_id} is not yours (unknown, or its lease expired and it "
                                       "was given to someone else)")
                    item_id, _, pid, _, _, done_id, _, _, slot_no = s
                    if done_id is not None:
                        raise Conflict(f"task {task_id} was already submitted; it cannot be skipped")
                    gone = self.q(cur, "skip_gold" if slot_no is None else "skip_open", sid=task_id, uid=uid).fetchone()
                    if gone is None:  # reaped meanwhile (expired lease): it is no longer ours to give back
                        raise NotFound(f"task {task_id} is no longer leased to you")
                    self.q(cur, "drop_draft", sid=task_id, uid=uid)  # a demonstration's autosave goes with the task
                    sid = self.q(cur, "insert_skip", pid=pid, iid=item_id, sid=task_id, uid=uid, reason=body.reason,
                                 note=body.note or None, now=self.ts(now_utc())).fetchone()[0]
                    return SkipOut(skip_id=sid, task_id=task_id, duplicate=False)
            except self.integrity_error:
                if attempt == RETRIES - 1:
                    raise
        raise AssertionError("unreachable")

    # ------------------------------------------------------------ corrections (issue 15 item 3)
    def _root_time(self, cur: Any, row: Any) -> datetime:
        """When the chain ``row`` belongs to was first submitted (the edit window counts from it)."""
        while row[6] is not None:
            row = self.q(cur, "ranking", rid=row[6]).fetchone()
        return self.read_ts(row[7])

    def _own_current(self, cur: Any, ranking_id: int, uid: int) -> tuple[Any, datetime, Settings]:
        row = self.q(cur, "ranking", rid=ranking_id).fetchone()
        if row is None or row[3] != uid:
            raise NotFound(f"ranking {ranking_id} not found among your rankings")
        if row[12] is not None:
            raise Conflict(f"ranking {ranking_id} was already corrected (by ranking {row[12]}); edit the current one")
        st = self.settings(cur, row[1])
        return row, self._root_time(cur, row) + timedelta(seconds=st.edit_window_seconds), st

    def editable(self, ranking_id: int, uid: int) -> tuple[TaskOut, list[list[str]], Any, datetime]:
        """For the edit page: the item as a task (in its slot's shuffled order), the current order,
        the row (flags, rationale) and the end of the edit window."""
        with self.reading() as cur:
            row, until, _ = self._own_current(cur, ranking_id, uid)
            chain = row
            while chain[5] is None:  # a correction: its slot is its chain's first row's
                chain = self.q(cur, "ranking", rid=chain[6]).fetchone()
            task = self._task(cur, row[2], chain[5], row[1], until)
            return task, self.read_json(row[8]), row, until

    def edit(self, ranking_id: int, uid: int, body: SubmitIn) -> EditOut:
        """Correct a current ranking within the project's window: a new row supersedes it (rows are
        never changed; UNIQUE (supersedes_id) lets only one correction of a row win a race)."""
        try:
            order = normalise_order(body.order)
        except ValueError as e:
            raise Invalid(str(e)) from None
        for attempt in range(RETRIES):
            try:
                with self.writing() as cur:
                    head = self.q(cur, "ranking", rid=ranking_id).fetchone()
                    if head is not None and head[3] == uid:
                        prev = self.q(cur, "key_row", pid=head[1], uid=uid, key=body.idempotency_key).fetchone()
                        if prev is not None:
                            if prev[1] == ranking_id:
                                return EditOut(ranking_id=prev[0], supersedes_id=ranking_id, duplicate=True)
                            raise Conflict(f"idempotency key already used for ranking {prev[0]}")
                    row, until, st = self._own_current(cur, ranking_id, uid)
                    now = now_utc()
                    if now > until:
                        raise Conflict(f"the edit window of ranking {ranking_id} closed at {until.isoformat(timespec='seconds')}")
                    shown = self.item(cur, row[2]).ids
                    check_permutation(order, shown)
                    fb = check_submission(st.feedback, st.mode, order, shown, body)  # a correction is checked as given
                    rid = self.q(cur, "insert_ranking", sid=None, pid=row[1], iid=row[2], uid=uid, order=self._json(order),
                                 all_bad=body.all_bad, unsafe=fb.unsafe, rationale=body.rationale or None,
                                 key=body.idempotency_key, is_gold=bool(row[4]), now=self.ts(now), served=None,
                                 active=body.active_seconds, supersedes=ranking_id, strength=fb.strength,
                                 scale=fb.strength_scale,
                                 unsafe_ids=self._json(fb.unsafe_ids) if fb.unsafe_ids else None).fetchone()[0]
                    self._ratings(cur, fb, rid, row[1], row[2], uid, self.ts(now))
                    if row[4]:  # a corrected gold answer: qualification counts the current one only
                        self._judge(cur, row[1], uid)
                    return EditOut(ranking_id=rid, supersedes_id=ranking_id, duplicate=False)
            except self.integrity_error:
                if attempt == RETRIES - 1:
                    raise
        raise AssertionError("unreachable")

    def my_rankings(self, uid: int, project_id: int | None, limit: int) -> list[MyRankingOut]:
        """A labeler's current rankings, newest first (corrections in place of what they replaced)."""
        with self.reading() as cur:
            if project_id is None:
                rows = self.q(cur, "mine_recent", uid=uid, lim=limit).fetchall()
            else:
                rows = self.q(cur, "mine_recent_in", uid=uid, pid=project_id, lim=limit).fetchall()
            now, out = now_utc(), []
            for rid, pid, iid, order, created, sup in rows:
                st = self.settings(cur, pid)
                start = self.read_ts(created) if sup is None else self._root_time(cur, self.q(cur, "ranking", rid=rid).fetchone())
                until = start + timedelta(seconds=st.edit_window_seconds)
                out.append(MyRankingOut(ranking_id=rid, project_id=pid, project_name=st.name, item_id=iid,
                                        prompt_id=self.item(cur, iid).prompt_id, order=self.read_json(order),
                                        created_at=self.read_ts(created), supersedes_id=sup, editable_until=until,
                                        editable=now <= until and st.edit_window_seconds > 0))
            return out

    # ------------------------------------------------------------ the task page's counter (issue 15 item 3)
    def my_progress(self, uid: int, is_admin: bool, project_id: int) -> MyProgressOut:
        now = now_utc()
        today = now.replace(hour=0, minute=0, second=0, microsecond=0)
        with self.reading() as cur:
            self.projects_of(cur, uid, is_admin, project_id)  # NotFound unless it is theirs
            done, done_today = self.q(cur, "count_done", uid=uid, pid=project_id, today=self.ts(today)).fetchone()
            remaining = self.q(cur, "count_open", uid=uid, pid=project_id).fetchone()[0]
            held = self.q(cur, "count_held", uid=uid, pid=project_id).fetchone()[0]
            skipped = self.q(cur, "count_skipped", uid=uid, pid=project_id).fetchone()[0]
            return MyProgressOut(project_id=project_id, project_name=self.settings(cur, project_id).name, done_today=int(done_today),
                                 done=int(done), remaining=int(remaining) + int(held), skipped=int(skipped))

    # ------------------------------------------------------------ lead tools: qualification
    def _judge(self, cur: Any, pid: int, uid: int) -> None:
        """After a gold answer, in its transaction: the labeler's qualification state, re-decided
        (``qualification.evaluate``) from the gold answers that count. Only in gated projects."""
        st = self.settings(cur, pid)
        if not st.gated:
            return
        row = self.q(cur, "my_state", pid=pid, uid=uid).fetchone()
        state, since = (row[0], int(row[1])) if row is not None else (qualification.initial_state(st.qualify_items), 0)
        if state not in ("qualifying", "qualified"):
            return
        answers = [quality.gold_pairs(self.read_json(o), self.read_json(g))
                   for o, g in self.q(cur, "my_gold", pid=pid, uid=uid, since=since).fetchall() if g is not None]
        new, acc = qualification.evaluate(state, answers, st.qualify_items, st.qualify_accuracy, st.pause_below,
                                          st.pause_window)
        if new == state and (row is not None or acc is None):
            return
        now = self.ts(now_utc())
        if row is None:
            self.q(cur, "new_state", pid=pid, uid=uid, state=new, acc=acc, now=now)
        else:
            self.q(cur, "set_state", pid=pid, uid=uid, state=new, acc=acc, now=now)


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
