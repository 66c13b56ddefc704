"""Users (admins only): create labelers and admins, deactivate, reset passwords, list and revoke
their sessions and tokens."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from rankloop.labeling.deps import AdminUser, PathId, SessionDep
from rankloop.labeling.models import User
from rankloop.labeling.schemas import TokenInfo, UserCreate, UserOut, UserUpdate
from rankloop.labeling.services import auth, users

router = APIRouter(prefix="/api/users", tags=["users"])


@router.get("", response_model=list[UserOut])
def list_users(_: AdminUser, db: SessionDep) -> list[User]:
    return users.list_users(db)


@router.post("", response_model=UserOut, status_code=201)
def add_user(body: UserCreate, _: AdminUser, db: SessionDep) -> User:
    return users.create_user(db, body)


@router.patch("/{user_id}", response_model=UserOut,
              summary="Change role, active or password (a new password or a deactivation revokes every token)")
def update_user(user_id: PathId, body: UserUpdate, _: AdminUser, db: SessionDep, request: Request) -> User:
    user = users.update_user(db, user_id, body)
    request.app.state.token_cache.drop(user_id=user_id)
    return user


@router.get("/{user_id}/tokens", response_model=list[TokenInfo], summary="A user's sessions and API tokens")
def list_tokens(user_id: PathId, me: AdminUser, db: SessionDep) -> list[TokenInfo]:
    users.get_user(db, user_id)
    return auth.list_tokens(db, user_id, current_hash=me.token_hash)


@router.delete("/{user_id}/tokens/{token_id}", status_code=204)
def revoke_token(user_id: PathId, token_id: PathId, _: AdminUser, db: SessionDep, request: Request) -> Response:
    row = auth.revoke_token(db, token_id, user_id=user_id)
    request.app.state.token_cache.drop(row.token_hash)
    return Response(status_code=204)


@router.delete("/{user_id}/tokens", status_code=204, summary="Revoke every session and token of a user")
def revoke_all(user_id: PathId, _: AdminUser, db: SessionDep, request: Request) -> Response:
    users.get_user(db, user_id)
    auth.revoke_all(db, user_id)
    request.app.state.token_cache.drop(user_id=user_id)
    return Response(status_code=204)
