"""every token expires; idempotency keys are scoped to a project

- ``auth_tokens.expires_at`` becomes NOT NULL: tokens made before (script tokens had no expiry)
  are given one year from the upgrade; indexed, so expired rows are purged cheaply.
- ``rankings``: ``UNIQUE (labeler_id, idempotency_key)`` becomes
  ``UNIQUE (project_id, labeler_id, idempotency_key)``: a key reused in another project is
  another submission, not a conflict (issue 11 item 12).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-15
"""
from datetime import datetime, timedelta, timezone

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

# SQLite's constraints from 0001 have no names; in batch mode this convention names the reflected
# ones so they can be dropped (PostgreSQL's have the server's default names, read back below).
SQLITE_NAMES = {"uq": "uq_%(table_name)s_%(column_0_name)s"}
NEW_KEY = "uq_rankings_project_labeler_key"


def _unique_named(table: str, columns: list[str]) -> str | None:
    for uq in sa.inspect(op.get_bind()).get_unique_constraints(table):
        if uq["column_names"] == columns:
            return uq["name"]
    return None


def _swap_key(old_columns: list[str], new_columns: list[str], new_name: str) -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    old_name = _unique_named("rankings", old_columns) or f"uq_rankings_{old_columns[0]}"  # unnamed: the convention's
    with op.batch_alter_table("rankings", naming_convention=SQLITE_NAMES if sqlite else None) as b:
        b.drop_constraint(old_name, type_="unique")
        b.create_unique_constraint(new_name, new_columns)


def upgrade() -> None:
    tokens = sa.table("auth_tokens", sa.column("expires_at", sa.DateTime(timezone=True)))
    op.execute(tokens.update().where(tokens.c.expires_at.is_(None))
               .values(expires_at=datetime.now(timezone.utc) + timedelta(days=365)))
    with op.batch_alter_table("auth_tokens") as b:
        b.alter_column("expires_at", existing_type=sa.DateTime(timezone=True), nullable=False)
        b.create_index("ix_auth_tokens_expires_at", ["expires_at"], unique=False)
    _swap_key(["labeler_id", "idempotency_key"], ["project_id", "labeler_id", "idempotency_key"], NEW_KEY)


def downgrade() -> None:
    # Fails if a labeler has since reused a key across projects: there is no way to keep both.
    _swap_key(["project_id", "labeler_id", "idempotency_key"], ["labeler_id", "idempotency_key"], "uq_rankings_labeler_key")
    with op.batch_alter_table("auth_tokens") as b:
        b.drop_index("ix_auth_tokens_expires_at")
        b.alter_column("expires_at", existing_type=sa.DateTime(timezone=True), nullable=True)
