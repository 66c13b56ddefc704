"""Logging in and the tokens that stand for a login (browser sessions and API tokens)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from rankloop.labeling.db import writing
from rankloop.labeling.models import AuthToken, User
from rankloop.labeling.security import SESSION_DAYS, LoginLimiter, new_token, token_hash, verify_password
from rankloop.labeling.services.errors import Throttled, Unauthorized


def authenticate(db: Session, limiter: LoginLimiter, username: str, password: str, address: str) -> User:
    """The active user with this password, under the login rate limit."""
    wait = limiter.retry_after(username, address)
    if wait:
        raise Throttled(f"too many failed logins; try again in {wait} s", retry_after=wait)
    user = db.execute(select(User).where(User.username == username)).scalar_one_or_none()
    if not verify_password(password, user.password_hash if user else None) or not user.active:
        limiter.failed(username, address)
        raise Unauthorized("wrong username or password")
    limiter.succeeded(username)
    return user


def issue_token(db: Session, user_id: int, kind: str, name: str | None = None, csrf: str | None = None,
                days: float | None = SESSION_DAYS) -> str:
    """A new secret for ``user_id``; only its SHA-256 is stored. Returns the secret."""
    raw = new_token()
    expires = datetime.now(timezone.utc) + timedelta(days=days) if days else None
    with writing(db):
        db.add(AuthToken(token_hash=token_hash(raw), user_id=user_id, kind=kind, name=name, csrf=csrf, expires_at=expires))
    return raw


def revoke_hash(db: Session, h: str) -> None:
    """End the session or token whose SHA-256 is ``h`` (logging out)."""
    with writing(db):
        db.execute(delete(AuthToken).where(AuthToken.token_hash == h))
