"""Users (admins only): create labelers and admins, deactivate, reset passwords."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from rankloop.labeling.db import writing
from rankloop.labeling.deps import AdminUser, SessionDep
from rankloop.labeling.models import User
from rankloop.labeling.schemas import UserCreate, UserOut, UserUpdate
from rankloop.labeling.security import hash_password

router = APIRouter(prefix="/api/users", tags=["users"])


def create_user(db: SessionDep, username: str, password: str, role: str) -> User:
    user = User(username=username, password_hash=hash_password(password), role=role, active=True)
    try:
        with writing(db):
            db.add(user)
    except IntegrityError:
        raise HTTPException(409, f"user {username!r} already exists") from None
    return user


@router.get("", response_model=list[UserOut])
def list_users(_: AdminUser, db: SessionDep) -> list[User]:
    return list(db.execute(select(User).order_by(User.id)).scalars())


@router.post("", response_model=UserOut, status_code=201)
def add_user(body: UserCreate, _: AdminUser, db: SessionDep) -> User:
    return create_user(db, body.username, body.password, body.role)


@router.patch("/{user_id}", response_model=UserOut)
def update_user(user_id: int, body: UserUpdate, _: AdminUser, db: SessionDep, request: Request) -> User:
    with writing(db):
        user = db.get(User, user_id)
        if user is None:
            raise HTTPException(404, f"user {user_id} not found")
        if body.active is not None:
            user.active = body.active
        if body.role is not None:
            user.role = body.role
        if body.password is not None:
            user.password_hash = hash_password(body.password)
    request.app.state.token_cache.drop(user_id=user_id)
    return user
