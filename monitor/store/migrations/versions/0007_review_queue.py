"""review queue: items (redacted text, arm, inclusion probability), leases, annotations, audit, sampling cursors

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 06:00:00

The shadow human evaluation queue (monitor.review). Items hold redacted text only. Turns gain
the optional alternative responses of conversation/v1 (``candidates``) for pairwise review.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import monitor.store.models

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('turns', schema=None) as batch_op:
        batch_op.add_column(sa.Column('candidates', sa.JSON(), nullable=True))
    op.create_table('review_annotations',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('item_id', sa.BigInteger(), nullable=False),
    sa.Column('annotator', sa.String(length=64), nullable=False),
    sa.Column('rubric_version', sa.String(length=32), nullable=False),
    sa.Column('labels', sa.JSON(), nullable=False),
    sa.Column('comment', sa.Text(), nullable=True),
    sa.Column('revision', sa.Integer(), nullable=False),
    sa.Column('created_at', monitor.store.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', monitor.store.models.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_review_annotations')),
    sa.UniqueConstraint('item_id', 'annotator', name=op.f('uq_review_annotations_item_id_annotator'))
    )
    op.create_index(op.f('ix_review_annotations_annotator'), 'review_annotations', ['annotator'], unique=False)
    op.create_index(op.f('ix_review_annotations_item_id'), 'review_annotations', ['item_id'], unique=False)
    op.create_table('review_audit',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('item_id', sa.BigInteger(), nullable=True),
    sa.Column('actor', sa.String(length=64), nullable=False),
    sa.Column('action', sa.String(length=16), nullable=False),
    sa.Column('rubric_version', sa.String(length=32), nullable=True),
    sa.Column('detail', sa.JSON(), nullable=False),
    sa.Column('at', monitor.store.models.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_review_audit'))
    )
    op.create_index(op.f('ix_review_audit_at'), 'review_audit', ['at'], unique=False)
    op.create_index(op.f('ix_review_audit_item_id'), 'review_audit', ['item_id'], unique=False)
    op.create_table('review_items',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('turn_id', sa.BigInteger(), nullable=False),
    sa.Column('event_id', sa.String(length=64), nullable=False),
    sa.Column('conversation_id', sa.String(length=256), nullable=False),
    sa.Column('turn', sa.Integer(), nullable=False),
    sa.Column('turn_ts', monitor.store.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('segment', sa.String(length=256), nullable=False),
    sa.Column('domain', sa.String(length=64), nullable=False),
    sa.Column('mode', sa.String(length=32), nullable=True),
    sa.Column('arm', sa.String(length=16), nullable=False),
    sa.Column('inclusion_probability', sa.Float(), nullable=False),
    sa.Column('priority', sa.Float(), nullable=False),
    sa.Column('alert_id', sa.BigInteger(), nullable=True),
    sa.Column('divergence', sa.Float(), nullable=True),
    sa.Column('reward', sa.Float(), nullable=True),
    sa.Column('rm_prediction', sa.Float(), nullable=True),
    sa.Column('reference_satisfaction', sa.Float(), nullable=True),
    sa.Column('context', sa.JSON(), nullable=False),
    sa.Column('prompt', sa.Text(), nullable=False),
    sa.Column('response', sa.Text(), nullable=False),
    sa.Column('candidates', sa.JSON(), nullable=True),
    sa.Column('duplicates', sa.Integer(), nullable=False),
    sa.Column('reviews_required', sa.Integer(), nullable=False),
    sa.Column('reviews_done', sa.Integer(), nullable=False),
    sa.Column('active_leases', sa.Integer(), nullable=False),
    sa.Column('gold', sa.JSON(), nullable=True),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('created_at', monitor.store.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('completed_at', monitor.store.models.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_review_items')),
    sa.UniqueConstraint('conversation_id', 'turn', name=op.f('uq_review_items_conversation_id_turn'))
    )
    op.create_index(op.f('ix_review_items_alert_id'), 'review_items', ['alert_id'], unique=False)
    op.create_index(op.f('ix_review_items_created_at'), 'review_items', ['created_at'], unique=False)
    op.create_index(op.f('ix_review_items_segment'), 'review_items', ['segment'], unique=False)
    op.create_index('ix_review_items_state_priority', 'review_items', ['state', 'priority'], unique=False)
    op.create_index(op.f('ix_review_items_turn_id'), 'review_items', ['turn_id'], unique=False)
    op.create_index(op.f('ix_review_items_turn_ts'), 'review_items', ['turn_ts'], unique=False)
    op.create_table('review_leases',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('item_id', sa.BigInteger(), nullable=False),
    sa.Column('annotator', sa.String(length=64), nullable=False),
    sa.Column('leased_at', monitor.store.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('expires_at', monitor.store.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('ended_at', monitor.store.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('outcome', sa.String(length=16), nullable=True),
    sa.Column('skip_reason', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_review_leases'))
    )
    op.create_index(op.f('ix_review_leases_annotator'), 'review_leases', ['annotator'], unique=False)
    op.create_index('ix_review_leases_open', 'review_leases', ['item_id', 'outcome'], unique=False)
    op.create_table('review_sampling',
    sa.Column('segment', sa.String(length=256), nullable=False),
    sa.Column('until', monitor.store.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('day', sa.String(length=10), nullable=False),
    sa.Column('spent', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('segment', name=op.f('pk_review_sampling'))
    )


def downgrade() -> None:
    with op.batch_alter_table('turns', schema=None) as batch_op:
        batch_op.drop_column('candidates')
    op.drop_table('review_sampling')
    op.drop_index('ix_review_leases_open', table_name='review_leases')
    op.drop_index(op.f('ix_review_leases_annotator'), table_name='review_leases')
    op.drop_table('review_leases')
    op.drop_index(op.f('ix_review_items_turn_ts'), table_name='review_items')
    op.drop_index(op.f('ix_review_items_turn_id'), table_name='review_items')
    op.drop_index('ix_review_items_state_priority', table_name='review_items')
    op.drop_index(op.f('ix_review_items_segment'), table_name='review_items')
    op.drop_index(op.f('ix_review_items_created_at'), table_name='review_items')
    op.drop_index(op.f('ix_review_items_alert_id'), table_name='review_items')
    op.drop_table('review_items')
    op.drop_index(op.f('ix_review_audit_item_id'), table_name='review_audit')
    op.drop_index(op.f('ix_review_audit_at'), table_name='review_audit')
    op.drop_table('review_audit')
    op.drop_index(op.f('ix_review_annotations_item_id'), table_name='review_annotations')
    op.drop_index(op.f('ix_review_annotations_annotator'), table_name='review_annotations')
    op.drop_table('review_annotations')
