"""Export a project's rankings for the trainers: the only reader of the labeling database.

- ``rankings.jsonl``: every labeler's raw ranking as given (``RankedExample`` rows, the format
  ``rankloop train-rm`` reads), one row per submission.
- TRL comparisons (``prompt``/``chosen``/``rejected``, ties dropped), derived from those rows;
  by default an all-bad ranking gives no pair and an unsafe candidate is never ``chosen``
  (``records.apply_flags``). A pairwise strength is each pair's ``margin``.
- ``ratings.jsonl``: per-candidate ratings (Likert, acceptability, labels, comment), ``records.Rating``.

Only current rankings are exported by default: a labeler's correction (issue 15 item 3) replaces
the ranking it supersedes; ``history`` also writes the superseded rows, marked ``current: false``.
Each row carries the app's ``ranking_id``, ``supersedes`` (a correction), ``time_on_task`` (seconds
from serving the task to submitting, server clock) and ``active_seconds`` (the page's own count).
Each candidate carries the ``policy`` that wrote it (where known); each ranking its ``strength``,
and an imported TRL row its ``margin`` (issue 15 item 2). Imported judgements are exported like
collected ones, a rater's repeats included (the rows are raw).

Filters: ``min_gold_accuracy`` leaves out every ranking by a labeler whose gold accuracy is
below it (labelers who have answered no gold item are kept and counted); ``min_agreement`` then
keeps only items ranked by two or more labelers whose pairwise agreement reaches it.

Adjudications (the review queue): an item a reviewer settled is exported as the reviewer's one
ranking, marked ``"provenance": "adjudicated"`` (labeler: the reviewer; rationale: their note),
instead of its labelers' rankings, and is kept whatever ``min_agreement`` says (its disagreement
is what the reviewer settled). ``prefer_adjudicated=False`` exports the raw rankings only; the raw
rankings are stored unchanged either way (``GET /api/projects/{id}/rankings``).
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
            min_gold_accuracy: float | None = None, history: bool = False,
            prefer_adjudicated: bool = True) -> tuple[list[RankedExample], dict[str, Any]]:
    """The rows to export. Quality filters always judge the current rankings; ``history`` then adds
    the superseded ones (``current: false``) of the items and labelers kept (not of adjudicated items:
    their reviewer's ranking stands for them)."""
    raws = stats.raw_rankings(db, project_id)
    old = [r for r in stats.raw_rankings(db, project_id, history=True) if not r.current] if history else []
    adjudicated = _adjudications(db, project_id) if prefer_adjudicated else {}
    settled = [r for r in raws if r.item_id in adjudicated]
    raws = [r for r in raws if r.item_id not in adjudicated]
    payload = stats.item_payloads(db, project_id)
    acc = stats.gold_accuracy(raws, stats.gold_orders(db, project_id))
    info: dict[str, Any] = {"rankings_in_db": len(raws) + len(settled), "labelers": len({r.labeler for r in raws + settled})}
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
    if old:
        kept = {(r.item_id, r.labeler) for r in raws}
        info["superseded_exported"] = sum((r.item_id, r.labeler) in kept for r in old)
        raws = sorted(raws + [r for r in old if (r.item_id, r.labeler) in kept], key=lambda r: r.id)
    if adjudicated:  # one row per settled item, in the place of its first raw ranking
        info["items_adjudicated"] = len(adjudicated)
        info["raw_rankings_replaced"] = len(settled)
        raws = sorted(raws + list(adjudicated.values()), key=lambda r: r.id)
    out = []
    for r in raws:
        p = payload[r.item_id]
        out.append(RankedExample(
            prompt_id=p["prompt_id"], prompt=p["prompt"],
            candidates=[CandidateText(id=c, text=t, policy=None if pol == "unknown" else pol) for c, t, pol in p["candidates"]],
            ranking=Ranking(prompt_id=p["prompt_id"], order=r.order, labeler=r.labeler, created_at=r.created_at,
                            all_bad=r.all_bad, unsafe=r.unsafe, rationale=r.rationale, strength=r.strength,
                            strength_scale=r.strength_scale, unsafe_ids=r.unsafe_ids or [],
                            provenance=getattr(r, "provenance", None),
                            # an adjudication is no app ranking row: no id, no chain, no timing
                            **({} if isinstance(r, _Settled) else dict(
                                ranking_id=r.id, supersedes=r.supersedes_id, current=r.current,
                                time_on_task=_seconds(r.time_on_task), active_seconds=_seconds(r.active_seconds)))),
            margin=r.margin,
        ))
    info["rankings_exported"] = len(out)
    info["items_exported"] = len({r.item_id for r in raws})
    # what collect_ratings exports ratings of: current labelers' rankings (an adjudication has none)
    info["ranking_ids"] = [r.id for r in raws if r.current and not isinstance(r, _Settled)]
    return out, info


def _seconds(v: float | None) -> float | None:
    return None if v is None else round(v, 3)  # milliseconds: the clocks' honest resolution


class _Settled(stats.Raw):
    provenance = "adjudicated"


def _adjudications(db: Session, project_id: int) -> dict[int, stats.Raw]:
    """item id → its adjudication in force, as a ``Raw`` row (sorted in at the item's first ranking)."""
    from rankloop.labeling.services.review import latest_adjudications

    adj = latest_adjudications(db, project_id)
    if not adj:
        return {}
    first = {}
    for r in stats.raw_rankings(db, project_id):
        first.setdefault(r.item_id, r.id)
    return {i: _Settled(id=first.get(i, 0), slot_id=0, item_id=i, labeler=a.reviewer, order=a.order, all_bad=False,
                        unsafe=False, rationale=a.note, created_at=a.created_at, is_gold=False)
            for i, a in adj.items()}


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
                          prompt=p["prompt"], text={c: t for c, t, _policy in p["candidates"]}[cid]))
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
                   include_superseded: bool = False, ratings_out: str | Path | None = None, trl_all_bad: str = "drop",
                   trl_unsafe: str = "never_chosen") -> dict[str, Any]:
    """Write ``rankings_out`` (and ``trl_out``, ``ratings_out``) for ``project`` (id or name); return
    the counts. ``include_superseded`` adds corrected rankings' earlier versions to ``rankings_out``
    only: the TRL pairs and the ratings are always those of current rankings."""
    from rankloop.labeling.db import make_engine

    engine = make_engine(database_url)
    try:
        with Session(engine) as db:
            p = find_project(db, project)
            examples, info = collect(db, p.id, min_agreement, min_gold_accuracy, history=include_superseded)
            kept = info.pop("ranking_ids")
            ratings = collect_ratings(db, p.id, kept) if ratings_out is not None else None
    finally:
        engine.dispose()
    info["project"] = p.name
    info["rankings_path"] = str(rankings_out)
    write_rankings(rankings_out, examples)
    if trl_out is not None:
        info["comparisons"] = write_trl(trl_out, [e for e in examples if e.ranking.current is not False],
                                        all_bad=trl_all_bad, unsafe=trl_unsafe)
        info["trl_path"] = str(trl_out)
    if ratings_out is not None:
        info["ratings"] = write_ratings(ratings_out, ratings or [])
        info["ratings_path"] = str(ratings_out)
    return info


# ---------------------------------------------------------------- demonstrations (issue 12 item 1)


def export_demonstrations(database_url: str, project: int | str, out: str | Path, include_pending: bool = False
                          ) -> dict[str, Any]:
    """Write ``out`` (``demonstrations.jsonl``, what ``rankloop train-sft --data`` reads) for
    ``project``: its accepted demonstrations, and the not yet reviewed ones with
    ``include_pending``; rejected ones never. Returns the counts."""
    import json

    from rankloop.labeling.db import make_engine
    from rankloop.labeling.services import demonstrations

    engine = make_engine(database_url)
    try:
        with Session(engine) as db:
            p = find_project(db, project)
            rows = demonstrations.export_rows(db, p.id, include_pending)
            by_review = demonstrations.review_counts(db, p.id)
    finally:
        engine.dispose()
    Path(out).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return {"project": p.name, "demonstrations_in_db": by_review, "include_pending": include_pending,
            "demonstrations_exported": len(rows), "demonstrations_path": str(out)}

