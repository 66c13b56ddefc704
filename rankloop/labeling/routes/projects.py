"""Projects (admins): create, import prompts and candidates, invite labelers, watch progress,
agreement and labeler quality, export. Labelers may list the projects they belong to."""

from __future__ import annotations

import json
from typing import Annotated, Literal

from fastapi import APIRouter, File, HTTPException, Query, Request, UploadFile
from fastapi.responses import PlainTextResponse
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from rankloop.labeling import export as export_mod
from rankloop.labeling import importer, stats
from rankloop.labeling.db import writing
from rankloop.labeling.deps import AdminUser, CurrentUser, SessionDep
from rankloop.labeling.models import Member, Project, User
from rankloop.labeling.schemas import (AgreementOut, ConsensusOut, ImportIn, ImportOut, MemberIn, ProgressOut, ProjectCreate,
                                       ProjectOut, ProjectUpdate, RankingOut, UserOut)

router = APIRouter(prefix="/api/projects", tags=["projects"])


def get_project(db: SessionDep, project_id: int) -> Project:
    p = db.get(Project, project_id)
    if p is None:
        raise HTTPException(404, f"project {project_id} not found")
    return p


def create_project(db: SessionDep, body: ProjectCreate) -> Project:
    data = body.model_dump()
    if data["mode"] == "pairwise":
        data["k"] = 2
    p = Project(**data)
    try:
        with writing(db):
            db.add(p)
    except IntegrityError:
        raise HTTPException(409, f"a project named {body.name!r} already exists") from None
    return p


def add_member(db: SessionDep, project_id: int, username: str) -> User:
    user = db.execute(select(User).where(User.username == username)).scalar_one_or_none()
    if user is None:
        raise HTTPException(404, f"no user {username!r}: create the account first")
    with writing(db):
        if db.get(Member, (project_id, user.id)) is None:
            db.add(Member(project_id=project_id, user_id=user.id))
    return user


@router.post("", response_model=ProjectOut, status_code=201)
def add_project(body: ProjectCreate, _: AdminUser, db: SessionDep) -> Project:
    return create_project(db, body)


@router.get("", response_model=list[ProjectOut], summary="All projects (admins) or your projects (labelers)")
def list_projects(user: CurrentUser, db: SessionDep) -> list[Project]:
    q = select(Project).order_by(Project.id)
    if not user.is_admin:
        q = q.join(Member, Member.project_id == Project.id).where(Member.user_id == user.user_id)
    return list(db.execute(q).scalars())


@router.get("/{project_id}", response_model=ProjectOut)
def read_project(project_id: int, user: CurrentUser, db: SessionDep) -> Project:
    p = get_project(db, project_id)
    if not user.is_admin and db.get(Member, (project_id, user.user_id)) is None:
        raise HTTPException(404, f"project {project_id} not found")
    return p


@router.patch("/{project_id}", response_model=ProjectOut)
def update_project(project_id: int, body: ProjectUpdate, _: AdminUser, db: SessionDep, request: Request) -> Project:
    with writing(db):
        p = get_project(db, project_id)
        for k, v in body.model_dump(exclude_none=True).items():
            setattr(p, k, v)
    request.app.state.queue.forget(project_id=project_id)
    return p


@router.post("/{project_id}/import", response_model=ImportOut, summary="Import prompts, candidates and gold rankings (JSON)")
def import_json(project_id: int, body: ImportIn, _: AdminUser, db: SessionDep) -> ImportOut:
    return importer.import_items(db, get_project(db, project_id), body.prompts, body.candidates, body.gold)


@router.post("/{project_id}/import-files", response_model=ImportOut,
             summary="Import JSONL files: candidates.jsonl + prompts.jsonl, or one combined JSONL")
async def import_files(project_id: int, _: AdminUser, db: SessionDep,
                       candidates: Annotated[UploadFile, File(description="candidates.jsonl, or combined rows")],
                       prompts: Annotated[UploadFile | None, File(description="prompts.jsonl")] = None) -> ImportOut:
    crow = importer.parse_jsonl_bytes(await candidates.read(), candidates.filename or "candidates")
    prow = importer.parse_jsonl_bytes(await prompts.read(), prompts.filename or "prompts") if prompts is not None and prompts.filename else None
    ps, cs, gold = importer.split_rows(crow, prow, candidates.filename or "candidates")
    return importer.import_items(db, get_project(db, project_id), ps, cs, gold)


@router.get("/{project_id}/members", response_model=list[UserOut])
def list_members(project_id: int, _: AdminUser, db: SessionDep) -> list[User]:
    return list(db.execute(select(User).join(Member, Member.user_id == User.id).where(Member.project_id == project_id)
                           .order_by(User.username)).scalars())


@router.post("/{project_id}/members", response_model=UserOut, status_code=201, summary="Invite a labeler to the project")
def invite(project_id: int, body: MemberIn, _: AdminUser, db: SessionDep, request: Request) -> User:
    get_project(db, project_id)
    user = add_member(db, project_id, body.username)
    request.app.state.queue.forget(user_id=user.id)
    return user


@router.delete("/{project_id}/members/{user_id}", status_code=204)
def remove_member(project_id: int, user_id: int, _: AdminUser, db: SessionDep, request: Request) -> None:
    with writing(db):
        db.execute(delete(Member).where(Member.project_id == project_id, Member.user_id == user_id))
    request.app.state.queue.forget(user_id=user_id)


@router.get("/{project_id}/progress", response_model=ProgressOut)
def progress(project_id: int, _: AdminUser, db: SessionDep) -> ProgressOut:
    get_project(db, project_id)
    return stats.progress(db, project_id)


@router.get("/{project_id}/agreement", response_model=AgreementOut)
def agreement(project_id: int, _: AdminUser, db: SessionDep) -> AgreementOut:
    get_project(db, project_id)
    return stats.agreement(db, project_id)


@router.get("/{project_id}/consensus", response_model=list[ConsensusOut])
def consensus(project_id: int, _: AdminUser, db: SessionDep) -> list[ConsensusOut]:
    get_project(db, project_id)
    return stats.consensus(db, project_id)


@router.get("/{project_id}/rankings", response_model=list[RankingOut], summary="Every raw ranking, as given")
def rankings(project_id: int, _: AdminUser, db: SessionDep) -> list[RankingOut]:
    get_project(db, project_id)
    payload = stats.item_payloads(db, project_id)
    return [RankingOut(id=r.id, task_id=r.slot_id, item_id=r.item_id, prompt_id=payload[r.item_id]["prompt_id"],
                       labeler=r.labeler, order=r.order, all_bad=r.all_bad, unsafe=r.unsafe, rationale=r.rationale,
                       created_at=r.created_at, is_gold=r.is_gold) for r in stats.raw_rankings(db, project_id)]


@router.get("/{project_id}/export", response_class=PlainTextResponse,
            summary="Download rankings.jsonl (format=rankings) or TRL comparisons (format=trl)")
def export(project_id: int, _: AdminUser, db: SessionDep, format: Literal["rankings", "trl"] = "rankings",
           min_agreement: Annotated[float | None, Query(ge=0, le=1)] = None,
           min_gold_accuracy: Annotated[float | None, Query(ge=0, le=1)] = None) -> PlainTextResponse:
    p = get_project(db, project_id)
    examples, _info = export_mod.collect(db, p.id, min_agreement, min_gold_accuracy)
    rows = [e.to_row() for e in examples] if format == "rankings" else export_mod.trl_rows(examples)
    body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    return PlainTextResponse(body, media_type="application/x-ndjson",
                             headers={"Content-Disposition": f'attachment; filename="{p.name}-{format}.jsonl"'})
