"""retention: when a turn's raw text and a rating's comment were redacted; dead letters by age

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02 09:00:00

The retention prune (monitor.store.retention) replaces raw text older than
MONITOR_RETENTION_RAW_TEXT_DAYS by its redacted form once, and records when in ``redacted_at``.
Partial indexes hold only what is still to redact, so each prune's cost is that of the new work,
not of the history it already redacted; ``dead_letters.received_at`` is indexed for the deletion
by age.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import monitor.store.models

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('turns', schema=None) as batch_op:
        batch_op.add_column(sa.Column('redacted_at', monitor.store.models.UTCDateTime(timezone=True), nullable=True))
        batch_op.create_index('ix_turns_unredacted', ['ts'], unique=False,
                              sqlite_where=sa.text('redacted_at IS NULL'),
                              postgresql_where=sa.text('redacted_at IS NULL'))
    with op.batch_alter_table('ratings', schema=None) as batch_op:
        batch_op.add_column(sa.Column('redacted_at', monitor.store.models.UTCDateTime(timezone=True), nullable=True))
        batch_op.create_index('ix_ratings_unredacted', ['ts'], unique=False,
                              sqlite_where=sa.text('comment IS NOT NULL AND redacted_at IS NULL'),
                              postgresql_where=sa.text('comment IS NOT NULL AND redacted_at IS NULL'))
    with op.batch_alter_table('dead_letters', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_dead_letters_received_at'), ['received_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('dead_letters', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_dead_letters_received_at'))
    with op.batch_alter_table('ratings', schema=None) as batch_op:
        batch_op.drop_index('ix_ratings_unredacted', sqlite_where=sa.text('comment IS NOT NULL AND redacted_at IS NULL'),
                            postgresql_where=sa.text('comment IS NOT NULL AND redacted_at IS NULL'))
        batch_op.drop_column('redacted_at')
    with op.batch_alter_table('turns', schema=None) as batch_op:
        batch_op.drop_index('ix_turns_unredacted', sqlite_where=sa.text('redacted_at IS NULL'),
                            postgresql_where=sa.text('redacted_at IS NULL'))
        batch_op.drop_column('redacted_at')
