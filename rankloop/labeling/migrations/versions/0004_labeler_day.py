"""a labeler's day: skips, corrections that supersede, time on task, the edit window

- ``skips``: a labeler passed on a task (slot/item, labeler, reason, note, time).
- ``rankings.supersedes_id`` (UNIQUE, so a ranking's history is a chain), ``served_at`` and
  ``active_seconds``; ``slot_id`` becomes nullable: a correction is a new row with no slot of its
  own (its chain's first row holds the slot, whose UNIQUE still means "answered once").
- ``projects.edit_window_seconds`` (600 for existing projects).
- index ``rankings (labeler_id, project_id)``: a labeler's counter and recent submissions.

Downgrading deletes the corrections (the rows that supersede another) and the skips: the older
schema has no place for them.

Revision ID: 0004
Revises: 0003 (was 0002; rechained when demo merged day)
Create Date: 2026-12-02
"""
import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'  # rechained by demo when merging day (0003 demonstrations, 0004 labeler day)
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('skips',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('project_id', sa.Integer(), nullable=False),
    sa.Column('item_id', sa.Integer(), nullable=False),
    sa.Column('slot_id', sa.Integer(), nullable=True),
    sa.Column('labeler_id', sa.Integer(), nullable=False),
    sa.Column('reason', sa.String(length=64), nullable=False),
    sa.Column('note', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['item_id'], ['items.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['labeler_id'], ['users.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('skips', schema=None) as b:
        b.create_index('ix_skips_labeler_item', ['labeler_id', 'item_id'], unique=False)
        b.create_index('ix_skips_project', ['project_id'], unique=False)
    with op.batch_alter_table('projects', schema=None) as b:
        b.add_column(sa.Column('edit_window_seconds', sa.Integer(), server_default='600', nullable=False))
    with op.batch_alter_table('rankings', schema=None) as b:
        b.alter_column('slot_id', existing_type=sa.Integer(), nullable=True)
        b.add_column(sa.Column('supersedes_id', sa.Integer(), nullable=True))
        b.add_column(sa.Column('served_at', sa.DateTime(timezone=True), nullable=True))
        b.add_column(sa.Column('active_seconds', sa.Float(), nullable=True))
        b.create_unique_constraint('uq_rankings_supersedes_id', ['supersedes_id'])
        b.create_foreign_key('fk_rankings_supersedes_id', 'rankings', ['supersedes_id'], ['id'], ondelete='CASCADE')
        b.create_index('ix_rankings_labeler', ['labeler_id', 'project_id'], unique=False)


def downgrade() -> None:
    rankings = sa.table('rankings', sa.column('supersedes_id', sa.Integer()))
    op.execute(rankings.delete().where(rankings.c.supersedes_id.is_not(None)))
    with op.batch_alter_table('rankings', schema=None) as b:
        b.drop_index('ix_rankings_labeler')
        b.drop_constraint('fk_rankings_supersedes_id', type_='foreignkey')
        b.drop_constraint('uq_rankings_supersedes_id', type_='unique')
        b.drop_column('active_seconds')
        b.drop_column('served_at')
        b.drop_column('supersedes_id')
        b.alter_column('slot_id', existing_type=sa.Integer(), nullable=False)
    with op.batch_alter_table('projects', schema=None) as b:
        b.drop_column('edit_window_seconds')
    with op.batch_alter_table('skips', schema=None) as b:
        b.drop_index('ix_skips_project')
        b.drop_index('ix_skips_labeler_item')
    op.drop_table('skips')
