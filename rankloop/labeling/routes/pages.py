"""Server-rendered pages (Jinja2, autoescaped) over the same services as the REST API.

Every state-changing form carries the session's CSRF secret (checked in ``deps``); the login form,
which has no session yet, uses a double-submit cookie (``__Host-`` prefixed over HTTPS, so it
cannot be planted) and refuses posts that the browser says came from another site.

No page takes a message from its URL: a redirect after a form names a notice by code
(``?notice=token-revoked``), and the text is ours (``NOTICES``).
"""

from __future__ import annotations

import json
import secrets
import uuid
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.datastructures import UploadFile  # what request.form() gives (fastapi's is a subclass)

from rankloop.labeling import feedback, importer, stats
from rankloop.labeling.deps import (LOGIN_CSRF_COOKIE, SESSION_COOKIE, AdminUser, CurrentUser, OptionalUser, PathId, QueryId,
                                    SessionDep, client_address, cookie_name, status_of)
from rankloop.labeling.schemas import INSTRUCTGPT_LABELS, ProjectCreate, SubmitIn, UserCreate
from rankloop.labeling.security import SESSION_DAYS, Principal, same
from rankloop.labeling.services import Conflict, DomainError, Invalid, NotFound, Throttled, auth, parse, projects, users

router = APIRouter(include_in_schema=False)

NOTICES = {
    "user-created": "User created.",
    "token-revoked": "Token revoked.",
    "tokens-revoked": "Every session and token of that user is revoked.",
}
MAX_ORDER_CHARS = 64 * 1024  # the ranking form field: K ≤ 16 ids of ≤ 255 characters fit many times over
TOKENS_SHOWN = 200


def render(request: Request, name: str, user: Principal | None = None, status_code: int = 200, **ctx: Any) -> HTMLResponse:
    return request.app.state.templates.TemplateResponse(request, name, {"user": user, **ctx}, status_code=status_code)


def see_other(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


@router.get("/")
def home(user: OptionalUser) -> RedirectResponse:
    if user is None:
        return see_other("/login")
    return see_other("/admin" if user.is_admin else "/label")


# ---------------------------------------------------------------- logging in


def login_form(request: Request, error: str | None = None, status_code: int = 200) -> HTMLResponse:
    token = secrets.token_urlsafe(24)
    resp = render(request, "login.html", csrf=token, error=error, status_code=status_code)
    resp.set_cookie(cookie_name(request, LOGIN_CSRF_COOKIE), token, httponly=True, samesite="strict",
                    secure=request.app.state.secure_cookies, max_age=3600, path="/")
    return resp


@router.get("/login")
def login_page(request: Request) -> HTMLResponse:
    return login_form(request)


def from_this_site(request: Request) -> bool:
    """False when the browser says the form was posted from another site (login CSRF: a page
    elsewhere logging the victim in as the attacker). ``Sec-Fetch-Site`` where the browser sends
    it; else ``Origin`` against ``Host``; neither (an old client, a script): the double-submit
    cookie decides alone."""
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None:
        return fetch_site in ("same-origin", "none")
    origin = request.headers.get("origin")
    if origin is None:
        return True
    return origin != "null" and urlsplit(origin).netloc == request.headers.get("host", "")


@router.post("/login")
def login_submit(request: Request, db: SessionDep, username: Annotated[str, Form(max_length=64)],
                 password: Annotated[str, Form(max_length=1024)], csrf_token: Annotated[str, Form(max_length=256)] = "") -> Response:
    if not from_this_site(request):
        return login_form(request, "This login form was sent from another site; open the login page here and try again.", 403)
    if not same(csrf_token, request.cookies.get(cookie_name(request, LOGIN_CSRF_COOKIE))):
        return login_form(request, "The form expired; please try again.", 403)
    try:
        user = auth.authenticate(db, request.app.state.login_limiter, username, password, client_address(request))
    except Throttled as e:
        resp = login_form(request, str(e), 429)
        resp.headers["Retry-After"] = str(e.retry_after)
        return resp
    except DomainError as e:
        return login_form(request, str(e), status_of(e))
    raw, _ = auth.issue_token(db, user.id, "session", csrf=secrets.token_urlsafe(32))
    resp = see_other("/admin" if user.role == "admin" else "/label")
    resp.set_cookie(cookie_name(request, SESSION_COOKIE), raw, httponly=True, samesite="lax",
                    secure=request.app.state.secure_cookies, max_age=SESSION_DAYS * 86400, path="/")
    resp.delete_cookie(cookie_name(request, LOGIN_CSRF_COOKIE), path="/", secure=request.app.state.secure_cookies)
    return resp


@router.post("/logout")
def logout(user: CurrentUser, request: Request, db: SessionDep) -> RedirectResponse:
    auth.revoke_hash(db, user.token_hash)
    request.app.state.token_cache.drop(user.token_hash)
    resp = see_other("/login")
    resp.delete_cookie(cookie_name(request, SESSION_COOKIE), path="/", secure=request.app.state.secure_cookies)
    return resp


# ---------------------------------------------------------------- labeling


@router.get("/label")
def label_next(user: CurrentUser, request: Request, project_id: QueryId = None) -> Response:
    task = request.app.state.queue.next_task(user.user_id, user.is_admin, project_id)
    if task is None:
        return render(request, "done.html", user, project_id=project_id)
    q = f"?project_id={project_id}" if project_id is not None else ""
    return see_other(f"/label/{task.task_id}{q}")


def _task_page(request: Request, user: Principal, task_id: int, project_id: int | None, error: str | None = None,
               status_code: int = 200) -> HTMLResponse:
    task = request.app.state.queue.get_task(task_id, user.user_id, user.is_admin)
    return render(request, "rank.html", user, task=task, csrf=user.csrf, idempotency_key=uuid.uuid4().hex, error=error,
                  project_id=project_id, status_code=status_code)


@router.get("/label/{task_id}")
def label_task(task_id: PathId, user: CurrentUser, request: Request, project_id: QueryId = None) -> HTMLResponse:
    return _task_page(request, user, task_id, project_id)


def read_order(order: str) -> Any:
    """The ranking form field (JSON written by the page's script), or ``Invalid``."""
    if len(order) > MAX_ORDER_CHARS:
        raise Invalid(f"could not read the ranking: over {MAX_ORDER_CHARS} characters")
    try:
        return json.loads(order)
    except (ValueError, RecursionError):  # RecursionError: '[[[[…' nested too deep for the parser
        raise Invalid("could not read the ranking: it is not the list of candidate ids this page sends") from None


@router.post("/label/{task_id}")
def label_submit(task_id: PathId, user: CurrentUser, request: Request, order: Annotated[str, Form()],
                 idempotency_key: Annotated[str, Form()], all_bad: Annotated[bool, Form()] = False,
                 unsafe: Annotated[bool, Form()] = False, rationale: Annotated[str, Form()] = "",
                 project_id: Annotated[str, Form(max_length=12)] = "") -> Response:
    pid = int(project_id) if project_id.isdigit() and len(project_id) <= 10 else None
    try:
        body = parse(SubmitIn, order=read_order(order), idempotency_key=idempotency_key, all_bad=all_bad, unsafe=unsafe,
                     rationale=rationale.strip() or None)
        request.app.state.queue.submit(task_id, user.user_id, body)
    except NotFound:
        raise
    except Conflict:  # the page makes one key per render: this is a second answer to an answered task
        return _task_page(request, user, task_id, pid, status_code=409,
                          error="You already submitted this task; your first answer is kept. Go on to the next one.")
    except DomainError as e:
        return _task_page(request, user, task_id, pid, error=str(e), status_code=status_of(e))
    return see_other("/label" + (f"?project_id={pid}" if pid is not None else ""))


# ---------------------------------------------------------------- admin


def admin_page(request: Request, user: Principal, db: SessionDep, error: str | None = None, notice: str | None = None,
               status_code: int = 200) -> HTMLResponse:
    return render(request, "admin.html", user, projects=projects.list_projects(db), users=users.list_users(db),
                  tokens=auth.list_tokens(db, current_hash=user.token_hash, limit=TOKENS_SHOWN), csrf=user.csrf,
                  error=error, notice=notice, status_code=status_code, instructgpt_labels=INSTRUCTGPT_LABELS)


@router.get("/admin")
def admin_home(user: AdminUser, request: Request, db: SessionDep, notice: str | None = None) -> HTMLResponse:
    return admin_page(request, user, db, notice=NOTICES.get(notice or ""))


@router.post("/admin/projects")
def admin_create_project(user: AdminUser, request: Request, db: SessionDep, name: Annotated[str, Form()],
                         k: Annotated[int, Form()] = 4, mode: Annotated[str, Form()] = "ranking",
                         overlap: Annotated[int, Form()] = 1, gold_rate: Annotated[float, Form()] = 0.0,
                         instructions: Annotated[str, Form()] = "",
                         fb_strength_scale: Annotated[str, Form()] = "", fb_likert: Annotated[bool, Form()] = False,
                         fb_acceptability: Annotated[bool, Form()] = False, fb_comments: Annotated[bool, Form()] = False,
                         fb_labels: Annotated[str, Form()] = "") -> Response:
    try:
        fb = feedback.settings_from_form(fb_strength_scale, fb_likert, fb_acceptability, fb_comments, fb_labels)
        p = projects.create_project(db, parse(ProjectCreate, name=name, k=k, mode=mode, overlap=overlap, gold_rate=gold_rate,
                                              instructions=instructions, feedback=fb))
    except DomainError as e:
        return admin_page(request, user, db, error=str(e), status_code=status_of(e))
    return see_other(f"/admin/projects/{p.id}")


@router.post("/admin/users")
def admin_create_user(user: AdminUser, request: Request, db: SessionDep, username: Annotated[str, Form()],
                      password: Annotated[str, Form()], role: Annotated[str, Form()] = "labeler") -> Response:
    try:
        users.create_user(db, parse(UserCreate, username=username, password=password, role=role))
    except DomainError as e:
        return admin_page(request, user, db, error=str(e), status_code=status_of(e))
    return see_other("/admin?notice=user-created")


@router.post("/admin/tokens/{token_id}/revoke")
def admin_revoke_token(token_id: PathId, user: AdminUser, request: Request, db: SessionDep) -> Response:
    row = auth.revoke_token(db, token_id)
    request.app.state.token_cache.drop(row.token_hash)
    return see_other("/admin?notice=token-revoked")


@router.post("/admin/users/{user_id}/revoke-tokens")
def admin_revoke_user_tokens(user_id: PathId, user: AdminUser, request: Request, db: SessionDep) -> Response:
    users.get_user(db, user_id)
    auth.revoke_all(db, user_id)
    request.app.state.token_cache.drop(user_id=user_id)
    return see_other("/admin?notice=tokens-revoked")


def project_page(request: Request, user: Principal, db: SessionDep, project_id: int, error: str | None = None,
                 notice: str | None = None, status_code: int = 200) -> HTMLResponse:
    p = projects.get_project(db, project_id)
    return render(request, "project.html", user, project=p, progress=stats.progress(db, project_id),
                  agreement=stats.agreement(db, project_id), consensus=stats.consensus(db, project_id)[:50],
                  members=projects.list_members(db, project_id), csrf=user.csrf, error=error, notice=notice,
                  status_code=status_code)


@router.get("/admin/projects/{project_id}")
def admin_project(project_id: PathId, user: AdminUser, request: Request, db: SessionDep, notice: str | None = None) -> HTMLResponse:
    return project_page(request, user, db, project_id, notice=NOTICES.get(notice or ""))


@router.post("/admin/projects/{project_id}/import")
async def admin_import(project_id: PathId, user: AdminUser, request: Request, db: SessionDep) -> Response:
    projects.get_project(db, project_id)
    form = await request.form()
    cands, prompts = form.get("candidates"), form.get("prompts")
    try:
        if not isinstance(cands, UploadFile) or not cands.filename:
            raise Invalid("choose a candidates (or combined) JSONL file")
        crow = importer.parse_jsonl_bytes(await cands.read(), cands.filename)
        prow = (importer.parse_jsonl_bytes(await prompts.read(), prompts.filename)
                if isinstance(prompts, UploadFile) and prompts.filename else None)
        ps, cs, gold = importer.split_rows(crow, prow, cands.filename,
                                           prompts.filename if prow is not None else "prompts")
        out = importer.import_items(db, projects.get_project(db, project_id), ps, cs, gold)
    except DomainError as e:
        return project_page(request, user, db, project_id, error=str(e), status_code=status_of(e))
    return project_page(request, user, db, project_id,
                        notice=f"imported {out.prompts} new prompts, {out.candidates} candidates, {out.items} items "
                               f"({out.gold_items} gold)")


@router.post("/admin/projects/{project_id}/invite")
def admin_invite(project_id: PathId, user: AdminUser, request: Request, db: SessionDep, username: Annotated[str, Form()],
                 password: Annotated[str, Form()] = "") -> Response:
    projects.get_project(db, project_id)
    try:
        request.app.state.queue.forget(user_id=projects.invite(db, project_id, username, password or None).id)
    except DomainError as e:
        return project_page(request, user, db, project_id, error=str(e), status_code=status_of(e))
    return see_other(f"/admin/projects/{project_id}")
