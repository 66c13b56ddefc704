"""The labeling app: ``create_app(database_url)`` returns the FastAPI application.

Migrations are applied when the app is created, so a fresh database (or an old one) is ready before
the first request. Several app processes may share one PostgreSQL database; SQLite means one
process (see ``db``).
"""

from __future__ import annotations

import gc
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from starlette.exceptions import HTTPException as StarletteHTTPException

import rankloop
from rankloop.labeling import render
from rankloop.labeling.assign import Queue
from rankloop.labeling.db import dispose, make_engine, make_sessionmaker, resolve_url, upgrade
from rankloop.labeling.deps import page_user, status_of, trusted_networks
from rankloop.labeling.middleware import BodyLimit, SecurityHeaders
from rankloop.labeling.models import User
from rankloop.labeling.routes import auth, demonstrations, invites, pages, projects, review, tasks, users
from rankloop.labeling.security import LoginLimiter, TokenCache, hash_password
from rankloop.labeling.services import DomainError, Throttled
from rankloop.labeling.settings import LabelingSettings

HERE = Path(__file__).parent
MAX_ERRORS = 20  # validation errors listed in one reply


def error_reply(request: Request, status: int, detail: str, headers: dict | None = None) -> Response:
    """The API answers JSON; a page answers the error page (with the navigation bar of whoever is
    logged in), or the login page for a 401."""
    if request.url.path.startswith("/api/") or request.url.path.startswith("/static/"):
        return JSONResponse({"detail": detail}, status_code=status, headers=headers)
    if status == 401:
        return RedirectResponse("/login", status_code=303)
    return request.app.state.templates.TemplateResponse(
        request, "error.html", {"user": page_user(request), "status": status, "detail": detail}, status_code=status,
        headers=headers)


async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
    # FastAPI's default reply lists every error with its input: a 10 MB field would come back whole.
    # The limits in ``ctx`` (e.g. max_length) stay: the ranking page words its message from them.
    errors = [{"type": e.get("type"), "loc": list(e.get("loc", ())), "msg": e.get("msg"),
               "ctx": {k: v for k, v in (e.get("ctx") or {}).items() if isinstance(v, (int, float, bool))}}
              for e in exc.errors()]
    if not request.url.path.startswith("/api/"):
        shown = "; ".join(f"{'.'.join(str(x) for x in e['loc'][1:])}: {e['msg']}" for e in errors[:MAX_ERRORS])
        return error_reply(request, 422, f"the request was not understood ({shown})")
    if len(errors) > MAX_ERRORS:
        errors = errors[:MAX_ERRORS] + [{"type": "more", "loc": [], "msg": f"and {len(errors) - MAX_ERRORS} more errors"}]
    return JSONResponse({"detail": errors}, status_code=422)


async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
    return error_reply(request, exc.status_code, exc.detail, getattr(exc, "headers", None))


async def domain_error(request: Request, exc: DomainError) -> Response:
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, Throttled) else None
    return error_reply(request, status_of(exc), str(exc), headers)


def bootstrap_admin(sessionmaker, username: str, password: str) -> bool:
    """Create ``username`` as an admin if the database has no users yet. Returns whether it did."""
    with sessionmaker() as db:
        if db.execute(select(func.count()).select_from(User)).scalar_one():
            return False
        db.add(User(username=username, password_hash=hash_password(password), role="admin", active=True))
        try:
            db.commit()
        except IntegrityError:  # another app process starting at the same time made it
            return False
        return True


def create_app(database_url: str | None = None, *, migrate: bool = True, admin: tuple[str, str] | None = None,
               secure_cookies: bool | None = None, login_max_failures: int | None = None,
               settings: LabelingSettings | None = None) -> FastAPI:
    """The app over ``database_url`` (default: ``settings.database_url``, i.e. ``$RANKLOOP_DATABASE_URL``,
    else ``./rankloop-labeling.db``).

    ``admin=(username, password)`` creates the first admin when the database has no users.
    ``secure_cookies`` marks cookies Secure (default: ``settings.secure_cookies``,
    ``$RANKLOOP_SECURE_COOKIES``; turn it on behind HTTPS). ``settings`` defaults to the environment's."""
    settings = settings or LabelingSettings()
    url = resolve_url(database_url or settings.database_url)
    if migrate:
        upgrade(url)
    engine = make_engine(url, background_checkpoint=True, pool_size=settings.db_pool_size)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # The app's long-lived objects (modules, schemas, routes) never become garbage: keep them
        # out of the cyclic collector so a full collection does not stall requests for tens of ms.
        gc.collect()
        gc.freeze()
        yield
        dispose(engine)

    app = FastAPI(title="rankloop labeling", version=getattr(rankloop, "__version__", "0"), lifespan=lifespan,
                  description="Collect K-way human rankings of model outputs; export them for reward-model training.")
    app.state.engine = engine
    app.state.sessionmaker = make_sessionmaker(engine)
    app.state.token_cache = TokenCache()
    app.state.login_limiter = LoginLimiter(max_failures=login_max_failures or settings.login_max_failures)
    app.state.queue = Queue(engine)
    app.state.templates = Jinja2Templates(directory=HERE / "templates")  # autoescapes .html
    app.state.settings = settings
    app.state.trusted_proxies = trusted_networks(settings.trusted_proxies)
    app.state.secure_cookies = settings.secure_cookies if secure_cookies is None else secure_cookies
    if admin is not None:
        bootstrap_admin(app.state.sessionmaker, *admin)

    app.state.templates.env.filters["markdown"] = render.markdown  # (issue 15 item 3) model text, safely
    for r in (tasks.router, tasks.rankings_router, auth.router, users.router, projects.router, demonstrations.router,
              pages.router):  # hot routes first
        app.include_router(r)
    for r in (invites.router, invites.pages, review.router, review.pages):  # lead tools
        app.include_router(r)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    app.add_middleware(BodyLimit, default=settings.max_body_bytes, imports=settings.max_import_bytes)
    app.add_middleware(SecurityHeaders, secure=app.state.secure_cookies)

    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(DomainError, domain_error)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict:
        return {"ok": True}

    return app


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory rankloop.labeling.app:app_from_env`` (several workers)."""
    s = LabelingSettings()
    return create_app(s.database_url, admin=(s.admin_user, s.admin_password) if s.admin_user and s.admin_password else None,
                      settings=s)
