"""Logging in (tokens for scripts), and one's own sessions and API tokens: create, list, revoke."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from rankloop.labeling.deps import CurrentUser, PathId, SessionDep, client_address
from rankloop.labeling.models import User
from rankloop.labeling.schemas import LoginIn, Message, PasswordChange, TokenCreate, TokenInfo, TokenOut, UserOut
from rankloop.labeling.services import auth, users

router = APIRouter(prefix="/api/auth", tags=["auth"])


@router.post("/login", response_model=TokenOut, summary="Exchange a username and password for a bearer token")
def login(body: LoginIn, request: Request, db: SessionDep) -> TokenOut:
    user = auth.authenticate(db, request.app.state.login_limiter, body.username, body.password, client_address(request))
    raw, row = auth.issue_token(db, user.id, "api", name="login")
    return TokenOut(token=raw, id=row.id, expires_at=row.expires_at, user=UserOut.model_validate(user))


@router.get("/me", response_model=UserOut)
def me(user: CurrentUser, db: SessionDep) -> UserOut:
    return UserOut.model_validate(db.get(User, user.user_id))


@router.post("/tokens", response_model=TokenOut, summary="An API token for scripts (90 days unless `days` says otherwise)")
def create_token(body: TokenCreate, user: CurrentUser, db: SessionDep, request: Request) -> TokenOut:
    s = request.app.state.settings
    raw, row = auth.script_token(db, user.user_id, body.name, body.days, s.token_days, s.token_max_days)
    return TokenOut(token=raw, id=row.id, expires_at=row.expires_at, user=UserOut.model_validate(db.get(User, user.user_id)))


@router.get("/tokens", response_model=list[TokenInfo], summary="Your sessions and API tokens (never their secrets)")
def list_tokens(user: CurrentUser, db: SessionDep) -> list[TokenInfo]:
    return auth.list_tokens(db, user.user_id, current_hash=user.token_hash)


@router.delete("/tokens/{token_id}", status_code=204, summary="Revoke one of your sessions or tokens")
def revoke_token(token_id: PathId, user: CurrentUser, db: SessionDep, request: Request) -> Response:
    row = auth.revoke_token(db, token_id, user_id=user.user_id)
    request.app.state.token_cache.drop(row.token_hash)
    return Response(status_code=204)


@router.delete("/tokens", status_code=204, summary="Revoke all your sessions and tokens, this one included")
def revoke_all(user: CurrentUser, db: SessionDep, request: Request) -> Response:
    auth.revoke_all(db, user.user_id)
    request.app.state.token_cache.drop(user_id=user.user_id)
    return Response(status_code=204)


@router.post("/logout", response_model=Message, summary="Revoke the token (or session) this request used")
def logout(user: CurrentUser, request: Request, db: SessionDep) -> Message:
    auth.revoke_hash(db, user.token_hash)
    request.app.state.token_cache.drop(user.token_hash)
    return Message(detail="logged out")


@router.post("/password", status_code=204,
             summary="Change your own password (the current one is required); your other sessions and tokens end")
def change_password(body: PasswordChange, user: CurrentUser, db: SessionDep, request: Request) -> Response:
    users.change_own_password(db, request.app.state.login_limiter, user, client_address(request), body)
    request.app.state.token_cache.drop(user_id=user.user_id)
    return Response(status_code=204)
