"""Invite links: admins make and list them (API and the project page); whoever holds one opens
``/invite/<secret>``, chooses a username (unless preset) and a password, and is logged in.

The invite page has no session yet, so its form is protected as the login form is: a double-submit
cookie and the browser's ``Sec-Fetch-Site``/``Origin`` (``pages.from_this_site``)."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import APIRouter, Form, Path, Request
from fastapi.responses import HTMLResponse, Response

from rankloop.labeling.deps import LOGIN_CSRF_COOKIE, SESSION_COOKIE, AdminUser, PathId, SessionDep, cookie_name, status_of
from rankloop.labeling.models import User
from rankloop.labeling.routes.pages import render, see_other
from rankloop.labeling.schemas import InviteAccept, InviteCreate, InviteCreated, InviteOut, TokenOut, UserOut
from rankloop.labeling.security import SESSION_DAYS, same
from rankloop.labeling.services import DomainError, Invalid, auth, invites, parse, projects

router = APIRouter(tags=["invites"])
pages = APIRouter(include_in_schema=False)

Secret = Annotated[str, Path(min_length=1, max_length=128)]


@router.post("/api/projects/{project_id}/invites", response_model=InviteCreated, status_code=201,
             summary="A one-time invite link (the secret is in this answer only)")
def create_invite(project_id: PathId, body: InviteCreate, me: AdminUser, db: SessionDep) -> InviteCreated:
    return invites.create_invite(db, projects.get_project(db, project_id), body, me.user_id)


@router.get("/api/projects/{project_id}/invites", response_model=list[InviteOut], summary="Invites (never their secrets)")
def list_invites(project_id: PathId, _: AdminUser, db: SessionDep) -> list[InviteOut]:
    projects.get_project(db, project_id)
    return invites.list_invites(db, project_id)


@router.delete("/api/projects/{project_id}/invites/{invite_id}", status_code=204, summary="Make an unused link stop working")
def revoke_invite(project_id: PathId, invite_id: PathId, _: AdminUser, db: SessionDep) -> Response:
    invites.revoke_invite(db, project_id, invite_id)
    return Response(status_code=204)


@router.post("/api/invites/{secret}/accept", response_model=TokenOut,
             summary="Use an invite: make the account, join the project, get a token")
def accept_invite(secret: Secret, body: InviteAccept, db: SessionDep) -> TokenOut:
    user = invites.accept(db, secret, body.username, body.password)
    raw, row = auth.issue_token(db, user.id, "api", name="invite")
    return TokenOut(token=raw, id=row.id, expires_at=row.expires_at, user=UserOut.model_validate(user))


# ---------------------------------------------------------------- the invitee's page


def invite_form(request: Request, db: SessionDep, secret: str, error: str | None = None, status_code: int = 200,
                username: str = "") -> HTMLResponse:
    try:
        inv = invites.find_open(db, secret)
    except invites.InviteUnusable as e:
        return render(request, "invite.html", None, unusable=str(e), status_code=410)
    token = secrets.token_urlsafe(24)
    project = projects.get_project(db, inv.project_id)
    resp = render(request, "invite.html", None, invite=inv, project=project, csrf=token, error=error,
                  username=inv.username or username, status_code=status_code)
    resp.set_cookie(cookie_name(request, LOGIN_CSRF_COOKIE), token, httponly=True, samesite="strict",
                    secure=request.app.state.secure_cookies, max_age=3600, path="/")
    return resp


@pages.get("/invite/{secret}")
def invite_page(secret: Secret, request: Request, db: SessionDep) -> HTMLResponse:
    return invite_form(request, db, secret)


@pages.post("/invite/{secret}")
def invite_submit(secret: Secret, request: Request, db: SessionDep, password: Annotated[str, Form(max_length=1024)],
                  password2: Annotated[str, Form(max_length=1024)], username: Annotated[str, Form(max_length=64)] = "",
                  csrf_token: Annotated[str, Form(max_length=256)] = "") -> Response:
    from rankloop.labeling.routes.pages import from_this_site

    if not from_this_site(request) or not same(csrf_token, request.cookies.get(cookie_name(request, LOGIN_CSRF_COOKIE))):
        return invite_form(request, db, secret, "The form expired or came from another site; please try again.", 403, username)
    if password != password2:
        return invite_form(request, db, secret, "The two passwords differ.", 422, username)
    try:
        body = parse(InviteAccept, username=username.strip() or None, password=password)
        user = invites.accept(db, secret, body.username, body.password)
    except invites.InviteUnusable as e:
        return render(request, "invite.html", None, unusable=str(e), status_code=410)
    except DomainError as e:
        return invite_form(request, db, secret, str(e), status_of(e), username)
    raw, _ = auth.issue_token(db, user.id, "session", csrf=secrets.token_urlsafe(32))
    resp = see_other(landing(user))
    resp.set_cookie(cookie_name(request, SESSION_COOKIE), raw, httponly=True, samesite="lax",
                    secure=request.app.state.secure_cookies, max_age=SESSION_DAYS * 86400, path="/")
    resp.delete_cookie(cookie_name(request, LOGIN_CSRF_COOKIE), path="/", secure=request.app.state.secure_cookies)
    return resp


def landing(user: User) -> str:
    return {"admin": "/admin", "reviewer": "/review"}.get(user.role, "/label")


# ---------------------------------------------------------------- the admin's form (project page)


@pages.post("/admin/projects/{project_id}/invite-links")
def admin_create_invite(project_id: PathId, user: AdminUser, request: Request, db: SessionDep,
                        role: Annotated[str, Form(max_length=16)] = "labeler", days: Annotated[str, Form(max_length=12)] = "7",
                        username: Annotated[str, Form(max_length=64)] = "") -> Response:
    from rankloop.labeling.routes.pages import project_page

    p = projects.get_project(db, project_id)
    try:
        try:
            d = float(days)
        except ValueError:
            raise Invalid(f"days: not a number ({days[:20]!r})") from None
        made = invites.create_invite(db, p, parse(InviteCreate, role=role, days=d, username=username.strip() or None),
                                     user.user_id)
    except DomainError as e:
        return project_page(request, user, db, project_id, error=str(e), status_code=status_of(e))
    link = str(request.base_url).rstrip("/") + made.path
    return project_page(request, user, db, project_id, new_invite=made, new_invite_link=link,
                        notice="Invite link made. Copy it now: it is shown only once.")
