"""a lead's tools: invite links, adjudicated rankings, qualification

- ``projects``: ``qualify_items``, ``qualify_accuracy``, ``pause_below``, ``pause_window``,
  ``review_below`` (existing projects: no qualification, no pausing, review below 0.6).
- ``invites``: one-time links (SHA-256 of the secret only).
- ``adjudications``: reviewers' rankings of disputed items (append-only).
- ``labeler_states``: a labeler's qualification state per project.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""
import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("projects") as b:
        b.add_column(sa.Column("qualify_items", sa.Integer(), nullable=False, server_default="0"))
        b.add_column(sa.Column("qualify_accuracy", sa.Float(), nullable=False, server_default="0"))
        b.add_column(sa.Column("pause_below", sa.Float(), nullable=True))
        b.add_column(sa.Column("pause_window", sa.Integer(), nullable=False, server_default="10"))
        b.add_column(sa.Column("review_below", sa.Float(), nullable=False, server_default="0.6"))
    # the server defaults only fill the existing rows; the models give new rows their values
    with op.batch_alter_table("projects") as b:
        for col, typ in (("qualify_items", sa.Integer()), ("qualify_accuracy", sa.Float()), ("pause_window", sa.Integer()),
                         ("review_below", sa.Float())):
            b.alter_column(col, existing_type=typ, server_default=None)
    op.create_table(
        "invites",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=True),
        sa.Column("created_by", sa.Integer(), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("used_at", TS, nullable=True),
        sa.Column("used_by", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["created_by"], ["users.id"], ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["used_by"], ["users.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_hash"),
    )
    op.create_index("ix_invites_project_id", "invites", ["project_id"], unique=False)
    op.create_table(
        "adjudications",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("item_id", sa.Integer(), nullable=False),
        sa.Column("reviewer_id", sa.Integer(), nullable=False),
        sa.Column("ranking", sa.JSON(), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["item_id"], ["items.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["reviewer_id"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_adjudications_item", "adjudications", ["project_id", "item_id", "id"], unique=False)
    op.create_table(
        "labeler_states",
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("since_ranking_id", sa.Integer(), nullable=False),
        sa.Column("accuracy", sa.Float(), nullable=True),
        sa.Column("changed_at", TS, nullable=False),
        sa.Column("changed_by", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["changed_by"], ["users.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("project_id", "user_id"),
    )


def downgrade() -> None:
    op.drop_table("labeler_states")
    op.drop_index("ix_adjudications_item", table_name="adjudications")
    op.drop_table("adjudications")
    op.drop_index("ix_invites_project_id", table_name="invites")
    op.drop_table("invites")
    with op.batch_alter_table("projects") as b:
        for col in ("review_below", "pause_window", "pause_below", "qualify_accuracy", "qualify_items"):
            b.drop_column(col)
