"""Logging in (tokens for scripts) and API tokens."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from fastapi import APIRouter, HTTPException, Request
from sqlalchemy import delete, select

from rankloop.labeling.db import writing
from rankloop.labeling.deps import CurrentUser, SessionDep
from rankloop.labeling.models import AuthToken, User
from rankloop.labeling.schemas import LoginIn, Message, TokenCreate, TokenOut, UserOut
from rankloop.labeling.security import SESSION_DAYS, new_token, token_hash, verify_password

router = APIRouter(prefix="/api/auth", tags=["auth"])


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def authenticate(request: Request, db: SessionDep, username: str, password: str) -> User:
    """Check a password under the login rate limit; 429 when over it, 401 when wrong."""
    limiter = request.app.state.login_limiter
    addr = client_address(request)
    wait = limiter.retry_after(username, addr)
    if wait:
        raise HTTPException(429, f"too many failed logins; try again in {wait} s", headers={"Retry-After": str(wait)})
    user = db.execute(select(User).where(User.username == username)).scalar_one_or_none()
    if not verify_password(password, user.password_hash if user else None) or not user.active:
        limiter.failed(username, addr)
        raise HTTPException(401, "wrong username or password")
    limiter.succeeded(username)
    return user


def issue_token(db: SessionDep, user_id: int, kind: str, name: str | None = None, csrf: str | None = None,
                days: float | None = SESSION_DAYS) -> str:
    raw = new_token()
    expires = datetime.now(timezone.utc) + timedelta(days=days) if days else None
    with writing(db):
        db.add(AuthToken(token_hash=token_hash(raw), user_id=user_id, kind=kind, name=name, csrf=csrf, expires_at=expires))
    return raw


@router.post("/login", response_model=TokenOut, summary="Exchange a username and password for a bearer token")
def login(body: LoginIn, request: Request, db: SessionDep) -> TokenOut:
    user = authenticate(request, db, body.username, body.password)
    raw = issue_token(db, user.id, "api", name="login")
    return TokenOut(token=raw, user=UserOut.model_validate(user))


@router.get("/me", response_model=UserOut)
def me(user: CurrentUser, db: SessionDep) -> UserOut:
    return UserOut.model_validate(db.get(User, user.user_id))


@router.post("/tokens", response_model=TokenOut, summary="A long-lived API token for scripts (no expiry)")
def create_token(body: TokenCreate, user: CurrentUser, db: SessionDep) -> TokenOut:
    raw = issue_token(db, user.user_id, "api", name=body.name, days=None)
    return TokenOut(token=raw, user=UserOut.model_validate(db.get(User, user.user_id)))


@router.post("/logout", response_model=Message, summary="Revoke the token (or session) this request used")
def logout(user: CurrentUser, request: Request, db: SessionDep) -> Message:
    with writing(db):
        db.execute(delete(AuthToken).where(AuthToken.token_hash == user.token_hash))
    request.app.state.token_cache.drop(user.token_hash)
    return Message(detail="logged out")
