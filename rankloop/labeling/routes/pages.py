"""Server-rendered pages (Jinja2, autoescaped) over the same services as the REST API.

Every state-changing form carries the session's CSRF secret (checked in ``deps``); the login form,
which has no session yet, uses a double-submit cookie instead.
"""

from __future__ import annotations

import json
import secrets
import uuid
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.datastructures import UploadFile  # what request.form() gives (fastapi's is a subclass)

from rankloop.labeling import importer, stats
from rankloop.labeling.deps import SESSION_COOKIE, AdminUser, CurrentUser, OptionalUser, SessionDep, status_of
from rankloop.labeling.routes.auth import client_address
from rankloop.labeling.schemas import ProjectCreate, SubmitIn, UserCreate
from rankloop.labeling.security import SESSION_DAYS, Principal, same
from rankloop.labeling.services import DomainError, Invalid, NotFound, Throttled, auth, parse, projects, users

router = APIRouter(include_in_schema=False)
LOGIN_CSRF_COOKIE = "rankloop_login_csrf"


def render(request: Request, name: str, user: Principal | None = None, status_code: int = 200, **ctx) -> HTMLResponse:
    return request.app.state.templates.TemplateResponse(request, name, {"user": user, **ctx}, status_code=status_code)


def see_other(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


@router.get("/")
def home(user: OptionalUser) -> RedirectResponse:
    if user is None:
        return see_other("/login")
    return see_other("/admin" if user.is_admin else "/label")


@router.get("/login")
def login_page(request: Request, error: str | None = None, status_code: int = 200) -> HTMLResponse:
    token = secrets.token_urlsafe(24)
    resp = render(request, "login.html", csrf=token, error=error, status_code=status_code)
    resp.set_cookie(LOGIN_CSRF_COOKIE, token, httponly=True, samesite="strict", secure=request.app.state.secure_cookies,
                    max_age=3600)
    return resp


@router.post("/login")
def login_submit(request: Request, db: SessionDep, username: Annotated[str, Form()], password: Annotated[str, Form()],
                 csrf_token: Annotated[str, Form()] = "") -> Response:
    if not same(csrf_token, request.cookies.get(LOGIN_CSRF_COOKIE)):
        return login_page(request, "The form expired; please try again.", 403)
    try:
        user = auth.authenticate(db, request.app.state.login_limiter, username, password, client_address(request))
    except Throttled as e:
        resp = login_page(request, str(e), 429)
        resp.headers["Retry-After"] = str(e.retry_after)
        return resp
    except DomainError as e:
        return login_page(request, str(e), status_of(e))
    raw = auth.issue_token(db, user.id, "session", csrf=secrets.token_urlsafe(32))
    resp = see_other("/admin" if user.role == "admin" else "/label")
    resp.set_cookie(SESSION_COOKIE, raw, httponly=True, samesite="lax", secure=request.app.state.secure_cookies,
                    max_age=SESSION_DAYS * 86400, path="/")
    resp.delete_cookie(LOGIN_CSRF_COOKIE)
    return resp


@router.post("/logout")
def logout(user: CurrentUser, request: Request, db: SessionDep) -> RedirectResponse:
    auth.revoke_hash(db, user.token_hash)
    request.app.state.token_cache.drop(user.token_hash)
    resp = see_other("/login")
    resp.delete_cookie(SESSION_COOKIE, path="/")
    return resp


# ---------------------------------------------------------------- labeling


@router.get("/label")
def label_next(user: CurrentUser, request: Request, db: SessionDep, project_id: int | None = None) -> Response:
    task = request.app.state.queue.next_task(user.user_id, user.is_admin, project_id)
    if task is None:
        return render(request, "done.html", user, project_id=project_id)
    q = f"?project_id={project_id}" if project_id is not None else ""
    return see_other(f"/label/{task.task_id}{q}")


def _task_page(request: Request, db, user: Principal, task_id: int, project_id: int | None, error: str | None = None,
               status_code: int = 200) -> HTMLResponse:
    task = request.app.state.queue.get_task(task_id, user.user_id, user.is_admin)
    return render(request, "rank.html", user, task=task, csrf=user.csrf, idempotency_key=uuid.uuid4().hex, error=error,
                  project_id=project_id, status_code=status_code)


@router.get("/label/{task_id}")
def label_task(task_id: int, user: CurrentUser, request: Request, db: SessionDep, project_id: int | None = None) -> HTMLResponse:
    return _task_page(request, db, user, task_id, project_id)


@router.post("/label/{task_id}")
def label_submit(task_id: int, user: CurrentUser, request: Request, db: SessionDep, order: Annotated[str, Form()],
                 idempotency_key: Annotated[str, Form()], all_bad: Annotated[bool, Form()] = False,
                 unsafe: Annotated[bool, Form()] = False, rationale: Annotated[str, Form()] = "",
                 project_id: Annotated[str, Form()] = "") -> Response:
    pid = int(project_id) if project_id.isdigit() else None
    try:
        body = SubmitIn(order=json.loads(order), idempotency_key=idempotency_key, all_bad=all_bad, unsafe=unsafe,
                        rationale=rationale.strip() or None)
        request.app.state.queue.submit(task_id, user.user_id, body)
    except NotFound:
        raise
    except DomainError as e:
        return _task_page(request, db, user, task_id, pid, error=str(e), status_code=status_of(e))
    except (ValueError, TypeError) as e:
        return _task_page(request, db, user, task_id, pid, error=f"could not read the ranking: {e}", status_code=422)
    return see_other("/label" + (f"?project_id={pid}" if pid is not None else ""))


# ---------------------------------------------------------------- admin


@router.get("/admin")
def admin_home(user: AdminUser, request: Request, db: SessionDep, error: str | None = None) -> HTMLResponse:
    return render(request, "admin.html", user, projects=projects.list_projects(db), users=users.list_users(db), csrf=user.csrf,
                  error=error)


@router.post("/admin/projects")
def admin_create_project(user: AdminUser, request: Request, db: SessionDep, name: Annotated[str, Form()],
                         k: Annotated[int, Form()] = 4, mode: Annotated[str, Form()] = "ranking",
                         overlap: Annotated[int, Form()] = 1, gold_rate: Annotated[float, Form()] = 0.0,
                         instructions: Annotated[str, Form()] = "") -> Response:
    try:
        p = projects.create_project(db, parse(ProjectCreate, name=name, k=k, mode=mode, overlap=overlap, gold_rate=gold_rate,
                                              instructions=instructions))
    except DomainError as e:
        return admin_home(user, request, db, error=str(e))
    return see_other(f"/admin/projects/{p.id}")


@router.post("/admin/users")
def admin_create_user(user: AdminUser, request: Request, db: SessionDep, username: Annotated[str, Form()],
                      password: Annotated[str, Form()], role: Annotated[str, Form()] = "labeler") -> Response:
    try:
        users.create_user(db, parse(UserCreate, username=username, password=password, role=role))
    except DomainError as e:
        return admin_home(user, request, db, error=str(e))
    return see_other("/admin")


@router.get("/admin/projects/{project_id}")
def admin_project(project_id: int, user: AdminUser, request: Request, db: SessionDep, error: str | None = None,
                  notice: str | None = None) -> HTMLResponse:
    p = projects.get_project(db, project_id)
    return render(request, "project.html", user, project=p, progress=stats.progress(db, project_id),
                  agreement=stats.agreement(db, project_id), consensus=stats.consensus(db, project_id)[:50],
                  members=projects.list_members(db, project_id), csrf=user.csrf, error=error, notice=notice)


@router.post("/admin/projects/{project_id}/import")
async def admin_import(project_id: int, user: AdminUser, request: Request, db: SessionDep) -> Response:
    form = await request.form()
    cands, prompts = form.get("candidates"), form.get("prompts")
    try:
        if not isinstance(cands, UploadFile) or not cands.filename:
            raise Invalid("choose a candidates (or combined) JSONL file")
        crow = importer.parse_jsonl_bytes(await cands.read(), cands.filename)
        prow = (importer.parse_jsonl_bytes(await prompts.read(), prompts.filename)
                if isinstance(prompts, UploadFile) and prompts.filename else None)
        ps, cs, gold = importer.split_rows(crow, prow, cands.filename)
        out = importer.import_items(db, projects.get_project(db, project_id), ps, cs, gold)
    except NotFound:
        raise
    except DomainError as e:
        return admin_project(project_id, user, request, db, error=str(e))
    return admin_project(project_id, user, request, db,
                         notice=f"imported {out.prompts} new prompts, {out.candidates} candidates, {out.items} items "
                                f"({out.gold_items} gold)")


@router.post("/admin/projects/{project_id}/invite")
def admin_invite(project_id: int, user: AdminUser, request: Request, db: SessionDep, username: Annotated[str, Form()],
                 password: Annotated[str, Form()] = "") -> Response:
    projects.get_project(db, project_id)
    try:
        request.app.state.queue.forget(user_id=projects.invite(db, project_id, username, password or None).id)
    except DomainError as e:
        return admin_project(project_id, user, request, db, error=str(e))
    return see_other(f"/admin/projects/{project_id}")
