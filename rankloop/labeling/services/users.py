"""Accounts: create, look up, change (role, active, password)."""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from rankloop.labeling.db import writing
from rankloop.labeling.models import AuthToken, User
from rankloop.labeling.schemas import PasswordChange, UserCreate, UserUpdate
from rankloop.labeling.security import LoginLimiter, Principal, hash_password, verify_password
from rankloop.labeling.services.errors import Conflict, Invalid, NotFound, Throttled, brief


def list_users(db: Session) -> list[User]:
    return list(db.execute(select(User).order_by(User.id)).scalars())


def get_user(db: Session, user_id: int) -> User:
    user = db.get(User, user_id)
    if user is None:
        raise NotFound(f"user {user_id} not found")
    return user


def find_user(db: Session, username: str) -> User | None:
    return db.execute(select(User).where(User.username == username)).scalar_one_or_none()


def create_user(db: Session, new: UserCreate) -> User:
    user = User(username=new.username, password_hash=hash_password(new.password), role=new.role, active=True)
    try:
        with writing(db):
            db.add(user)
    except IntegrityError:
        raise Conflict(f"user {brief(new.username)} already exists") from None
    return user


def update_user(db: Session, user_id: int, change: UserUpdate) -> User:
    """Change role, active or password. A new password or a deactivation ends every session and
    token of the user (re-activating brings none back). The last active admin cannot be demoted
    or deactivated: nobody could administer the app after that."""
    with writing(db):
        user = get_user(db, user_id)
        demoted = (change.role is not None and change.role != "admin") or change.active is False
        if demoted and user.role == "admin" and user.active:
            # FOR UPDATE (PostgreSQL): two admins demoting each other at once queue here; SQLite's
            # writers are serialised already.
            admins = db.execute(select(User.id).where(User.role == "admin", User.active.is_(True)).with_for_update()).all()
            if len(admins) <= 1:
                raise Conflict(f"{brief(user.username)} is the last active admin: make another admin first")
        if change.active is not None:
            user.active = change.active
        if change.role is not None:
            user.role = change.role
        if change.password is not None:
            user.password_hash = hash_password(change.password)
        if change.password is not None or change.active is False:
            db.execute(delete(AuthToken).where(AuthToken.user_id == user_id))
    return user


# ---------------------------------------------------------------- one's own password (issue 15 item 3)


def change_own_password(db: Session, limiter: LoginLimiter, who: Principal, address: str, change: PasswordChange) -> User:
    """A user changes their own password: the current one is required (and counted like a login
    attempt, so this is no way around the login rate limit); every other session and token of
    theirs ends, the one in use stays."""
    wait = limiter.retry_after(who.username, address)
    if wait:
        raise Throttled(f"too many wrong passwords; try again in {wait} s", retry_after=wait)
    with writing(db):
        user = get_user(db, who.user_id)
        if not verify_password(change.current_password, user.password_hash):
            limiter.failed(who.username, address)
            raise Invalid("the current password is wrong")
        if change.new_password == change.current_password:
            raise Invalid("the new password is the current one; choose another")
        limiter.succeeded(who.username, address)
        user.password_hash = hash_password(change.new_password)
        db.execute(delete(AuthToken).where(AuthToken.user_id == user.id, AuthToken.token_hash != who.token_hash))
    return user
