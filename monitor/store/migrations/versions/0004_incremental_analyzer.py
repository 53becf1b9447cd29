"""incremental analyzer: segment states, progress checkpoint, rating entry time, turn divergence

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 20:00:00

The frozen ``calibrations`` of 0003 were keyed by segment alone, not by reward model; they are
dropped, and the analyzer rebuilds its state from the stored turns on its first run. Alerts keyed
by the old scheme (``...|started_at``) are resolved here, so nothing keeps firing that the new
analyzer will never update.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import monitor.store.models

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('turns', schema=None) as batch_op:
        batch_op.add_column(sa.Column('divergence', sa.Float(), nullable=True))
        batch_op.create_index('ix_turns_signals_pending', ['id'], unique=False,
                              sqlite_where=sa.text('sig_length_tokens IS NULL'),
                              postgresql_where=sa.text('sig_length_tokens IS NULL'))
    with op.batch_alter_table('ratings', schema=None) as batch_op:
        batch_op.add_column(sa.Column('entry_at', monitor.store.models.UTCDateTime(timezone=True), nullable=True))
        batch_op.create_index('ix_ratings_ts', ['ts'], unique=False)
        batch_op.create_index(batch_op.f('ix_ratings_entry_at'), ['entry_at'], unique=False)
    # Entry time of the ratings joined so far: their own ts, never before their turn's.
    op.execute(sa.text(
        "UPDATE ratings SET entry_at = (SELECT CASE WHEN ratings.ts > t.ts THEN ratings.ts ELSE t.ts END "
        "FROM turns t WHERE t.conversation_id = ratings.conversation_id AND t.turn = ratings.turn) "
        "WHERE joined"))
    op.create_table('segment_states',
    sa.Column('segment', sa.String(length=256), nullable=False),
    sa.Column('state', sa.JSON(), nullable=False),
    sa.Column('updated_at', monitor.store.models.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('segment', name=op.f('pk_segment_states'))
    )
    op.create_table('analyzer_progress',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('checkpoint', monitor.store.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('updated_at', monitor.store.models.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_analyzer_progress'))
    )
    op.drop_table('calibrations')
    op.execute(sa.text("UPDATE alerts SET state = 'resolved', resolved_at = started_at WHERE state = 'firing'"))


def downgrade() -> None:
    op.create_table('calibrations',
    sa.Column('segment', sa.String(length=256), nullable=False),
    sa.Column('fitted_at', monitor.store.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('reference_from', monitor.store.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('reference_to', monitor.store.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('labels', sa.Integer(), nullable=False),
    sa.Column('scorer', sa.String(length=256), nullable=True),
    sa.Column('params', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'),
              nullable=False),
    sa.PrimaryKeyConstraint('segment', name=op.f('pk_calibrations'))
    )
    op.drop_table('analyzer_progress')
    op.drop_table('segment_states')
    with op.batch_alter_table('ratings', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_ratings_entry_at'))
        batch_op.drop_index('ix_ratings_ts')
        batch_op.drop_column('entry_at')
    with op.batch_alter_table('turns', schema=None) as batch_op:
        batch_op.drop_index('ix_turns_signals_pending')
        batch_op.drop_column('divergence')
