"""Projects (admins): create, import prompts and candidates, invite labelers, watch progress,
agreement and labeler quality, export. Labelers may list the projects they belong to."""

from __future__ import annotations

import json
from typing import Annotated, Literal
from urllib.parse import quote

from fastapi import APIRouter, File, Query, Request, UploadFile
from fastapi.responses import PlainTextResponse

from rankloop.labeling import export as export_mod
from rankloop.labeling import importer, judgements, stats
from rankloop.labeling.deps import AdminUser, CurrentUser, PathId, SessionDep
from rankloop.labeling.models import Project, User
from rankloop.labeling.services import demonstrations, projects
from rankloop.labeling.schemas import (AgreementOut, ConsensusOut, ImportIn, ImportOut, JudgementsImportOut, MemberIn, ProgressOut, ProjectCreate,
                                       ProjectOut, ProjectUpdate, RankingOut, RatingOut, UserOut)
from rankloop.records import AllBadPolicy, UnsafePolicy, strength_margin

router = APIRouter(prefix="/api/projects", tags=["projects"])


@router.post("", response_model=ProjectOut, status_code=201)
def add_project(body: ProjectCreate, _: AdminUser, db: SessionDep) -> Project:
    return projects.create_project(db, body)


@router.get("", response_model=list[ProjectOut], summary="All projects (admins) or your projects (labelers)")
def list_projects(user: CurrentUser, db: SessionDep) -> list[Project]:
    return projects.list_projects(db, None if user.is_admin else user.user_id)


@router.get("/{project_id}", response_model=ProjectOut)
def read_project(project_id: PathId, user: CurrentUser, db: SessionDep) -> Project:
    return projects.visible_project(db, project_id, user.user_id, user.is_admin)


@router.patch("/{project_id}", response_model=ProjectOut)
def update_project(project_id: PathId, body: ProjectUpdate, _: AdminUser, db: SessionDep, request: Request) -> Project:
    p = projects.update_project(db, project_id, body)
    request.app.state.queue.forget(project_id=project_id)
    return p


@router.post("/{project_id}/import", response_model=ImportOut, summary="Import prompts, candidates and gold rankings (JSON)")
def import_json(project_id: PathId, body: ImportIn, _: AdminUser, db: SessionDep) -> ImportOut:
    return importer.import_items(db, projects.get_project(db, project_id), body.prompts, body.candidates, body.gold)


@router.post("/{project_id}/import-files", response_model=ImportOut,
             summary="Import JSONL files: candidates.jsonl + prompts.jsonl, or one combined JSONL")
async def import_files(project_id: PathId, _: AdminUser, db: SessionDep,
                       candidates: Annotated[UploadFile, File(description="candidates.jsonl, or combined rows")],
                       prompts: Annotated[UploadFile | None, File(description="prompts.jsonl")] = None) -> ImportOut:
    crow = importer.parse_jsonl_bytes(await candidates.read(), candidates.filename or "candidates")
    prow = importer.parse_jsonl_bytes(await prompts.read(), prompts.filename or "prompts") if prompts is not None and prompts.filename else None
    project = projects.get_project(db, project_id)
    ps, cs, gold = importer.split_rows(crow, prow, candidates.filename or "candidates",
                                       prompts.filename if prow is not None else "prompts",
                                       drafts_optional=project.mode == "demonstration")
    return importer.import_items(db, project, ps, cs, gold)


# ---------------------------------------------------------------- importing judgements (issue 15 item 2)


@router.post("/{project_id}/import-judgements", response_model=JudgementsImportOut,
             summary="Import judgements made elsewhere (rankings, TRL, HH-RLHF or pairwise JSONL), raters and times kept")
async def import_judgements(
    project_id: PathId, _: AdminUser, db: SessionDep, request: Request,
    file: Annotated[UploadFile, File(description="the JSONL file (see docs/labeling.md, 'Importing existing judgements')")],
    format: judgements.JudgementFormat = "auto",
    rater_prefix: Annotated[str, Query(max_length=32, description="put before every rater name (keeps vendors apart)")] = "",
    default_rater: Annotated[str, Query(min_length=1, max_length=64, description="the rater of rows that name none")] = "imported",
    skip_invalid: Annotated[bool, Query(description="skip bad rows (counted) instead of refusing the file")] = False,
    open_slots: Annotated[bool, Query(description="also open the project's overlap places on new items")] = False,
) -> JudgementsImportOut:
    p = projects.get_project(db, project_id)
    out = judgements.import_judgements(db, p, await file.read(), file.filename or "upload", format, default_rater,
                                       rater_prefix, skip_invalid, open_slots)
    request.app.state.queue.forget(project_id=project_id)
    return out


@router.get("/{project_id}/members", response_model=list[UserOut])
def list_members(project_id: PathId, _: AdminUser, db: SessionDep) -> list[User]:
    return projects.list_members(db, project_id)


@router.post("/{project_id}/members", response_model=UserOut, status_code=201, summary="Invite a labeler to the project")
def invite(project_id: PathId, body: MemberIn, _: AdminUser, db: SessionDep, request: Request) -> User:
    projects.get_project(db, project_id)
    user = projects.add_member(db, project_id, body.username)
    request.app.state.queue.forget(user_id=user.id)
    return user


@router.delete("/{project_id}/members/{user_id}", status_code=204)
def remove_member(project_id: PathId, user_id: PathId, _: AdminUser, db: SessionDep, request: Request) -> None:
    projects.remove_member(db, project_id, user_id)
    request.app.state.queue.forget(user_id=user_id)


@router.get("/{project_id}/progress", response_model=ProgressOut)
def progress(project_id: PathId, _: AdminUser, db: SessionDep) -> ProgressOut:
    projects.get_project(db, project_id)
    return stats.progress(db, project_id)


@router.get("/{project_id}/agreement", response_model=AgreementOut)
def agreement(project_id: PathId, _: AdminUser, db: SessionDep) -> AgreementOut:
    projects.get_project(db, project_id)
    return stats.agreement(db, project_id)


@router.get("/{project_id}/consensus", response_model=list[ConsensusOut])
def consensus(project_id: PathId, _: AdminUser, db: SessionDep) -> list[ConsensusOut]:
    projects.get_project(db, project_id)
    return stats.consensus(db, project_id)


@router.get("/{project_id}/rankings", response_model=list[RankingOut], summary="Every raw ranking, as given (corrections and what they superseded included: see `current`)")
def rankings(project_id: PathId, _: AdminUser, db: SessionDep) -> list[RankingOut]:
    projects.get_project(db, project_id)
    payload = stats.item_payloads(db, project_id)
    return [RankingOut(id=r.id, task_id=r.slot_id, item_id=r.item_id, prompt_id=payload[r.item_id]["prompt_id"],
                       labeler=r.labeler, order=r.order, all_bad=r.all_bad, unsafe=r.unsafe, rationale=r.rationale,
                       created_at=r.created_at, is_gold=r.is_gold, supersedes_id=r.supersedes_id, current=r.current,
                       time_on_task=r.time_on_task, active_seconds=r.active_seconds, strength=r.strength, source=r.source,
                       strength_scale=r.strength_scale, unsafe_ids=r.unsafe_ids or [],
                       margin=strength_margin(r.strength, r.strength_scale) if r.strength_scale is not None and
                       r.strength is not None else r.margin)
            for r in stats.raw_rankings(db, project_id, history=True)]


@router.get("/{project_id}/ratings", response_model=list[RatingOut], summary="Every per-candidate rating, as given")
def ratings(project_id: PathId, _: AdminUser, db: SessionDep) -> list[RatingOut]:
    projects.get_project(db, project_id)
    return export_mod.rating_rows(db, project_id)


@router.get("/{project_id}/export", response_class=PlainTextResponse,
            summary="Download rankings.jsonl (format=rankings), TRL comparisons (format=trl), per-candidate "
                    "ratings.jsonl (format=ratings) or demonstrations.jsonl (format=demonstrations: accepted ones; "
                    "include_pending=true adds pending)")
def export(project_id: PathId, _: AdminUser, db: SessionDep,
           format: Literal["rankings", "trl", "ratings", "demonstrations"] = "rankings",
           min_agreement: Annotated[float | None, Query(ge=0, le=1)] = None,
           min_gold_accuracy: Annotated[float | None, Query(ge=0, le=1)] = None,
           include_superseded: Annotated[bool, Query(description="rankings format: also corrected rankings' earlier "
                                                     "versions (current: false)")] = False,
           include_pending: Annotated[bool, Query(description="demonstrations format: also those not reviewed yet "
                                                  "(rejected ones never)")] = False,
           prefer_adjudicated: Annotated[bool, Query(description="an adjudicated item as its reviewer's ranking "
                                                     "(provenance: adjudicated) instead of its raw rankings")] = True,
           all_bad: Annotated[AllBadPolicy, Query(description="format=trl: drop all-bad rankings' pairs, or keep them")] = "drop",
           unsafe: Annotated[UnsafePolicy, Query(description="format=trl: never_chosen (an unsafe candidate is never "
                                                 "'chosen') or keep")] = "never_chosen") -> PlainTextResponse:
    p = projects.get_project(db, project_id)
    if format == "demonstrations":
        rows = demonstrations.export_rows(db, p.id, include_pending)
    else:
        examples, info = export_mod.collect(db, p.id, min_agreement, min_gold_accuracy,
                                            history=include_superseded and format == "rankings",
                                            prefer_adjudicated=prefer_adjudicated)
        if format == "rankings":
            rows = [e.to_row() for e in examples]
        elif format == "trl":
            rows = export_mod.trl_rows(examples, all_bad=all_bad, unsafe=unsafe)
        else:
            rows = [r.to_row() for r in export_mod.collect_ratings(db, p.id, info["ranking_ids"])]
    body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    return PlainTextResponse(body, media_type="application/x-ndjson",
                             headers={"Content-Disposition": attachment(f"{p.name}-{format}.jsonl")})


def attachment(filename: str) -> str:
    """A download header for any name (RFC 6266): the exact name UTF-8-percent-encoded in
    ``filename*`` (RFC 5987), and for old clients an ASCII ``filename`` with every other character
    (non-ASCII, quotes, backslashes, control characters such as CR/LF) replaced by ``_``."""
    fallback = "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in filename)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"
