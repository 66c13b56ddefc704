"""demonstration projects: autosaved drafts and submitted demonstrations (issue 12 item 1)

- ``demo_drafts``: what a labeler is writing for a task, one row per (slot, labeler), replaced on
  every autosave and deleted when the demonstration is submitted.
- ``demonstrations``: what was submitted, as written, with its review (pending / accepted /
  rejected) and a reviewer's edit kept beside the original.

A project's ``mode`` column (String(16)) takes the new value ``demonstration``; no change there.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""
import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'demo_drafts',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('slot_id', sa.Integer(), nullable=False),
        sa.Column('labeler_id', sa.Integer(), nullable=False),
        sa.Column('text', sa.Text(), nullable=False),
        sa.Column('edited_from', sa.String(length=255), nullable=True),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['slot_id'], ['slots.id'], ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['labeler_id'], ['users.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('slot_id', 'labeler_id', name='uq_demo_drafts_slot_labeler'),
    )
    op.create_table(
        'demonstrations',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('slot_id', sa.Integer(), nullable=False),
        sa.Column('project_id', sa.Integer(), nullable=False),
        sa.Column('item_id', sa.Integer(), nullable=False),
        sa.Column('labeler_id', sa.Integer(), nullable=False),
        sa.Column('response', sa.Text(), nullable=False),
        sa.Column('edited_from', sa.String(length=255), nullable=True),
        sa.Column('idempotency_key', sa.String(length=128), nullable=False),
        sa.Column('review', sa.String(length=16), nullable=False),
        sa.Column('accepted_text', sa.Text(), nullable=True),
        sa.Column('reviewer_id', sa.Integer(), nullable=True),
        sa.Column('reviewed_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['slot_id'], ['slots.id'], ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['project_id'], ['projects.id'], ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['item_id'], ['items.id'], ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['labeler_id'], ['users.id'], ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['reviewer_id'], ['users.id'], ondelete='SET NULL'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('slot_id'),
        sa.UniqueConstraint('project_id', 'labeler_id', 'idempotency_key', name='uq_demonstrations_project_labeler_key'),
    )
    op.create_index('ix_demonstrations_project', 'demonstrations', ['project_id', 'review', 'id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_demonstrations_project', table_name='demonstrations')
    op.drop_table('demonstrations')
    op.drop_table('demo_drafts')
