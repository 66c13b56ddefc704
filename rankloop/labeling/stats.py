"""Progress, agreement, labeler quality and consensus of a project, read from the database."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from rankloop.labeling import quality
from rankloop.labeling.models import Item, PromptRow, RankingRow, Skip, Slot, User, as_utc
from rankloop.labeling.schemas import AgreementOut, ConsensusOut, LabelerStats, ProgressOut


@dataclass
class Raw:
    id: int
    slot_id: int  # a correction's: its chain's first row's
    item_id: int
    labeler: str
    order: list[list[str]]
    all_bad: bool
    unsafe: bool
    rationale: str | None
    created_at: datetime
    is_gold: bool
    # a labeler's day (issue 15 item 3)
    supersedes_id: int | None = None
    current: bool = True  # no correction supersedes it
    time_on_task: float | None = None  # seconds from serving to this submission (server clock)
    active_seconds: float | None = None  # the page's own count (client clock), when it sent one
    # feedback (issue 15 item 1); an imported judgement's strength too (item 2), maybe without scale
    strength: int | None = None
    strength_scale: int | None = None
    unsafe_ids: list[str] | None = None
    # imported judgements (issue 15 item 2)
    source: str | None = None  # file:line of an imported judgement
    margin: float | None = None  # an imported TRL row's margin


def raw_rankings(db: Session, project_id: int, history: bool = False, item_id: int | None = None) -> list[Raw]:
    """The project's rankings, oldest first: the current ones (what agreement, consensus, review,
    the dashboard and export use), or with ``history`` every row, superseded corrections included
    (``current`` says which). ``item_id``: one item's only (the review page)."""
    q = (select(RankingRow.id, RankingRow.slot_id, RankingRow.item_id, User.username, RankingRow.order, RankingRow.all_bad,
                RankingRow.unsafe, RankingRow.rationale, RankingRow.created_at, RankingRow.is_gold, RankingRow.supersedes_id,
                RankingRow.served_at, RankingRow.active_seconds, RankingRow.strength, RankingRow.import_meta,
                RankingRow.strength_scale, RankingRow.unsafe_ids)
         .join(User, User.id == RankingRow.labeler_id)
         .where(RankingRow.project_id == project_id).order_by(RankingRow.id))
    if item_id is not None:  # a correction chain stays within its item, so filtering keeps it whole
        q = q.where(RankingRow.item_id == item_id)
    rows = db.execute(q).all()
    superseded = {r[10] for r in rows if r[10] is not None}
    slot_of: dict[int, int] = {}
    out = []
    for r in rows:  # ids ascend, so a correction's predecessor is already seen
        slot_of[r[0]] = r[1] if r[1] is not None else slot_of.get(r[10], 0)
        created, served = as_utc(r[8]), as_utc(r[11])
        took = (created - served).total_seconds() if served is not None and created is not None else None
        meta = r[14] or {}
        raw = Raw(r[0], slot_of[r[0]], r[2], r[3], r[4], bool(r[5]), bool(r[6]), r[7], created, bool(r[9]),
                  supersedes_id=r[10], current=r[0] not in superseded, time_on_task=took, active_seconds=r[12],
                  strength=r[13], source=meta.get("source"), margin=meta.get("margin"), strength_scale=r[15],
                  unsafe_ids=r[16])
        if history or raw.current:
            out.append(raw)
    return out


def gold_orders(db: Session, project_id: int) -> dict[int, list[list[str]]]:
    return dict(db.execute(select(Item.id, Item.gold_order).where(Item.project_id == project_id, Item.is_gold)).all())


def gold_accuracy(raws: list[Raw], gold: dict[int, list[list[str]]]) -> dict[str, tuple[int, float | None]]:
    """Labeler → (gold items answered, share of the gold rankings' strict pairs they got right)."""
    acc: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for r in raws:
        if r.item_id in gold:
            c, t = quality.gold_pairs(r.order, gold[r.item_id])
            a = acc[r.labeler]
            a[0] += 1
            a[1] += c
            a[2] += t
    return {k: (v[0], v[1] / v[2] if v[2] else None) for k, v in acc.items()}


def by_item(raws: list[Raw]) -> dict[int, list[Raw]]:
    out: dict[int, list[Raw]] = defaultdict(list)
    for r in raws:
        out[r.item_id].append(r)
    return out


def firsts(rs: list[Raw]) -> list[Raw]:
    """Each labeler's first judgement of the item (earliest time, then lowest id). Agreement, α and
    consensus are between labelers, so a labeler's repeats of an item (imported data may hold them)
    count once there, and in ``self_agreement``; collected rankings have one per labeler anyway."""
    first: dict[str, Raw] = {}
    for r in sorted(rs, key=lambda r: (r.created_at, r.id)):
        first.setdefault(r.labeler, r)
    return sorted(first.values(), key=lambda r: r.id)


def repeat_groups(raws: list[Raw]) -> dict[str, list[list[list[list[str]]]]]:
    """Labeler → for each item they judged more than once, their orders of it."""
    per: dict[tuple[str, int], list[Raw]] = defaultdict(list)
    for r in raws:
        per[(r.labeler, r.item_id)].append(r)
    out: dict[str, list[list[list[list[str]]]]] = defaultdict(list)
    for (who, _item), rs in sorted(per.items()):
        if len(rs) >= 2:
            out[who].append([r.order for r in rs])
    return out


def item_agreement(rs: list[Raw]) -> float | None:
    a, t = quality.pair_agreement_counts([r.order for r in firsts(rs)])
    return a / t if t else None


def progress(db: Session, project_id: int) -> ProgressOut:
    items, gold_items = db.execute(
        select(func.count(), func.coalesce(func.sum(case((Item.is_gold, 1), else_=0)), 0)).where(Item.project_id == project_id)
    ).one()
    per_status = dict(db.execute(select(Slot.status, func.count()).where(Slot.project_id == project_id, Slot.slot_no.is_not(None))
                                 .group_by(Slot.status)).all())
    slots = sum(per_status.values())
    open_per_item = (select(Slot.item_id).where(Slot.project_id == project_id, Slot.slot_no.is_not(None), Slot.status != "done")
                     .distinct().subquery())
    incomplete = db.execute(select(func.count()).select_from(open_per_item)).scalar_one()
    rankings, corrections = db.execute(
        select(func.count(), func.count(RankingRow.supersedes_id)).where(RankingRow.project_id == project_id)).one()
    rankings -= corrections  # one current ranking per answered slot
    per_user: dict[str, dict[str, int]] = defaultdict(lambda: {"done": 0, "leased": 0, "gold_done": 0})
    for name, status, is_gold, n in db.execute(
        select(User.username, Slot.status, Slot.is_gold, func.count()).join(User, User.id == Slot.labeler_id)
        .where(Slot.project_id == project_id).group_by(User.username, Slot.status, Slot.is_gold)
    ):
        d = per_user[name]
        if status == "done":
            d["done"] += n
            if is_gold:
                d["gold_done"] += n
        elif status == "leased":
            d["leased"] += n
    skipped: dict[str, int] = defaultdict(int)
    reasons: dict[str, int] = defaultdict(int)
    for name, reason, n in db.execute(select(User.username, Skip.reason, func.count()).join(User, User.id == Skip.labeler_id)
                                      .where(Skip.project_id == project_id).group_by(User.username, Skip.reason)):
        skipped[name] += n
        reasons[reason] += n
        per_user[name]  # a labeler who only skipped is listed too
    acc = gold_accuracy(raw_rankings(db, project_id), gold_orders(db, project_id)) if gold_items else {}
    imported, external, repeats = imported_by_labeler(db, project_id)
    for u in imported:
        per_user[u]  # an imported rater holds no slot: listed from their rankings
    labelers = [LabelerStats(username=u, done=d["done"], leased=d["leased"], gold_done=d["gold_done"],
                             gold_accuracy=acc.get(u, (0, None))[1], skipped=skipped.get(u, 0), external=u in external,
                             imported=imported.get(u, 0), repeat_items=len(repeats.get(u, [])),
                             self_agreement=quality.self_agreement(repeats[u]) if u in repeats else None)
                for u, d in sorted(per_user.items())]
    return ProgressOut(project_id=project_id, items=items, gold_items=gold_items, slots=slots,
                       slots_done=per_status.get("done", 0), slots_leased=per_status.get("leased", 0),
                       items_complete=(items - gold_items) - incomplete, rankings=rankings, labelers=labelers,
                       skips=sum(reasons.values()), skip_reasons=dict(sorted(reasons.items())), corrections=corrections)


def agreement(db: Session, project_id: int) -> AgreementOut:
    raws = raw_rankings(db, project_id)
    per_item = [firsts(rs) for rs in by_item(raws).values()]
    groups = [[r.order for r in rs] for rs in per_item if len(rs) >= 2]
    reps = [g for gs in repeat_groups(raws).values() for g in gs]
    return AgreementOut(items_multi=len(groups), pairwise_agreement=quality.pairwise_agreement(groups),
                        krippendorff_alpha=quality.ranking_alpha(groups, "ordinal"), repeat_items=len(reps),
                        self_agreement=quality.self_agreement(reps))


def imported_by_labeler(db: Session, project_id: int) -> tuple[dict[str, int], set[str], dict[str, list]]:
    """(imported judgements per labeler, the external raters among them, each labeler's repeats
    as ``repeat_groups`` gives them), read only where there are any."""
    imported = dict(db.execute(select(User.username, func.count()).join(RankingRow, RankingRow.labeler_id == User.id)
                               .join(Slot, Slot.id == RankingRow.slot_id)
                               .where(RankingRow.project_id == project_id, Slot.status == "imported")
                               .group_by(User.username)).all())
    external = set(db.execute(select(User.username).where(User.username.in_(list(imported)), User.external.is_(True))).scalars()) \
        if imported else set()
    twice = (select(RankingRow.labeler_id, RankingRow.item_id).where(RankingRow.project_id == project_id)
             .group_by(RankingRow.labeler_id, RankingRow.item_id).having(func.count() > 1).limit(1))
    repeats = repeat_groups(raw_rankings(db, project_id)) if db.execute(twice).first() else {}
    return imported, external, repeats


def consensus(db: Session, project_id: int) -> list[ConsensusOut]:
    prompt_of = dict(db.execute(select(Item.id, PromptRow.external_id).join(PromptRow, PromptRow.id == Item.prompt_row_id)
                                .where(Item.project_id == project_id)).all())
    out = []
    for item_id, rs in sorted(by_item(raw_rankings(db, project_id)).items()):
        out.append(ConsensusOut(item_id=item_id, prompt_id=prompt_of[item_id], rankings=len(rs),
                                consensus=quality.consensus([r.order for r in firsts(rs)]), agreement=item_agreement(rs),
                                is_gold=rs[0].is_gold))
    return out


def item_payloads(db: Session, project_id: int, item_id: int | None = None) -> dict[int, dict[str, Any]]:
    """item id → prompt id, prompt content and candidate (id, text, policy) list, for export (or for one item)."""
    from rankloop.labeling.models import CandidateRow

    q = (select(Item.id, Item.prompt_row_id, Item.candidate_ids, PromptRow.external_id, PromptRow.content)
         .join(PromptRow, PromptRow.id == Item.prompt_row_id).where(Item.project_id == project_id))
    cq = (select(CandidateRow.prompt_row_id, CandidateRow.external_id, CandidateRow.text, CandidateRow.policy)
          .where(CandidateRow.project_id == project_id))
    if item_id is not None:
        q = q.where(Item.id == item_id)
        cq = cq.where(CandidateRow.prompt_row_id == select(Item.prompt_row_id).where(Item.id == item_id).scalar_subquery())
    items = db.execute(q).all()
    texts: dict[tuple[int, str], tuple[str, str]] = {}
    for prow, ext, text, policy in db.execute(cq):
        texts[(prow, ext)] = (text, policy)
    # candidates: (id, text, policy); issue 15: the policy that wrote each candidate is exported
    return {i.id: {"prompt_id": i.external_id, "prompt": i.content,
                   "candidates": [(c, *texts[(i.prompt_row_id, c)]) for c in i.candidate_ids]} for i in items}


# ---------------------------------------------------------------- lead tools: the per-labeler dashboard


def prompt_ids(db: Session, project_id: int) -> dict[int, str]:
    return dict(db.execute(select(Item.id, PromptRow.external_id).join(PromptRow, PromptRow.id == Item.prompt_row_id)
                           .where(Item.project_id == project_id)).all())


def median(xs: list[float]) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    m = len(xs) // 2
    return xs[m] if len(xs) % 2 else (xs[m - 1] + xs[m]) / 2


def agreement_with_consensus(raws: list[Raw]) -> dict[str, tuple[int, int]]:
    """Labeler → (agreeing, total) pair judgements against the consensus (``quality.consensus``)
    of the *other* labelers of each item they ranked with others: leaving oneself out keeps a
    labeler from agreeing with their own vote."""
    out: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for rs in by_item(raws).values():
        if len(rs) < 2 or rs[0].is_gold:
            continue
        for r in rs:
            others = [o.order for o in rs if o is not r]
            a, t = quality.pair_agreement_counts([r.order, quality.consensus(others)])
            out[r.labeler][0] += a
            out[r.labeler][1] += t
    return {k: (v[0], v[1]) for k, v in out.items()}


def dashboard(db: Session, project_id: int, states: dict[str, str]):
    """Per labeler, over current rankings (a correction in place of what it superseded): agreement
    with consensus, gold accuracy, median seconds from serving to submitting (``Raw.time_on_task``:
    the ranking's ``served_at`` to its ``created_at``; a correction has none), rankings per UTC day."""
    from rankloop.labeling.schemas import LabelerDashboard

    raws = raw_rankings(db, project_id)
    acc = gold_accuracy(raws, gold_orders(db, project_id))
    agr = agreement_with_consensus(raws)
    seconds: dict[str, list[float]] = defaultdict(list)
    for r in raws:
        if r.time_on_task is not None:
            seconds[r.labeler].append(max(0.0, r.time_on_task))
    count: dict[str, int] = defaultdict(int)
    days: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r in raws:
        count[r.labeler] += 1
        days[r.labeler][r.created_at.strftime("%Y-%m-%d")] += 1
    out = []
    for name in sorted(set(count) | set(states)):
        a = agr.get(name)
        out.append(LabelerDashboard(
            username=name, state=states.get(name, "qualified"), rankings=count.get(name, 0),
            agreement_with_consensus=a[0] / a[1] if a and a[1] else None,
            gold_answered=acc.get(name, (0, None))[0], gold_accuracy=acc.get(name, (0, None))[1],
            median_seconds=median(seconds.get(name, [])), per_day=dict(sorted(days.get(name, {}).items()))))
    return out
