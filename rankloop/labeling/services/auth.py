"""Logging in and the tokens that stand for a login (browser sessions and API tokens)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from rankloop.labeling.db import writing
from rankloop.labeling.models import AuthToken, User, as_utc
from rankloop.labeling.schemas import TokenInfo
from rankloop.labeling.security import SESSION_DAYS, LoginLimiter, new_token, token_hash, verify_password
from rankloop.labeling.services.errors import Invalid, NotFound, Throttled, Unauthorized


def authenticate(db: Session, limiter: LoginLimiter, username: str, password: str, address: str) -> User:
    """The active user with this password, under the login rate limit."""
    wait = limiter.retry_after(username, address)
    if wait:
        raise Throttled(f"too many failed logins; try again in {wait} s", retry_after=wait)
    user = db.execute(select(User).where(User.username == username)).scalar_one_or_none()
    if not verify_password(password, user.password_hash if user else None) or not user.active:
        limiter.failed(username, address)
        raise Unauthorized("wrong username or password")
    limiter.succeeded(username, address)
    return user


def issue_token(db: Session, user_id: int, kind: str, name: str | None = None, csrf: str | None = None,
                days: float = SESSION_DAYS) -> tuple[str, AuthToken]:
    """A new secret for ``user_id``, valid for ``days``; only its SHA-256 is stored. Returns the
    secret and the stored row."""
    raw, now = new_token(), datetime.now(timezone.utc)
    row = AuthToken(token_hash=token_hash(raw), user_id=user_id, kind=kind, name=name, csrf=csrf,
                    expires_at=now + timedelta(days=days))
    with writing(db):
        # Every login makes a row; the expired ones go here (an indexed range delete), so the
        # table holds at most the live ones.
        db.execute(delete(AuthToken).where(AuthToken.expires_at < now))
        db.add(row)
    return raw, row


def script_token(db: Session, user_id: int, name: str, days: float | None, default_days: float,
                 max_days: float) -> tuple[str, AuthToken]:
    """A token for scripts: ``days`` (default ``default_days``), at most ``max_days``."""
    if days is not None and days > max_days:
        raise Invalid(f"a token may live at most {max_days:g} days (asked for {days:g})")
    return issue_token(db, user_id, "api", name=name, days=days or default_days)


def list_tokens(db: Session, user_id: int | None = None, current_hash: str = "", limit: int | None = None) -> list[TokenInfo]:
    """Unexpired sessions and tokens, oldest first: one user's, or everyone's (newest ``limit``)."""
    q = (select(AuthToken, User.username).join(User, User.id == AuthToken.user_id)
         .where(AuthToken.expires_at > datetime.now(timezone.utc)))
    if user_id is not None:
        q = q.where(AuthToken.user_id == user_id)
    if limit is not None:
        q = q.order_by(AuthToken.id.desc()).limit(limit)
    rows = sorted(db.execute(q).all(), key=lambda r: r[0].id)
    return [TokenInfo(id=t.id, user_id=t.user_id, username=name, kind=t.kind, name=t.name, created_at=as_utc(t.created_at),
                      expires_at=as_utc(t.expires_at), current=t.token_hash == current_hash) for t, name in rows]


def revoke_token(db: Session, token_id: int, user_id: int | None = None) -> AuthToken:
    """End one session or token (``user_id``: only if it is theirs). Returns the deleted row."""
    with writing(db):
        row = db.get(AuthToken, token_id)
        if row is None or (user_id is not None and row.user_id != user_id):
            raise NotFound(f"token {token_id} not found" + (" among yours" if user_id is not None else ""))
        db.delete(row)
    return row


def revoke_all(db: Session, user_id: int) -> int:
    """End every session and token of ``user_id``; returns how many."""
    with writing(db):
        return db.execute(delete(AuthToken).where(AuthToken.user_id == user_id)).rowcount


def revoke_hash(db: Session, h: str) -> None:
    """End the session or token whose SHA-256 is ``h`` (logging out)."""
    with writing(db):
        db.execute(delete(AuthToken).where(AuthToken.token_hash == h))
