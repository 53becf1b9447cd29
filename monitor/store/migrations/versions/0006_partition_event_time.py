"""partition event time: the latest event time stored from each consumed partition

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 00:00:00

The analyzer's watermark becomes the lowest event time of the active partitions, so a partition
that lags behind the others (a backfill, a slow broker) holds the checkpoint back instead of
having its rated turns skipped. NULL until the partition's next batch.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import monitor.store.models

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('consumer_offsets', schema=None) as batch_op:
        batch_op.add_column(sa.Column('event_time', monitor.store.models.UTCDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('consumer_offsets', schema=None) as batch_op:
        batch_op.drop_column('event_time')
