"""Export a project's rankings for the trainers: the only reader of the labeling database.

- ``rankings.jsonl``: every labeler's raw ranking as given (``RankedExample`` rows, the format
  ``rankloop train-rm`` reads), one row per submission.
- TRL comparisons (``prompt``/``chosen``/``rejected``, ties dropped), derived from those rows;
  by default an all-bad ranking gives no pair and an unsafe candidate is never ``chosen``
  (``records.apply_flags``). A pairwise strength is each pair's ``margin``.
- ``ratings.jsonl``: per-candidate ratings (Likert, acceptability, labels, comment), ``records.Rating``.

Filters: ``min_gold_accuracy`` leaves out every ranking by a labeler whose gold accuracy is
below it (labelers who have answered no gold item are kept and counted); ``min_agreement`` then
keeps only items ranked by two or more labelers whose pairwise agreement reaches it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from rankloop.io import write_rankings, write_ratings, write_trl
from rankloop.labeling import stats
from rankloop.labeling.schemas import RatingOut
from rankloop.labeling.services.errors import DomainError
from rankloop.labeling.services.projects import find_project
from rankloop.records import CandidateText, RankedExample, Ranking, Rating


# What ``export_project`` raises (an unknown project, …): the services' base error, under the name
# the export command has always caught.
ExportError = DomainError


def collect(db: Session, project_id: int, min_agreement: float | None = None,
            min_gold_accuracy: float | None = None) -> tuple[list[RankedExample], dict[str, Any]]:
    raws = stats.raw_rankings(db, project_id)
    payload = stats.item_payloads(db, project_id)
    acc = stats.gold_accuracy(raws, stats.gold_orders(db, project_id))
    info: dict[str, Any] = {"rankings_in_db": len(raws), "labelers": len({r.labeler for r in raws})}
    if min_gold_accuracy is not None:
        dropped = sorted(u for u, (_, a) in acc.items() if a is not None and a < min_gold_accuracy)
        info["labelers_below_gold_accuracy"] = dropped
        info["labelers_without_gold"] = sorted({r.labeler for r in raws} - set(acc))
        raws = [r for r in raws if r.labeler not in set(dropped)]
    if min_agreement is not None:
        keep, single, low = [], 0, 0
        for _item, rs in stats.by_item(raws).items():
            agr = stats.item_agreement(rs) if len(rs) >= 2 else None
            if agr is None:
                single += 1
            elif agr < min_agreement:
                low += 1
            else:
                keep.extend(rs)
        info["items_below_agreement"] = low
        info["items_single_labeler_dropped"] = single
        raws = sorted(keep, key=lambda r: r.id)
    out = []
    for r in raws:
        p = payload[r.item_id]
        out.append(RankedExample(
            prompt_id=p["prompt_id"], prompt=p["prompt"],
            candidates=[CandidateText(id=c, text=t) for c, t in p["candidates"]],
            ranking=Ranking(prompt_id=p["prompt_id"], order=r.order, labeler=r.labeler, created_at=r.created_at,
                            all_bad=r.all_bad, unsafe=r.unsafe, rationale=r.rationale, strength=r.strength,
                            strength_scale=r.strength_scale, unsafe_ids=r.unsafe_ids or []),
        ))
    info["rankings_exported"] = len(out)
    info["items_exported"] = len({r.item_id for r in raws})
    info["ranking_ids"] = [r.id for r in raws]  # what collect_ratings exports ratings of
    return out, info


# ---------------------------------------------------------------- ratings (issue 15 item 1)


def _rating_query(db: Session, project_id: int) -> list[Any]:
    from sqlalchemy import select

    from rankloop.labeling.models import RatingRow, User

    return db.execute(
        select(RatingRow.ranking_id, RatingRow.item_id, User.username, RatingRow.candidate_id, RatingRow.score,
               RatingRow.acceptable, RatingRow.labels, RatingRow.comment, RatingRow.created_at)
        .join(User, User.id == RatingRow.labeler_id)
        .where(RatingRow.project_id == project_id).order_by(RatingRow.id)
    ).all()


def collect_ratings(db: Session, project_id: int, ranking_ids: list[int] | None = None) -> list[Rating]:
    """The per-candidate ratings of ``project_id`` (of the rankings ``ranking_ids`` only, when given:
    the ones ``collect`` kept after its filters), as ``ratings.jsonl`` rows: each with the prompt and
    the candidate's text, so a trainer needs no database."""
    from rankloop.labeling.models import as_utc

    rows = _rating_query(db, project_id)
    keep = set(ranking_ids) if ranking_ids is not None else None
    payload = stats.item_payloads(db, project_id) if rows else {}
    out = []
    for rid, iid, labeler, cid, score, acceptable, labels, comment, created in rows:
        if keep is not None and rid not in keep:
            continue
        p = payload[iid]
        out.append(Rating(prompt_id=p["prompt_id"], candidate_id=cid, score=score, acceptable=acceptable,
                          labels=list(labels or []), comment=comment, labeler=labeler, created_at=as_utc(created),
                          prompt=p["prompt"], text=dict(p["candidates"])[cid]))
    return out


def rating_rows(db: Session, project_id: int) -> list[RatingOut]:
    """Every rating of the project as the API lists it (with the submission it came with)."""
    from rankloop.labeling.models import as_utc

    rows = _rating_query(db, project_id)
    payload = stats.item_payloads(db, project_id) if rows else {}
    return [RatingOut(ranking_id=rid, item_id=iid, prompt_id=payload[iid]["prompt_id"], labeler=labeler, candidate_id=cid,
                      score=score, acceptable=acceptable, labels=list(labels or []), comment=comment,
                      created_at=as_utc(created))
            for rid, iid, labeler, cid, score, acceptable, labels, comment, created in rows]


def trl_rows(examples: list[RankedExample], all_bad: str = "drop", unsafe: str = "never_chosen") -> list[dict[str, Any]]:
    """The rows ``io.write_trl`` writes, in memory (for downloads)."""
    import tempfile

    from rankloop.io import iter_jsonl

    with tempfile.TemporaryDirectory() as d:
        write_trl(Path(d) / "trl.jsonl", examples, all_bad=all_bad, unsafe=unsafe)
        return [obj for _, obj in iter_jsonl(Path(d) / "trl.jsonl")]


def export_project(database_url: str, project: int | str, rankings_out: str | Path, trl_out: str | Path | None = None,
                   min_agreement: float | None = None, min_gold_accuracy: float | None = None,
                   ratings_out: str | Path | None = None, trl_all_bad: str = "drop",
                   trl_unsafe: str = "never_chosen") -> dict[str, Any]:
    """Write ``rankings_out`` (and ``trl_out``) for ``project`` (id or name); return the counts."""
    from rankloop.labeling.db import make_engine

    engine = make_engine(database_url)
    try:
        with Session(engine) as db:
            p = find_project(db, project)
            examples, info = collect(db, p.id, min_agreement, min_gold_accuracy)
            kept = info.pop("ranking_ids")
            ratings = collect_ratings(db, p.id, kept) if ratings_out is not None else None
    finally:
        engine.dispose()
    info["project"] = p.name
    info["rankings_path"] = str(rankings_out)
    write_rankings(rankings_out, examples)
    if trl_out is not None:
        info["comparisons"] = write_trl(trl_out, examples, all_bad=trl_all_bad, unsafe=trl_unsafe)
        info["trl_path"] = str(trl_out)
    if ratings_out is not None:
        info["ratings"] = write_ratings(ratings_out, ratings or [])
        info["ratings_path"] = str(ratings_out)
    return info
