"""The review queue (issue 15 item 4): items whose labelers disagree — pairwise agreement
(``stats.item_agreement``, the figure the project page shows) below the project's ``review_below``
— are shown to a reviewer with every ranking side by side; the reviewer records an adjudicated
ranking (with who, when and a note). The export then prefers it (``export.collect``), the raw
rankings stay as given.

Who may review: admins (every project) and reviewers (the projects they are members of).
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import select
from sqlalchemy.orm import Session

from rankloop.labeling import quality, stats
from rankloop.labeling.assign import check_permutation
from rankloop.labeling.db import writing
from rankloop.labeling.models import Adjudication, Item, Member, Project, User, as_utc
from rankloop.labeling.schemas import (AdjudicationIn, AdjudicationOut, CandidateView, ReviewItem, ReviewQueueEntry,
                                       ReviewRanking)
from rankloop.labeling.security import Principal
from rankloop.labeling.services.errors import Forbidden, Invalid, NotFound
from rankloop.records import normalise_order


def may_review(user: Principal) -> bool:
    return user.role in ("admin", "reviewer")


def reviewable_project(db: Session, project_id: int, user: Principal) -> Project:
    """The project, if ``user`` may review it (others' projects read as missing)."""
    if not may_review(user):
        raise Forbidden("reviewers and admins only")
    p = db.get(Project, project_id)
    if p is None or (not user.is_admin and db.get(Member, (project_id, user.user_id)) is None):
        raise NotFound(f"project {project_id} not found among the projects you review")
    return p


def review_projects(db: Session, user: Principal) -> list[Project]:
    if not may_review(user):
        raise Forbidden("reviewers and admins only")
    q = select(Project).order_by(Project.id)
    if not user.is_admin:
        q = q.join(Member, Member.project_id == Project.id).where(Member.user_id == user.user_id)
    return list(db.execute(q).scalars())


def latest_adjudications(db: Session, project_id: int) -> dict[int, AdjudicationOut]:
    """item id → the adjudication in force (the newest)."""
    out: dict[int, AdjudicationOut] = {}
    rows = db.execute(select(Adjudication, User.username).join(User, User.id == Adjudication.reviewer_id)
                      .where(Adjudication.project_id == project_id).order_by(Adjudication.id)).all()
    for a, name in rows:
        out[a.item_id] = AdjudicationOut(id=a.id, item_id=a.item_id, reviewer=name, order=a.order, note=a.note,
                                         created_at=as_utc(a.created_at))
    return out


def queue(db: Session, project: Project, include_done: bool = False) -> list[ReviewQueueEntry]:
    """Non-gold items with two or more rankings and agreement below ``project.review_below``,
    least agreement first; adjudicated ones only with ``include_done``."""
    adj = latest_adjudications(db, project.id)
    out = []
    for item_id, rs in stats.by_item(stats.raw_rankings(db, project.id)).items():
        if len(rs) < 2 or rs[0].is_gold:
            continue
        agr = stats.item_agreement(rs)
        if agr is None or agr >= project.review_below:
            continue
        if item_id in adj and not include_done:
            continue
        out.append(ReviewQueueEntry(item_id=item_id, prompt_id="", rankings=len(rs), agreement=agr,
                                    adjudicated=item_id in adj))
    if out:
        prompt_of = stats.prompt_ids(db, project.id)
        for e in out:
            e.prompt_id = prompt_of[e.item_id]
    return sorted(out, key=lambda e: (e.agreement, e.item_id))


def item_view(db: Session, project: Project, item_id: int) -> ReviewItem:
    item = db.get(Item, item_id)
    if item is None or item.project_id != project.id:
        raise NotFound(f"item {item_id} not found in project {project.id}")
    payload = stats.item_payloads(db, project.id, item_id)[item_id]
    rs = [r for r in stats.raw_rankings(db, project.id, item_id=item_id)]
    return ReviewItem(item_id=item_id, project_id=project.id, prompt_id=payload["prompt_id"], prompt=payload["prompt"],
                      candidates=[CandidateView(id=c, text=t) for c, t, _policy in payload["candidates"]],
                      rankings=[ReviewRanking(labeler=r.labeler, order=r.order, all_bad=r.all_bad, unsafe=r.unsafe,
                                              rationale=r.rationale, created_at=r.created_at) for r in rs],
                      consensus=quality.consensus([r.order for r in rs]) if rs else [],
                      agreement=stats.item_agreement(rs) if len(rs) >= 2 else None,
                      adjudication=latest_adjudications(db, project.id).get(item_id))


def adjudicate(db: Session, project: Project, item_id: int, reviewer: Principal, body: AdjudicationIn) -> AdjudicationOut:
    item = db.get(Item, item_id)
    if item is None or item.project_id != project.id:
        raise NotFound(f"item {item_id} not found in project {project.id}")
    try:
        order = normalise_order(body.order)
    except ValueError as e:
        raise Invalid(str(e)) from None
    check_permutation(order, frozenset(item.candidate_ids))
    note = (body.note or "").strip() or None
    row = Adjudication(project_id=project.id, item_id=item_id, reviewer_id=reviewer.user_id, order=order, note=note,
                       created_at=datetime.now(timezone.utc))
    with writing(db):
        db.add(row)
    return AdjudicationOut(id=row.id, item_id=item_id, reviewer=reviewer.username, order=order, note=note,
                           created_at=as_utc(row.created_at))


def order_from_places(places: dict[str, str], ids: list[str]) -> list[list[str]]:
    """The review form's answer (candidate id → place typed, 1 = best, equal places tie) as tie
    groups; ``Invalid`` naming what is missing or not a number."""
    got: dict[str, int] = {}
    bad = []
    for cid in ids:
        v = (places.get(cid) or "").strip()
        if not v.isdigit() or not 1 <= int(v) <= len(ids):
            bad.append(cid)
        else:
            got[cid] = int(v)
    if bad:
        raise Invalid(f"give every candidate a place from 1 (best) to {len(ids)}; missing or not a number: "
                      + ", ".join(bad[:5]))
    return [[c for c in ids if got[c] == p] for p in sorted(set(got.values()))]
