"""unjoined ratings index: a partial index of the ratings still waiting for their turn

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 09:00:00

The analyzer's sweep (monitor.store.sweep) looks for ratings left unjoined although their turn is
stored (two workers wrote them in transactions that did not see each other). Unjoined ratings are
few (those that came before their turn), so a partial index keeps the sweep's cost at theirs, not
the table's.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('ratings', schema=None) as batch_op:
        batch_op.create_index('ix_ratings_unjoined', ['conversation_id', 'turn'], unique=False,
                              sqlite_where=sa.text('joined = 0'), postgresql_where=sa.text('joined = false'))


def downgrade() -> None:
    with op.batch_alter_table('ratings', schema=None) as batch_op:
        batch_op.drop_index('ix_ratings_unjoined', sqlite_where=sa.text('joined = 0'),
                            postgresql_where=sa.text('joined = false'))
