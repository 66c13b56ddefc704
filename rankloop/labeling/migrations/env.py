"""Alembic environment for the labeling database (run by ``rankloop.labeling.db.upgrade``)."""

from alembic import context
from sqlalchemy import create_engine, text

from rankloop.labeling.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_offline() -> None:
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata,
                      literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    url = config.get_main_option("sqlalchemy.url")
    engine = create_engine(url)
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            # Several app processes may start at once: one migrates, the others wait for it.
            conn.execute(text("SELECT pg_advisory_lock(724120451)"))
            conn.commit()
        try:
            context.configure(connection=conn, target_metadata=target_metadata, render_as_batch=True)
            with context.begin_transaction():
                context.run_migrations()
            conn.commit()
        finally:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_unlock(724120451)"))
                conn.commit()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
