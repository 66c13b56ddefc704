"""Users (admins only): create labelers and admins, deactivate, reset passwords."""

from __future__ import annotations

from fastapi import APIRouter, Request

from rankloop.labeling.deps import AdminUser, SessionDep
from rankloop.labeling.models import User
from rankloop.labeling.schemas import UserCreate, UserOut, UserUpdate
from rankloop.labeling.services import users

router = APIRouter(prefix="/api/users", tags=["users"])


@router.get("", response_model=list[UserOut])
def list_users(_: AdminUser, db: SessionDep) -> list[User]:
    return users.list_users(db)


@router.post("", response_model=UserOut, status_code=201)
def add_user(body: UserCreate, _: AdminUser, db: SessionDep) -> User:
    return users.create_user(db, body)


@router.patch("/{user_id}", response_model=UserOut)
def update_user(user_id: int, body: UserUpdate, _: AdminUser, db: SessionDep, request: Request) -> User:
    user = users.update_user(db, user_id, body)
    request.app.state.token_cache.drop(user_id=user_id)
    return user
