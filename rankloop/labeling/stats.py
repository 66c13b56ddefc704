"""Progress, agreement, labeler quality and consensus of a project, read from the database."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from rankloop.labeling import quality
from rankloop.labeling.models import Item, PromptRow, RankingRow, Slot, User, as_utc
from rankloop.labeling.schemas import AgreementOut, ConsensusOut, LabelerStats, ProgressOut


@dataclass
class Raw:
    id: int
    slot_id: int
    item_id: int
    labeler: str
    order: list[list[str]]
    all_bad: bool
    unsafe: bool
    rationale: str | None
    created_at: datetime
    is_gold: bool
    # feedback (issue 15 item 1)
    strength: int | None = None
    strength_scale: int | None = None
    unsafe_ids: list[str] | None = None


def raw_rankings(db: Session, project_id: int) -> list[Raw]:
    rows = db.execute(
        select(RankingRow.id, RankingRow.slot_id, RankingRow.item_id, User.username, RankingRow.order, RankingRow.all_bad,
               RankingRow.unsafe, RankingRow.rationale, RankingRow.created_at, RankingRow.is_gold,
               RankingRow.strength, RankingRow.strength_scale, RankingRow.unsafe_ids)
        .join(User, User.id == RankingRow.labeler_id)
        .where(RankingRow.project_id == project_id).order_by(RankingRow.id)
    ).all()
    return [Raw(r[0], r[1], r[2], r[3], r[4], bool(r[5]), bool(r[6]), r[7], as_utc(r[8]), bool(r[9]), r[10], r[11], r[12])
            for r in rows]


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


def item_agreement(rs: list[Raw]) -> float | None:
    a, t = quality.pair_agreement_counts([r.order for r in rs])
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
    rankings = db.execute(select(func.count()).where(RankingRow.project_id == project_id)).scalar_one()
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
    acc = gold_accuracy(raw_rankings(db, project_id), gold_orders(db, project_id)) if gold_items else {}
    labelers = [LabelerStats(username=u, done=d["done"], leased=d["leased"], gold_done=d["gold_done"],
                             gold_accuracy=acc.get(u, (0, None))[1]) for u, d in sorted(per_user.items())]
    return ProgressOut(project_id=project_id, items=items, gold_items=gold_items, slots=slots,
                       slots_done=per_status.get("done", 0), slots_leased=per_status.get("leased", 0),
                       items_complete=(items - gold_items) - incomplete, rankings=rankings, labelers=labelers)


def agreement(db: Session, project_id: int) -> AgreementOut:
    groups = [[r.order for r in rs] for rs in by_item(raw_rankings(db, project_id)).values() if len(rs) >= 2]
    return AgreementOut(items_multi=len(groups), pairwise_agreement=quality.pairwise_agreement(groups),
                        krippendorff_alpha=quality.ranking_alpha(groups, "ordinal"))


def consensus(db: Session, project_id: int) -> list[ConsensusOut]:
    prompt_of = dict(db.execute(select(Item.id, PromptRow.external_id).join(PromptRow, PromptRow.id == Item.prompt_row_id)
                                .where(Item.project_id == project_id)).all())
    out = []
    for item_id, rs in sorted(by_item(raw_rankings(db, project_id)).items()):
        out.append(ConsensusOut(item_id=item_id, prompt_id=prompt_of[item_id], rankings=len(rs),
                                consensus=quality.consensus([r.order for r in rs]), agreement=item_agreement(rs),
                                is_gold=rs[0].is_gold))
    return out


def item_payloads(db: Session, project_id: int) -> dict[int, dict[str, Any]]:
    """item id → prompt id, prompt content and candidate (id, text) list, for export."""
    from rankloop.labeling.models import CandidateRow

    items = db.execute(select(Item.id, Item.prompt_row_id, Item.candidate_ids, PromptRow.external_id, PromptRow.content)
                       .join(PromptRow, PromptRow.id == Item.prompt_row_id).where(Item.project_id == project_id)).all()
    texts: dict[tuple[int, str], str] = {}
    for prow, ext, text in db.execute(select(CandidateRow.prompt_row_id, CandidateRow.external_id, CandidateRow.text)
                                      .where(CandidateRow.project_id == project_id)):
        texts[(prow, ext)] = text
    return {i.id: {"prompt_id": i.external_id, "prompt": i.content,
                   "candidates": [(c, texts[(i.prompt_row_id, c)]) for c in i.candidate_ids]} for i in items}
