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

from rankloop.labeling import feedback, importer, judgements, stats
from rankloop.labeling.deps import (LOGIN_CSRF_COOKIE, SESSION_COOKIE, AdminUser, CurrentUser, OptionalUser, PathId, QueryId,
                                    SessionDep, client_address, cookie_name, status_of)
from rankloop.labeling.schemas import (INSTRUCTGPT_LABELS, MAX_SKIP_NOTE, MAX_TEXT, SKIP_REASONS, DemonstrationIn, PasswordChange,
                                       ProjectCreate, ReviewIn, SkipIn, SubmitIn, UserCreate)
from rankloop.labeling.security import SESSION_DAYS, Principal, same
from rankloop.labeling.services import (Conflict, DomainError, Invalid, NotFound, Throttled, auth, demonstrations, parse,
                                        projects, users)

router = APIRouter(include_in_schema=False)

NOTICES = {
    "user-created": "User created.",
    "token-revoked": "Token revoked.",
    "tokens-revoked": "Every session and token of that user is revoked.",
    "skipped": "Task skipped: it went back to the pool, and it will not be offered to you again.",
    "edited": "Correction saved: it replaces your earlier ranking (which is kept in the history).",
    "password-changed": "Password changed. Your other sessions and API tokens are logged out.",
    "demo-reviewed": "Review saved.",
    "settings-saved": "Settings saved (running app processes apply them within seconds).",  # lead tools
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
    return see_other({"admin": "/admin", "reviewer": "/review"}.get(user.role, "/label"))


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
    resp = see_other({"admin": "/admin", "reviewer": "/review"}.get(user.role, "/label"))
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
def label_next(user: CurrentUser, request: Request, db: SessionDep, project_id: QueryId = None,
               notice: str | None = None) -> Response:
    task = request.app.state.queue.next_task(user.user_id, user.is_admin, project_id)
    if task is None:
        from rankloop.labeling.services import qualification  # lead tools: say why, when it is a hold

        return render(request, "done.html", user, project_id=project_id, notice=NOTICES.get(notice or ""),
                      holds=qualification.holds(db, user.user_id, project_id))
    q = [f"project_id={project_id}"] if project_id is not None else []
    if notice in NOTICES:
        q.append(f"notice={notice}")
    return see_other(f"/label/{task.task_id}" + ("?" + "&".join(q) if q else ""))


def _task_page(request: Request, user: Principal, task_id: int, project_id: int | None, error: str | None = None,
               status_code: int = 200, notice: str | None = None) -> HTMLResponse:
    queue = request.app.state.queue
    task = queue.get_task(task_id, user.user_id, user.is_admin)
    if task.kind == "demonstration":
        # (the day's counter counts rankings; a demonstration page shows the skip form without it)
        return render(request, "demo.html", user, task=task, csrf=user.csrf, idempotency_key=uuid.uuid4().hex, error=error,
                      project_id=project_id, max_text=MAX_TEXT, status_code=status_code, notice=notice,
                      skip_reasons=SKIP_REASONS, max_skip_note=MAX_SKIP_NOTE)
    return render(request, "rank.html", user, task=task, csrf=user.csrf, idempotency_key=uuid.uuid4().hex, error=error,
                  project_id=project_id, status_code=status_code, notice=notice, **_day_context(queue, user, task.project_id))


# before /label/{task_id}, which would take "recent" for a task id
@router.get("/label/recent")
def label_recent(user: CurrentUser, request: Request, project_id: QueryId = None, notice: str | None = None) -> HTMLResponse:
    rows = request.app.state.queue.my_rankings(user.user_id, project_id, 50)
    return render(request, "recent.html", user, rows=rows, project_id=project_id, notice=NOTICES.get(notice or ""))


@router.get("/label/{task_id}")
def label_task(task_id: PathId, user: CurrentUser, request: Request, project_id: QueryId = None,
               notice: str | None = None) -> HTMLResponse:
    return _task_page(request, user, task_id, project_id, notice=NOTICES.get(notice or ""))


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


# ---------------------------------------------------------------- a labeler's day (issue 15 item 3)

# The ranking page's keys: card n is chosen with KEYS[n - 1] (K is at most 16).
KEYS = "1234567890ABCDEF"


def _day_context(queue: Any, user: Principal, project_id: int) -> dict[str, Any]:
    return {"keys": KEYS, "mine": queue.my_progress(user.user_id, user.is_admin, project_id), "skip_reasons": SKIP_REASONS,
            "max_skip_note": MAX_SKIP_NOTE}


def _pid(project_id: str) -> int | None:
    return int(project_id) if project_id.isdigit() and len(project_id) <= 10 else None


@router.post("/label/{task_id}/skip")
def label_skip(task_id: PathId, user: CurrentUser, request: Request, reason: Annotated[str, Form(max_length=256)],
               note: Annotated[str, Form(max_length=4 * MAX_SKIP_NOTE)] = "",
               project_id: Annotated[str, Form(max_length=12)] = "") -> Response:
    pid = _pid(project_id)
    try:
        request.app.state.queue.skip(task_id, user.user_id, parse(SkipIn, reason=reason, note=note.strip() or None))
    except NotFound:
        raise
    except DomainError as e:
        return _task_page(request, user, task_id, pid, error=str(e), status_code=status_of(e))
    return see_other("/label?" + (f"project_id={pid}&" if pid is not None else "") + "notice=skipped")


def _edit_page(request: Request, user: Principal, ranking_id: int, error: str | None = None,
               status_code: int = 200) -> HTMLResponse:
    task, order, row, until = request.app.state.queue.editable(ranking_id, user.user_id)
    edit = {"ranking_id": ranking_id, "order_json": json.dumps(order), "all_bad": bool(row[9]), "unsafe": bool(row[10]),
            "rationale": row[11] or "", "until_text": until.strftime("%Y-%m-%d %H:%M:%S")}
    return render(request, "rank.html", user, task=task, csrf=user.csrf, idempotency_key=uuid.uuid4().hex, error=error,
                  project_id=task.project_id, status_code=status_code, edit=edit, keys=KEYS, mine=None,
                  skip_reasons=SKIP_REASONS, max_skip_note=MAX_SKIP_NOTE)


@router.get("/label/edit/{ranking_id}")
def label_edit(ranking_id: PathId, user: CurrentUser, request: Request) -> Response:
    try:
        return _edit_page(request, user, ranking_id)
    except Conflict as e:  # corrected already, or the window closed: say so on the list
        rows = request.app.state.queue.my_rankings(user.user_id, None, 50)
        return render(request, "recent.html", user, rows=rows, project_id=None, error=str(e), status_code=409)


@router.post("/label/edit/{ranking_id}")
def label_edit_submit(ranking_id: PathId, user: CurrentUser, request: Request, order: Annotated[str, Form()],
                      idempotency_key: Annotated[str, Form()], all_bad: Annotated[bool, Form()] = False,
                      unsafe: Annotated[bool, Form()] = False, rationale: Annotated[str, Form()] = "") -> Response:
    """The edit page's form without its script (the script sends the same to the API)."""
    try:
        body = parse(SubmitIn, order=read_order(order), idempotency_key=idempotency_key, all_bad=all_bad, unsafe=unsafe,
                     rationale=rationale.strip() or None)
        request.app.state.queue.edit(ranking_id, user.user_id, body)
    except NotFound:
        raise
    except Conflict as e:
        rows = request.app.state.queue.my_rankings(user.user_id, None, 50)
        return render(request, "recent.html", user, rows=rows, project_id=None, error=str(e), status_code=409)
    except DomainError as e:
        return _edit_page(request, user, ranking_id, error=str(e), status_code=status_of(e))
    return see_other("/label/recent?notice=edited")


@router.get("/account/password")
def password_page(user: CurrentUser, request: Request) -> HTMLResponse:
    return render(request, "password.html", user, csrf=user.csrf)


@router.post("/account/password")
def password_submit(user: CurrentUser, request: Request, db: SessionDep,
                    current_password: Annotated[str, Form(max_length=1024)],
                    new_password: Annotated[str, Form(max_length=1024)],
                    new_password_again: Annotated[str, Form(max_length=1024)]) -> Response:
    try:
        if new_password != new_password_again:
            raise Invalid("the two new passwords differ; type the same one twice")
        users.change_own_password(db, request.app.state.login_limiter, user, client_address(request),
                                  parse(PasswordChange, current_password=current_password, new_password=new_password))
    except DomainError as e:
        return render(request, "password.html", user, csrf=user.csrf, error=str(e), status_code=status_of(e))
    request.app.state.token_cache.drop(user_id=user.user_id)
    return render(request, "password.html", user, csrf=user.csrf, notice=NOTICES["password-changed"])


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
                 notice: str | None = None, status_code: int = 200, **extra: Any) -> HTMLResponse:
    from rankloop.labeling.services import invites, review  # lead tools

    p = projects.get_project(db, project_id)
    return render(request, "project.html", user, project=p, progress=stats.progress(db, project_id),
                  agreement=stats.agreement(db, project_id), consensus=stats.consensus(db, project_id)[:50],
                  members=projects.list_members(db, project_id), csrf=user.csrf, error=error, notice=notice,
                  invites=invites.list_invites(db, project_id)[:50], review_queue=len(review.queue(db, p)),
                  status_code=status_code,
                  demo_counts=demonstrations.review_counts(db, project_id) if p.mode == "demonstration" else None,
                  **extra)


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
        project = projects.get_project(db, project_id)
        ps, cs, gold = importer.split_rows(crow, prow, cands.filename, prompts.filename if prow is not None else "prompts",
                                           drafts_optional=project.mode == "demonstration")
        out = importer.import_items(db, project, ps, cs, gold)
    except DomainError as e:
        return project_page(request, user, db, project_id, error=str(e), status_code=status_of(e))
    return project_page(request, user, db, project_id,
                        notice=f"imported {out.prompts} new prompts, {out.candidates} candidates, {out.items} items "
                               f"({out.gold_items} gold)")


@router.post("/admin/projects/{project_id}/import-judgements")
async def admin_import_judgements(project_id: PathId, user: AdminUser, request: Request, db: SessionDep) -> Response:
    """The project page's upload of judgements made elsewhere (``judgements.import_judgements``)."""
    p = projects.get_project(db, project_id)
    form = await request.form()
    f = form.get("file")
    fmt, prefix = str(form.get("format") or "auto"), str(form.get("rater_prefix") or "")
    try:
        if not isinstance(f, UploadFile) or not f.filename:
            raise Invalid("choose a JSONL file of judgements")
        if fmt not in ("auto", *judgements.FORMATS):
            raise Invalid(f"unknown format; choose one of auto, {', '.join(judgements.FORMATS)}")
        if len(prefix) > 32:
            raise Invalid("the rater prefix is over 32 characters")
        out = judgements.import_judgements(db, p, await f.read(), f.filename, fmt,  # type: ignore[arg-type]
                                           rater_prefix=prefix, skip_invalid=form.get("skip_invalid") == "on",
                                           open_slots=form.get("open_slots") == "on")
    except DomainError as e:
        return project_page(request, user, db, project_id, error=str(e), status_code=status_of(e))
    request.app.state.queue.forget(project_id=project_id)
    skipped = f"; skipped {out.skipped} bad rows ({'; '.join(out.errors[:3])})" if out.skipped else ""
    return project_page(request, user, db, project_id,
                        notice=f"imported {out.judgements} judgements by {out.raters} raters ({out.raters_new} new) on "
                               f"{out.items_judged} items ({out.items} new), {out.repeats} repeats{skipped}")


@router.post("/admin/projects/{project_id}/invite")
def admin_invite(project_id: PathId, user: AdminUser, request: Request, db: SessionDep, username: Annotated[str, Form()],
                 password: Annotated[str, Form()] = "") -> Response:
    projects.get_project(db, project_id)
    try:
        request.app.state.queue.forget(user_id=projects.invite(db, project_id, username, password or None).id)
    except DomainError as e:
        return project_page(request, user, db, project_id, error=str(e), status_code=status_of(e))
    return see_other(f"/admin/projects/{project_id}")


# ---------------------------------------------------------------- demonstrations (issue 12 item 1)
# The task page (demo.html) sends its work with fetch to the REST API (so an error keeps the text);
# this form route is its fallback without JavaScript. Review is admins' and server-rendered.

REVIEW_FILTERS = ("pending", "accepted", "rejected")


@router.post("/label/{task_id}/demonstration")
def demo_submit(task_id: PathId, user: CurrentUser, request: Request, db: SessionDep, response: Annotated[str, Form()] = "",
                edited_from: Annotated[str, Form(max_length=255)] = "", idempotency_key: Annotated[str, Form()] = "",
                project_id: Annotated[str, Form(max_length=12)] = "") -> Response:
    pid = int(project_id) if project_id.isdigit() and len(project_id) <= 10 else None
    try:
        # a browser sends a textarea's line breaks as CRLF; the page's script (and the API) send LF
        body = parse(DemonstrationIn, response=response.replace("\r\n", "\n"), edited_from=edited_from or None, idempotency_key=idempotency_key)
        demonstrations.submit(db, task_id, user.user_id, body)
    except NotFound:
        raise
    except DomainError as e:
        return _task_page(request, user, task_id, pid, error=str(e), status_code=status_of(e))
    return see_other("/label" + (f"?project_id={pid}" if pid is not None else ""))


def review_page(request: Request, user: Principal, db: SessionDep, project_id: int, review: str | None,
                error: str | None = None, notice: str | None = None, status_code: int = 200) -> HTMLResponse:
    p = projects.get_project(db, project_id)
    shown = review if review in REVIEW_FILTERS else None
    return render(request, "demo_review.html", user, project=p, demos=demonstrations.list_demonstrations(db, project_id, shown),
                  review=shown, filters=REVIEW_FILTERS, csrf=user.csrf, error=error, notice=notice, max_text=MAX_TEXT,
                  status_code=status_code)


@router.get("/admin/projects/{project_id}/demonstrations")
def admin_demonstrations(project_id: PathId, user: AdminUser, request: Request, db: SessionDep, review: str | None = None,
                         notice: str | None = None) -> HTMLResponse:
    return review_page(request, user, db, project_id, review, notice=NOTICES.get(notice or ""))


@router.post("/admin/demonstrations/{demo_id}/review")
def admin_review(demo_id: PathId, user: AdminUser, request: Request, db: SessionDep, verdict: Annotated[str, Form()],
                 text: Annotated[str, Form()] = "", project_id: Annotated[int, Form()] = 0,
                 review: Annotated[str, Form(max_length=16)] = "") -> Response:
    back = review if review in REVIEW_FILTERS else None
    try:
        # a rejection ignores the text box (it holds the response, prefilled for an edit)
        body = parse(ReviewIn, verdict=verdict, text=text.replace("\r\n", "\n") if verdict == "accepted" else None)
        out = demonstrations.review(db, demo_id, user.user_id, body)
    except NotFound:
        raise
    except DomainError as e:
        if not project_id:
            raise
        return review_page(request, user, db, project_id, back, error=f"demonstration {demo_id}: {e}", status_code=status_of(e))
    q = "?notice=demo-reviewed" + (f"&review={back}" if back else "")
    return see_other(f"/admin/projects/{out.project_id}/demonstrations{q}#d{demo_id}")
