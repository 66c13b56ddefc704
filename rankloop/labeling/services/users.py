"""Accounts: create, look up, change (role, active, password)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from rankloop.labeling.db import writing
from rankloop.labeling.models import User
from rankloop.labeling.schemas import UserCreate, UserUpdate
from rankloop.labeling.security import hash_password
from rankloop.labeling.services.errors import Conflict, NotFound, brief


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
    with writing(db):
        user = get_user(db, user_id)
        if change.active is not None:
            user.active = change.active
        if change.role is not None:
            user.role = change.role
        if change.password is not None:
            user.password_hash = hash_password(change.password)
    return user
