"""imported judgements: external rater accounts, strength, import provenance

- ``users.external``: an account the import made for a rater of imported data (inactive, with no
  usable password); ``false`` for every existing account.
- (an imported strength goes in ``rankings.strength``, which 0006 adds for collected feedback:
  one column for both)
- ``rankings.import_meta``: where an imported judgement came from (``source`` file:line, the
  import's ``batch``, a TRL ``margin``); ``NULL`` for a judgement collected here.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""
import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("users") as b:
        b.add_column(sa.Column("external", sa.Boolean(), server_default="0", nullable=False))
    with op.batch_alter_table("rankings") as b:
        b.add_column(sa.Column("import_meta", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("rankings") as b:
        b.drop_column("import_meta")
    with op.batch_alter_table("users") as b:
        b.drop_column("external")
