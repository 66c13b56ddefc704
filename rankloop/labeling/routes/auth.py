"""Logging in (tokens for scripts) and API tokens."""

from __future__ import annotations

from fastapi import APIRouter, Request

from rankloop.labeling.deps import CurrentUser, SessionDep
from rankloop.labeling.models import User
from rankloop.labeling.schemas import LoginIn, Message, TokenCreate, TokenOut, UserOut
from rankloop.labeling.services import auth

router = APIRouter(prefix="/api/auth", tags=["auth"])


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


@router.post("/login", response_model=TokenOut, summary="Exchange a username and password for a bearer token")
def login(body: LoginIn, request: Request, db: SessionDep) -> TokenOut:
    user = auth.authenticate(db, request.app.state.login_limiter, body.username, body.password, client_address(request))
    raw = auth.issue_token(db, user.id, "api", name="login")
    return TokenOut(token=raw, user=UserOut.model_validate(user))


@router.get("/me", response_model=UserOut)
def me(user: CurrentUser, db: SessionDep) -> UserOut:
    return UserOut.model_validate(db.get(User, user.user_id))


@router.post("/tokens", response_model=TokenOut, summary="A long-lived API token for scripts (no expiry)")
def create_token(body: TokenCreate, user: CurrentUser, db: SessionDep) -> TokenOut:
    raw = auth.issue_token(db, user.user_id, "api", name=body.name, days=None)
    return TokenOut(token=raw, user=UserOut.model_validate(db.get(User, user.user_id)))


@router.post("/logout", response_model=Message, summary="Revoke the token (or session) this request used")
def logout(user: CurrentUser, request: Request, db: SessionDep) -> Message:
    auth.revoke_hash(db, user.token_hash)
    request.app.state.token_cache.drop(user.token_hash)
    return Message(detail="logged out")
