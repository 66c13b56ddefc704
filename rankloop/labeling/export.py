"""Export a project's rankings for the trainers: the only reader of the labeling database.

- ``rankings.jsonl``: every labeler's raw ranking as given (``RankedExample`` rows, the format
  ``rankloop train-rm`` reads), one row per submission.
- TRL comparisons (``prompt``/``chosen``/``rejected``, ties dropped), derived from those rows.

Each candidate carries the ``policy`` that wrote it (where known); each ranking its ``strength``,
and an imported TRL row its ``margin`` (issue 15 item 2). Imported judgements are exported like
collected ones, a rater's repeats included (the rows are raw).

Filters: ``min_gold_accuracy`` leaves out every ranking by a labeler whose gold accuracy is
below it (labelers who have answered no gold item are kept and counted); ``min_agreement`` then
keeps only items ranked by two or more labelers whose pairwise agreement reaches it.
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
            candidates=[CandidateText(id=c, text=t, policy=None if pol == "unknown" else pol) for c, t, pol in p["candidates"]],
            ranking=Ranking(prompt_id=p["prompt_id"], order=r.order, labeler=r.labeler, created_at=r.created_at,
                            all_bad=r.all_bad, unsafe=r.unsafe, rationale=r.rationale, strength=r.strength),
            margin=r.margin,
        ))
    info["rankings_exported"] = len(out)
    info["items_exported"] = len({r.item_id for r in raws})
    return out, info


def trl_rows(examples: list[RankedExample]) -> list[dict[str, Any]]:
    """The rows ``io.write_trl`` writes, in memory (for downloads)."""
    import tempfile

    from rankloop.io import iter_jsonl

    with tempfile.TemporaryDirectory() as d:
        write_trl(Path(d) / "trl.jsonl", examples)
        return [obj for _, obj in iter_jsonl(Path(d) / "trl.jsonl")]


def export_project(database_url: str, project: int | str, rankings_out: str | Path, trl_out: str | Path | None = None,
                   min_agreement: float | None = None, min_gold_accuracy: float | None = None) -> dict[str, Any]:
    """Write ``rankings_out`` (and ``trl_out``) for ``project`` (id or name); return the counts."""
    from rankloop.labeling.db import make_engine

    engine = make_engine(database_url)
    try:
        with Session(engine) as db:
            p = find_project(db, project)
            examples, info = collect(db, p.id, min_agreement, min_gold_accuracy)
    finally:
        engine.dispose()
    info["project"] = p.name
    info["rankings_path"] = str(rankings_out)
    write_rankings(rankings_out, examples)
    if trl_out is not None:
        info["comparisons"] = write_trl(trl_out, examples)
        info["trl_path"] = str(trl_out)
    return info
