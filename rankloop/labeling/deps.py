"""``Annotated`` dependencies (as in FastAPI's full-stack template): the database session, who is
asking, and whether they may."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, AsyncIterator

from fastapi import Depends, HTTPException, Request
from sqlalchemy import select
from sqlalchemy.orm import Session

from rankloop.labeling.models import AuthToken, User
from rankloop.labeling.security import Principal, same, token_hash
from rankloop.labeling.services.errors import Conflict, DomainError, Forbidden, Invalid, NotFound, Throttled, Unauthorized

SESSION_COOKIE = "rankloop_session"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


async def get_db(request: Request) -> AsyncIterator[Session]:
    db = request.app.state.sessionmaker()
    try:
        yield db
    finally:
        db.close()


SessionDep = Annotated[Session, Depends(get_db)]

# How each domain error reads in HTTP (the one place that knows both).
DOMAIN_STATUS: dict[type[DomainError], int] = {
    Invalid: 422, NotFound: 404, Conflict: 409, Forbidden: 403, Unauthorized: 401, Throttled: 429,
}


def status_of(e: DomainError) -> int:
    for cls in type(e).__mro__:
        if cls in DOMAIN_STATUS:
            return DOMAIN_STATUS[cls]
    return 400


def as_utc(dt: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    if dt is not None and dt.tzinfo is None:
        return dt.replace(tzinfo=timezone.utc)
    return dt


def lookup_token(request: Request, raw: str, kind: str | None = None) -> Principal | None:
    """One indexed lookup of the token's SHA-256, memoised (see ``security.TokenCache``)."""
    h = token_hash(raw)
    cache = request.app.state.token_cache
    p = cache.get(h)
    if p is None:
        with request.app.state.sessionmaker() as db:
            row = db.execute(
                select(AuthToken.kind, AuthToken.csrf, AuthToken.expires_at, User.id, User.username, User.role, User.active)
                .join(User, User.id == AuthToken.user_id)
                .where(AuthToken.token_hash == h)
            ).first()
        if row is None or not row.active:
            return None
        expires = as_utc(row.expires_at)
        if expires is not None and expires <= datetime.now(timezone.utc):
            return None
        p = Principal(user_id=row.id, username=row.username, role=row.role, via=row.kind, csrf=row.csrf, token_hash=h)
        cache.put(h, p, expires.timestamp() if expires else None)
    if kind is not None and p.via != kind:
        return None
    return p


async def optional_principal(request: Request) -> Principal | None:
    auth = request.headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return lookup_token(request, auth[7:].strip(), kind="api")
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        p = lookup_token(request, cookie, kind="session")
        if p is not None and request.method not in SAFE_METHODS:
            # A cookie is sent by the browser on its own, so a state change must prove it came
            # from our page: the session's CSRF secret in a header (scripts) or a form field.
            sent = request.headers.get(CSRF_HEADER)
            if sent is None and request.headers.get("content-type", "").startswith(
                ("application/x-www-form-urlencoded", "multipart/form-data")
            ):
                sent = (await request.form()).get("csrf_token")  # cached: the route reads it again
            if not same(sent if isinstance(sent, str) else None, p.csrf):
                raise HTTPException(403, "CSRF check failed: missing or wrong CSRF token")
        return p
    return None


OptionalUser = Annotated[Principal | None, Depends(optional_principal)]


async def current_principal(p: OptionalUser) -> Principal:
    if p is None:
        raise HTTPException(401, "not logged in (send a session cookie or 'Authorization: Bearer <token>')",
                            headers={"WWW-Authenticate": "Bearer"})
    return p


CurrentUser = Annotated[Principal, Depends(current_principal)]


async def admin_principal(p: CurrentUser) -> Principal:
    if not p.is_admin:
        raise HTTPException(403, "admins only")
    return p


AdminUser = Annotated[Principal, Depends(admin_principal)]
