"""Qualification and pausing (issue 15 item 4): a labeler of a project that asks for it answers
``qualify_items`` gold items first and is qualified if their gold accuracy over them reaches
``qualify_accuracy`` (else ``failed``); a qualified labeler is ``paused`` when their accuracy over
their last ``pause_window`` gold answers falls below ``pause_below``. Failed and paused labelers
are served nothing new in the project until the lead un-pauses them (or restarts qualification).

Accuracy is the existing gold measure (``quality.gold_pairs``): the share of the gold rankings'
strict pairs put the right way round, pooled over the answers considered.

``evaluate`` is the rule, a pure function; ``judge`` applies it inside the submitting
transaction (``assign.Queue.submit``, on a gold answer only); the rest is for the lead's pages.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Sequence

from sqlalchemy import exists, func, select
from sqlalchemy.orm import Session, aliased

from rankloop.labeling import quality
from rankloop.labeling.db import writing
from rankloop.labeling.models import Item, LabelerState, Member, Project, RankingRow, User
from rankloop.labeling.schemas import LabelerStateOut
from rankloop.labeling.services.errors import NotFound

STATES = ("qualifying", "qualified", "failed", "paused")


def gated(qualify_items: int, pause_below: float | None) -> bool:
    """Whether the project looks at labeler states at all (else assignment skips the lookup)."""
    return qualify_items > 0 or pause_below is not None


def initial_state(qualify_items: int) -> str:
    return "qualifying" if qualify_items > 0 else "qualified"


def pooled(answers: Sequence[tuple[int, int]]) -> float | None:
    """Σ correct / Σ strict pairs over (correct, total) gold answers; None when no strict pair."""
    total = sum(t for _, t in answers)
    return sum(c for c, _ in answers) / total if total else None


def evaluate(state: str, answers: Sequence[tuple[int, int]], qualify_items: int, qualify_accuracy: float,
             pause_below: float | None, pause_window: int) -> tuple[str, float | None]:
    """The state after a gold answer. ``answers``: (correct, total) per gold answer that counts,
    oldest first. Returns (state, the accuracy it was decided on, or None if undecided)."""
    if state == "qualifying":
        if len(answers) < qualify_items:
            return state, None
        acc = pooled(answers[:qualify_items])
        # gold items whose orders are all ties teach nothing: they do not fail anyone
        return ("qualified" if acc is None or acc >= qualify_accuracy else "failed"), acc
    if state == "qualified" and pause_below is not None and len(answers) >= pause_window:
        acc = pooled(answers[-pause_window:])
        if acc is not None and acc < pause_below:
            return "paused", acc
        return state, acc
    return state, None


def state_of(db: Session, project: Project, user_id: int) -> tuple[str, int, float | None]:
    row = db.get(LabelerState, (project.id, user_id))
    if row is None:
        return initial_state(project.qualify_items), 0, None
    return row.state, row.since_ranking_id, row.accuracy


def gold_answers(db: Session, project_id: int, user_id: int, since: int = 0) -> list[tuple[int, int]]:
    """(correct, total) gold pairs of each current gold answer after ``since`` (a corrected answer
    counts once, as corrected: the row it superseded is left out, as in ``assign``'s ``my_gold``)."""
    later = aliased(RankingRow)
    rows = db.execute(select(RankingRow.order, Item.gold_order).join(Item, Item.id == RankingRow.item_id)
                      .where(RankingRow.project_id == project_id, RankingRow.labeler_id == user_id, RankingRow.is_gold,
                             RankingRow.id > since, ~exists().where(later.supersedes_id == RankingRow.id))
                      .order_by(RankingRow.id)).all()
    return [quality.gold_pairs(o, g) for o, g in rows if g]


def list_states(db: Session, project: Project) -> list[LabelerStateOut]:
    """Every member's state (and every labeler who has a state row without being a member now)."""
    rows = {r.user_id: r for r in db.execute(select(LabelerState).where(LabelerState.project_id == project.id)).scalars()}
    members = db.execute(select(User.id, User.username).join(Member, Member.user_id == User.id)
                         .where(Member.project_id == project.id).order_by(User.username)).all()
    out = []
    for uid, name in members:
        r = rows.get(uid)
        state = r.state if r else initial_state(project.qualify_items)
        since = r.since_ranking_id if r else 0
        out.append(LabelerStateOut(user_id=uid, username=name, state=state,
                                   gold_answered=len(gold_answers(db, project.id, uid, since)),
                                   accuracy=r.accuracy if r else None))
    return out


def set_state(db: Session, project: Project, user_id: int, state: str, by: int | None) -> LabelerStateOut:
    """The lead's decision: ``qualified`` (un-pause, or pass without more gold) or ``qualifying``
    (start over). Either way the gold answered so far stops counting, so an un-paused labeler is
    judged on what they do next, not paused again by the same window."""
    if db.get(Member, (project.id, user_id)) is None:
        raise NotFound(f"user {user_id} is not a member of project {project.id}")
    with writing(db):
        last = db.execute(select(func.coalesce(func.max(RankingRow.id), 0))
                          .where(RankingRow.project_id == project.id, RankingRow.labeler_id == user_id)).scalar_one()
        row = db.get(LabelerState, (project.id, user_id), with_for_update=True)
        if row is None:
            row = LabelerState(project_id=project.id, user_id=user_id)
            db.add(row)
        row.state, row.since_ranking_id, row.accuracy = state, int(last), None
        row.changed_at, row.changed_by = datetime.now(timezone.utc), by
    name = db.get(User, user_id).username
    return LabelerStateOut(user_id=user_id, username=name, state=state, gold_answered=0, accuracy=None)


def holds(db: Session, user_id: int, project_id: int | None = None) -> list[dict]:
    """Why a labeler with an empty queue is held in a project: paused, failed, or qualifying with
    no gold item left (for the "nothing left" page; not on the hot path)."""
    q = (select(Project).join(Member, Member.project_id == Project.id).where(Member.user_id == user_id)
         .order_by(Project.id))
    if project_id is not None:
        q = q.where(Project.id == project_id)
    out = []
    for p in db.execute(q).scalars():
        if not gated(p.qualify_items, p.pause_below):
            continue
        state, since, _ = state_of(db, p, user_id)
        if state in ("paused", "failed"):
            out.append({"project": p.name, "state": state})
        elif state == "qualifying":
            out.append({"project": p.name, "state": state, "answered": len(gold_answers(db, p.id, user_id, since)),
                        "needed": p.qualify_items})
    return out
