"""richer feedback (issue 15 item 1): per-project feedback settings, pairwise strength, ratings

- ``projects.feedback``: the project's optional feedback settings (JSON, ``schemas.FeedbackSettings``;
  NULL: none, as before).
- ``rankings.strength`` / ``strength_scale``: a pairwise preference's degree and the scale it was
  given on (the scale is copied, so a later change of the project's scale never re-reads old data);
  ``rankings.unsafe_ids``: which candidates the labeler called unsafe (NULL: not said).
  ``rankings.strength`` is also where an imported judgement's strength goes (0007 adds no column of its own).
- ``ratings``: per-candidate Likert score, acceptability, metadata labels and comment, each tied to
  the submission it came with.

Revision ID: 0006
Revises: 0005 (rechained at merge: 0003 demo → 0004 day → 0005 lead → 0006 feedback → 0007 import)
Create Date: 2026-12-02
"""
import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('projects') as b:
        b.add_column(sa.Column('feedback', sa.JSON(), nullable=True))
    with op.batch_alter_table('rankings') as b:
        b.add_column(sa.Column('strength', sa.Integer(), nullable=True))
        b.add_column(sa.Column('strength_scale', sa.Integer(), nullable=True))
        b.add_column(sa.Column('unsafe_ids', sa.JSON(), nullable=True))
    op.create_table(
        'ratings',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('ranking_id', sa.Integer(), nullable=False),
        sa.Column('project_id', sa.Integer(), nullable=False),
        sa.Column('item_id', sa.Integer(), nullable=False),
        sa.Column('labeler_id', sa.Integer(), nullable=False),
        sa.Column('candidate_id', sa.String(length=255), nullable=False),
        sa.Column('score', sa.Integer(), nullable=True),
        sa.Column('acceptable', sa.Boolean(), nullable=True),
        sa.Column('labels', sa.JSON(), nullable=False),
        sa.Column('comment', sa.Text(), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['ranking_id'], ['rankings.id'], ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['project_id'], ['projects.id'], ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['item_id'], ['items.id'], ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['labeler_id'], ['users.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('ranking_id', 'candidate_id', name='uq_ratings_ranking_candidate'),
    )
    op.create_index('ix_ratings_project', 'ratings', ['project_id', 'ranking_id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_ratings_project', table_name='ratings')
    op.drop_table('ratings')
    with op.batch_alter_table('rankings') as b:
        b.drop_column('unsafe_ids')
        b.drop_column('strength_scale')
        b.drop_column('strength')
    with op.batch_alter_table('projects') as b:
        b.drop_column('feedback')
