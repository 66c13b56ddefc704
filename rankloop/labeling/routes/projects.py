"""Projects (admins): create, import prompts and candidates, invite labelers, watch progress,
agreement and labeler quality, export. Labelers may list the projects they belong to."""

from __future__ import annotations

import json
from typing import Annotated, Literal
from urllib.parse import quote

from fastapi import APIRouter, File, Query, Request, UploadFile
from fastapi.responses import PlainTextResponse

from rankloop.labeling import export as export_mod
from rankloop.labeling import importer, stats
from rankloop.labeling.deps import AdminUser, CurrentUser, PathId, SessionDep
from rankloop.labeling.models import Project, User
from rankloop.labeling.services import projects
from rankloop.labeling.schemas import (AgreementOut, ConsensusOut, ImportIn, ImportOut, MemberIn, ProgressOut, ProjectCreate,
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
    ps, cs, gold = importer.split_rows(crow, prow, candidates.filename or "candidates",
                                       prompts.filename if prow is not None else "prompts")
    return importer.import_items(db, projects.get_project(db, project_id), ps, cs, gold)


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


@router.get("/{project_id}/rankings", response_model=list[RankingOut], summary="Every raw ranking, as given")
def rankings(project_id: PathId, _: AdminUser, db: SessionDep) -> list[RankingOut]:
    projects.get_project(db, project_id)
    payload = stats.item_payloads(db, project_id)
    return [RankingOut(id=r.id, task_id=r.slot_id, item_id=r.item_id, prompt_id=payload[r.item_id]["prompt_id"],
                       labeler=r.labeler, order=r.order, all_bad=r.all_bad, unsafe=r.unsafe, rationale=r.rationale,
                       created_at=r.created_at, is_gold=r.is_gold, strength=r.strength, strength_scale=r.strength_scale,
                       margin=strength_margin(r.strength, r.strength_scale) if r.strength is not None else None,
                       unsafe_ids=r.unsafe_ids or []) for r in stats.raw_rankings(db, project_id)]


@router.get("/{project_id}/ratings", response_model=list[RatingOut], summary="Every per-candidate rating, as given")
def ratings(project_id: PathId, _: AdminUser, db: SessionDep) -> list[RatingOut]:
    projects.get_project(db, project_id)
    return export_mod.rating_rows(db, project_id)


@router.get("/{project_id}/export", response_class=PlainTextResponse,
            summary="Download rankings.jsonl (format=rankings), TRL comparisons (format=trl) or per-candidate "
                    "ratings.jsonl (format=ratings)")
def export(project_id: PathId, _: AdminUser, db: SessionDep, format: Literal["rankings", "trl", "ratings"] = "rankings",
           min_agreement: Annotated[float | None, Query(ge=0, le=1)] = None,
           min_gold_accuracy: Annotated[float | None, Query(ge=0, le=1)] = None,
           all_bad: Annotated[AllBadPolicy, Query(description="format=trl: drop all-bad rankings' pairs, or keep them")] = "drop",
           unsafe: Annotated[UnsafePolicy, Query(description="format=trl: never_chosen (an unsafe candidate is never "
                                                 "'chosen') or keep")] = "never_chosen") -> PlainTextResponse:
    p = projects.get_project(db, project_id)
    examples, info = export_mod.collect(db, p.id, min_agreement, min_gold_accuracy)
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
