"""Fixtures for the labeling app: a fresh database per test on SQLite and (when
RANKLOOP_TEST_POSTGRES_URL is set) on a real PostgreSQL, an app over it, and logged-in clients."""

from __future__ import annotations

import uuid

import pytest

from labhelp import ADMIN, ARGS, CHROMIUM, PG_SKIP, PG_URL


def _pg_admin_conn():
    import psycopg

    from rankloop.labeling.db import resolve_url

    url = resolve_url(PG_URL).replace("postgresql+psycopg://", "postgresql://")
    return psycopg.connect(url, autocommit=True)


def fresh_postgres() -> tuple[str, callable]:
    """A new, empty database on the test server; returns its URL and a function that drops it."""
    from sqlalchemy.engine import make_url

    from rankloop.labeling.db import resolve_url

    name = "rl_" + uuid.uuid4().hex[:12]
    with _pg_admin_conn() as c:
        c.execute(f'CREATE DATABASE "{name}"')
    url = make_url(resolve_url(PG_URL)).set(database=name).render_as_string(hide_password=False)

    def drop() -> None:
        with _pg_admin_conn() as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return url, drop


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'labels.db'}"
        return
    if not PG_URL:
        pytest.skip(PG_SKIP)
    url, drop = fresh_postgres()
    yield url
    drop()


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path / 'labels.db'}"


@pytest.fixture
def app(db_url):
    from rankloop.labeling.app import create_app

    from rankloop.labeling.db import dispose

    app = create_app(db_url, admin=ADMIN)
    yield app
    dispose(app.state.engine)


@pytest.fixture
def tc(app):
    from fastapi.testclient import TestClient

    with TestClient(app) as c:
        yield c


@pytest.fixture
def admin(tc):
    from rankloop.labeling.client import LabelingClient

    c = LabelingClient(tc)
    c.login(*ADMIN)
    return c




@pytest.fixture(autouse=True)
def _cheap_argon2(monkeypatch):
    """Tests create many accounts: argon2id with small cost parameters (still argon2id; the
    production defaults are argon2-cffi's)."""
    from argon2 import PasswordHasher

    from rankloop.labeling import security

    monkeypatch.setattr(security, "_hasher", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))


@pytest.fixture(scope="module")
def browser():
    """Debian's chromium under Playwright, one per test module (never a downloaded browser)."""
    import shutil
    from pathlib import Path

    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium, or set RANKLOOP_CHROMIUM); never downloading one")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()
