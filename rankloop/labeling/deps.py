"""``Annotated`` dependencies (as in FastAPI's full-stack template): the database session, who is
asking, and whether they may."""

from __future__ import annotations

from datetime import datetime, timezone
from ipaddress import ip_address, ip_network
from typing import Annotated, AsyncIterator, Optional

from fastapi import Depends, HTTPException, Path, Query, Request
from sqlalchemy import select
from sqlalchemy.orm import Session

from rankloop.labeling.models import AuthToken, User, as_utc
from rankloop.labeling.security import Principal, same, token_hash
from rankloop.labeling.services.errors import Conflict, DomainError, Forbidden, Invalid, NotFound, Throttled, Unauthorized

SESSION_COOKIE = "rankloop_session"
LOGIN_CSRF_COOKIE = "rankloop_login_csrf"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


async def get_db(request: Request) -> AsyncIterator[Session]:
    db = request.app.state.sessionmaker()
    try:
        yield db
    finally:
        db.close()


SessionDep = Annotated[Session, Depends(get_db)]

# Ids are 32-bit INTEGER columns (PostgreSQL's); a larger number names nothing and would overflow
# the driver (SQLite raises OverflowError), so it is refused as a 422 where it is read.
MAX_ID = 2**31 - 1
PathId = Annotated[int, Path(ge=1, le=MAX_ID)]
QueryId = Annotated[Optional[int], Query(ge=1, le=MAX_ID)]


def cookie_name(request: Request, base: str) -> str:
    """``__Host-`` + name over HTTPS: a browser then accepts the cookie only from this host, over
    HTTPS, for path ``/`` — a sibling subdomain or a man in the middle on plain HTTP cannot plant
    one (which would defeat the login form's double-submit check)."""
    return ("__Host-" if request.app.state.secure_cookies else "") + base


def _within(address: str, networks: list) -> bool:
    try:
        ip = ip_address(address)
    except ValueError:
        return False
    return any(ip in n for n in networks)


def client_address(request: Request) -> str:
    """Who is connecting, for rate limits: the connection's peer, unless the peer is a trusted
    reverse proxy (``settings.trusted_proxies``); then the right-most ``X-Forwarded-For`` address
    that is not itself a trusted proxy (each proxy appends the address it saw; anything to the
    left of that was written by the client and proves nothing)."""
    peer = request.client.host if request.client else "unknown"
    trusted = request.app.state.trusted_proxies
    if not trusted or not _within(peer, trusted):
        return peer
    hops = [h.strip() for v in request.headers.getlist("x-forwarded-for") for h in v.split(",") if h.strip()]
    for hop in reversed(hops):
        if not _within(hop, trusted):
            return hop
    return hops[0] if hops else peer


def trusted_networks(proxies: list[str]) -> list:
    return [ip_network(p, strict=False) for p in proxies]


# How each domain error reads in HTTP (the one place that knows both).
DOMAIN_STATUS: dict[type[DomainError], int] = {
    Invalid: 422, NotFound: 404, Conflict: 409, Forbidden: 403, Unauthorized: 401, Throttled: 429,
}


def status_of(e: DomainError) -> int:
    for cls in type(e).__mro__:
        if cls in DOMAIN_STATUS:
            return DOMAIN_STATUS[cls]
    return 400


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


def page_user(request: Request) -> Principal | None:
    """The browser session's user, for pages rendered outside a route (error pages keep the
    navigation bar); no CSRF check, since nothing is changed."""
    cookie = request.cookies.get(cookie_name(request, SESSION_COOKIE))
    return lookup_token(request, cookie, kind="session") if cookie else None


async def optional_principal(request: Request) -> Principal | None:
    auth = request.headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return lookup_token(request, auth[7:].strip(), kind="api")
    cookie = request.cookies.get(cookie_name(request, SESSION_COOKIE))
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
