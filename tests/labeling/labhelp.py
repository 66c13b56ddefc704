"""Helpers shared by the labeling tests (imported by name: this folder is on sys.path)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

ADMIN = ("admin", "admin-password")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
PG_URL = os.environ.get("RANKLOOP_TEST_POSTGRES_URL")
PG_SKIP = "RANKLOOP_TEST_POSTGRES_URL is unset: no PostgreSQL to test against (.ci/run starts one)"


def labeler(tc, admin, name: str, project_id: int | None = None, password: str = "labeler-password"):
    """A labeler account (a project member if ``project_id``), logged in through the API."""
    from rankloop.labeling.client import LabelingClient

    admin.create_user(name, password)
    if project_id is not None:
        admin.add_member(project_id, name)
    c = LabelingClient(tc)
    c.login(name, password)
    return c


def make_records(n_prompts: int, k: int, prefix: str = "p"):
    from rankloop.records import Candidate, Prompt

    prompts = [Prompt(id=f"{prefix}{i}", text=f"Prompt number {i}") for i in range(n_prompts)]
    cands = [Candidate(id=f"{prefix}{i}-c{j}", prompt_id=f"{prefix}{i}", text=f"answer {j} to prompt {i}", policy="test")
             for i in range(n_prompts) for j in range(k)]
    return prompts, cands


def best_first(task: dict) -> list[list[str]]:
    """A deterministic ranking of a task: candidate ids sorted (c0 best)."""
    return [[c] for c in sorted(c["id"] for c in task["candidates"])]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


ROOT = Path(__file__).resolve().parents[2]


def start_server(database_url: str, port: int, log: Path, admin: tuple[str, str] = ADMIN, timeout: float = 60.0):
    """A real uvicorn process serving the app (as ``rankloop serve`` does); returns the Popen."""
    import subprocess
    import sys
    import time

    import httpx

    env = {**os.environ, "RANKLOOP_DATABASE_URL": database_url, "RANKLOOP_ADMIN_USER": admin[0],
           "RANKLOOP_ADMIN_PASSWORD": admin[1], "PYTHONPATH": str(ROOT)}
    f = open(log, "ab")
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory", "rankloop.labeling.app:app_from_env",
                             "--host", "127.0.0.1", "--port", str(port), "--no-access-log", "--log-level", "warning",
                             "--no-proxy-headers"],
                            stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}; see {log}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"server did not start within {timeout} s; see {log}")


# ---- the browser tests' shared pieces: Debian's chromium, and a live app on a free port
CHROMIUM = os.environ.get("RANKLOOP_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


@contextlib.contextmanager
def live_app(d: Path):
    """A real uvicorn server over a new SQLite database in ``d``: (base URL, logged-in admin client)."""
    from rankloop.labeling.client import LabelingClient

    port = free_port()
    proc = start_server(f"sqlite:///{d / 'labels.db'}", port, d / "server.log")
    try:
        base = f"http://127.0.0.1:{port}"
        admin = LabelingClient(base)
        admin.login(*ADMIN)
        yield base, admin
    finally:
        proc.kill()
        proc.wait(10)


# ---- the migration tests' shared pieces: a database at an old revision, with one answered slot
OLD_NOW = "2026-01-01 00:00:00"


def database_at(db_url: str, revision: str):
    """Migrate the (empty) database at ``db_url`` up to ``revision`` with the app's alembic
    scripts; returns the alembic ``Config`` (to upgrade/downgrade further) and an engine on it."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import create_engine

    from rankloop.labeling.db import MIGRATIONS, resolve_url

    url = resolve_url(db_url)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["configure_logger"] = False
    command.upgrade(cfg, revision)
    return cfg, create_engine(url)


def seed_answered_slot(c, mode: str = "ranking") -> None:
    """Rows of the 0002 schema on connection ``c``, every id 1: labeler 'ann', project 'p' (k 2,
    ``mode``), prompt 'q', an item and its slot, done by ann (the ranking itself is the caller's)."""
    from sqlalchemy import text

    c.execute(text("INSERT INTO users (id, username, password_hash, role, active, created_at) "
                   f"VALUES (1, 'ann', 'x', 'labeler', true, '{OLD_NOW}')"))
    c.execute(text("INSERT INTO projects (id, name, instructions, k, mode, overlap, gold_rate, lease_seconds, created_at) "
                   f"VALUES (1, 'p', '', 2, '{mode}', 1, 0, 60, '{OLD_NOW}')"))
    c.execute(text("INSERT INTO prompts (id, project_id, external_id, content, meta) VALUES (1, 1, 'q', '\"q\"', '{}')"))
    c.execute(text("INSERT INTO items (id, project_id, prompt_row_id, candidate_ids, is_gold) VALUES (1, 1, 1, '[]', false)"))
    c.execute(text("INSERT INTO slots (id, project_id, item_id, slot_no, labeler_id, status, is_gold) "
                   "VALUES (1, 1, 1, 0, 1, 'done', false)"))
