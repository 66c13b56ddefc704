"""Engine, sessions and migrations for the labeling app.

SQLite (the default: one file, one server process) runs in WAL mode with a busy timeout; its
writers are serialised inside the process by a lock and take the write lock up front
(``BEGIN IMMEDIATE``), so two requests never race on a read-then-write and SQLite's sleeping busy
handler is never on the hot path. PostgreSQL (a team, several app processes) needs neither: slot
claims use ``SELECT … FOR UPDATE SKIP LOCKED`` and unique constraints.
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Iterator

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

DEFAULT_URL = "sqlite:///rankloop-labeling.db"
MIGRATIONS = Path(__file__).parent / "migrations"


def resolve_url(url: str | None) -> str:
    """``--database-url``, else ``$RANKLOOP_DATABASE_URL``, else a SQLite file in the cwd.

    A bare ``postgresql://`` URL is given the psycopg 3 driver (the one rankloop installs)."""
    from rankloop.labeling.settings import LabelingSettings

    url = url or LabelingSettings().database_url or DEFAULT_URL
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    return url


def is_sqlite(engine_or_url: Engine | str) -> bool:
    url = engine_or_url if isinstance(engine_or_url, str) else str(engine_or_url.url)
    return url.startswith("sqlite")


def make_engine(url: str, background_checkpoint: bool = False, pool_size: int = 20) -> Engine:
    """An engine with the pragmas above. ``background_checkpoint`` (the app's engine): WAL
    checkpoints run every ``CHECKPOINT_EVERY`` s in a thread of their own (``PASSIVE``: never
    blocking a writer) instead of inside whichever request's commit crosses SQLite's
    1000-page mark; a safety-net autocheckpoint stays at 20000 pages.

    PostgreSQL: a fixed pool of ``pool_size`` connections per process, no overflow. A request that
    finds them all busy waits for one; an overflow connection would be opened and closed again
    around each request under load, and a PostgreSQL connection costs a forked backend and its
    catalogue caches: at 200 labelers that churn was 60% of the database's CPU (labeling_load:
    4.5 → 1.5 ms of PostgreSQL CPU per submission, 267 → 468 submissions/s on 2 cores)."""
    url = resolve_url(url)
    if is_sqlite(url):
        if url in ("sqlite://", "sqlite:///:memory:"):
            raise ValueError("an in-memory SQLite database cannot be shared between requests; use a file")
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, pool_size=8, max_overflow=16)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):  # noqa: ANN001
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (see _begin)
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes in WAL mode
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA cache_size=-32000")
            cur.execute("PRAGMA temp_store=MEMORY")
            if background_checkpoint:
                cur.execute("PRAGMA wal_autocheckpoint=20000")
            # After a checkpoint the WAL file is cut back to this size (it is otherwise kept at its
            # largest: 125 MB after one big import, for good).
            cur.execute(f"PRAGMA journal_size_limit={int(WAL_SIZE_LIMIT)}")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn):  # noqa: ANN001
            immediate = conn.get_execution_options().get("sqlite_immediate", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        engine.info_write_lock = threading.Lock()  # type: ignore[attr-defined]
        if background_checkpoint:
            _start_checkpointer(engine)
    else:
        engine = create_engine(url, pool_size=pool_size, max_overflow=0, pool_recycle=1800)
        engine.info_write_lock = None  # type: ignore[attr-defined]
    return engine


CHECKPOINT_EVERY = 1.0
WAL_SIZE_LIMIT = 64 * 1024 * 1024  # bytes


def _wal_bytes(engine: Engine) -> int:
    try:
        return os.path.getsize(f"{engine.url.database}-wal")
    except OSError:
        return 0


def checkpoint(engine: Engine, mode: str = "PASSIVE") -> None:
    """``PASSIVE`` copies what it can without waiting for anyone. ``TRUNCATE`` also empties the WAL
    file; it needs every reader gone, so it holds the process's write lock (writers queue on it,
    not on SQLite's busy handler) and waits at most 100 ms for readers (busy: tried next time)."""
    lock = getattr(engine, "info_write_lock", None) if mode == "TRUNCATE" else None
    with lock if lock is not None else nullcontext():
        raw = engine.raw_connection()
        try:
            cur = raw.cursor()
            if mode == "TRUNCATE":
                cur.execute("PRAGMA busy_timeout=100")
            try:
                cur.execute(f"PRAGMA wal_checkpoint({mode})")
            finally:
                cur.execute("PRAGMA busy_timeout=30000")
        finally:
            raw.close()


def _start_checkpointer(engine: Engine) -> None:
    stop = threading.Event()
    engine.info_checkpoint_stop = stop  # type: ignore[attr-defined]

    def run() -> None:
        while not stop.wait(CHECKPOINT_EVERY):
            try:
                # journal_size_limit cuts the WAL at the next write after a complete checkpoint; an
                # idle app (after a big import) gets no next write, so it is emptied here.
                checkpoint(engine, "TRUNCATE" if _wal_bytes(engine) > WAL_SIZE_LIMIT else "PASSIVE")
            except Exception:  # noqa: BLE001 - a missed checkpoint is retried next second
                pass

    threading.Thread(target=run, name="sqlite-checkpoint", daemon=True).start()


def dispose(engine: Engine) -> None:
    stop = getattr(engine, "info_checkpoint_stop", None)
    if stop is not None:
        stop.set()
        try:
            checkpoint(engine, "TRUNCATE")  # leave a small file behind
        except Exception:  # noqa: BLE001 - the WAL is replayed at the next open anyway
            pass
    engine.dispose()


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def writing(db: Session) -> Iterator[Session]:
    """A write transaction: committed on success, rolled back on error.

    On SQLite it holds the process's write lock and begins with ``BEGIN IMMEDIATE``."""
    if db.in_transaction():
        db.commit()
    lock = getattr(db.get_bind(), "info_write_lock", None)
    with lock if lock is not None else nullcontext():
        db.connection(execution_options={"sqlite_immediate": True})
        try:
            yield db
            db.commit()
        except BaseException:
            db.rollback()
            raise


def upgrade(url: str) -> None:
    """Apply every Alembic migration (``alembic upgrade heads``) to the database at ``url``.
    ``heads``: branches made in parallel on one parent (0003, 0004, … on 0002 until they are
    chained) are all applied; with one head it is ``head``."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", resolve_url(url).replace("%", "%%"))
    cfg.attributes["configure_logger"] = False
    command.upgrade(cfg, "heads")


def refresh_claim_statistics(db: Session) -> None:
    """After a bulk insert of slots (an import, an overlap raised): PostgreSQL's planner statistics
    of ``slots`` and ``items`` brought up to date in the same transaction (ANALYZE counts the rows
    the transaction inserted; the statistics become visible with its commit; ~50 ms at 74,000 slots,
    it samples at most 30,000 rows), instead of waiting for autovacuum's next ANALYZE.

    Added against a planner trap it did not close: the claim walking the primary key through every
    other project's slots came from the claim's shape (fixed in ``assign.Queue``: only ix_slots_claim
    gives its order), not from stale statistics. Kept for the estimates of a freshly imported batch;
    the claim's plan no longer depends on it. SQLite: nothing to do."""
    if db.get_bind().dialect.name == "postgresql":
        db.execute(text("ANALYZE slots, items"))
