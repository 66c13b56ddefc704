"""Export a project's rankings for the trainers: the only reader of the labeling database.

- ``rankings.jsonl``: every labeler's raw ranking as given (``RankedExample`` rows, the format
  ``rankloop train-rm`` reads), one row per submission.
- TRL comparisons (``prompt``/``chosen``/``rejected``, ties dropped), derived from those rows.

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

from rankloop.io import write_rankings, write_trl
from rankloop.labeling import stats
from rankloop.labeling.services.errors import DomainError
from rankloop.labeling.services.projects import find_project
from rankloop.records import CandidateText, RankedExample, Ranking


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
                            provenance=getattr(r, "provenance", None),
                            # an adjudication is no app ranking row: no id, no chain, no timing
                            **({} if isinstance(r, _Settled) else dict(
                                ranking_id=r.id, supersedes=r.supersedes_id, current=r.current,
                                time_on_task=_seconds(r.time_on_task), active_seconds=_seconds(r.active_seconds)))),
            margin=r.margin,
        ))
    info["rankings_exported"] = len(out)
    info["items_exported"] = len({r.item_id for r in raws})
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


def trl_rows(examples: list[RankedExample]) -> list[dict[str, Any]]:
    """The rows ``io.write_trl`` writes, in memory (for downloads)."""
    import tempfile

    from rankloop.io import iter_jsonl

    with tempfile.TemporaryDirectory() as d:
        write_trl(Path(d) / "trl.jsonl", examples)
        return [obj for _, obj in iter_jsonl(Path(d) / "trl.jsonl")]


def export_project(database_url: str, project: int | str, rankings_out: str | Path, trl_out: str | Path | None = None,
                   min_agreement: float | None = None, min_gold_accuracy: float | None = None,
                   include_superseded: bool = False) -> dict[str, Any]:
    """Write ``rankings_out`` (and ``trl_out``) for ``project`` (id or name); return the counts.
    ``include_superseded`` adds corrected rankings' earlier versions to ``rankings_out`` only: the
    TRL pairs are always made from current rankings."""
    from rankloop.labeling.db import make_engine

    engine = make_engine(database_url)
    try:
        with Session(engine) as db:
            p = find_project(db, project)
            examples, info = collect(db, p.id, min_agreement, min_gold_accuracy, history=include_superseded)
    finally:
        engine.dispose()
    info["project"] = p.name
    info["rankings_path"] = str(rankings_out)
    write_rankings(rankings_out, examples)
    if trl_out is not None:
        info["comparisons"] = write_trl(trl_out, [e for e in examples if e.ranking.current is not False])
        info["trl_path"] = str(trl_out)
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

