"""relabel cycles: cycles, their pairs, and pairwise review items of two turns

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30 07:00:00

A review item is unique per (conversation, turn, task key): "" for an item about the turn itself
(as before), "cycle:<id>:pair:<n>" for a relabeling cycle's pair, whose other turn is
``pair_turn_id``.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import monitor.store.models

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('relabel_cycles',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('idempotency_key', sa.String(length=128), nullable=True),
    sa.Column('request_digest', sa.String(length=64), nullable=False),
    sa.Column('request', sa.JSON(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('detail', sa.Text(), nullable=True),
    sa.Column('pairs', sa.Integer(), nullable=False),
    sa.Column('alert_id', sa.BigInteger(), nullable=True),
    sa.Column('created_by', sa.String(length=64), nullable=False),
    sa.Column('created_at', monitor.store.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', monitor.store.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('finished_at', monitor.store.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('deadline', monitor.store.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('results', sa.JSON(), nullable=True),
    sa.Column('event_published_at', monitor.store.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('webhook_delivered_at', monitor.store.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('webhook_attempts', sa.Integer(), nullable=False),
    sa.Column('webhook_next_at', monitor.store.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('webhook_error', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_relabel_cycles')),
    sa.UniqueConstraint('idempotency_key', name=op.f('uq_relabel_cycles_idempotency_key'))
    )
    op.create_index(op.f('ix_relabel_cycles_alert_id'), 'relabel_cycles', ['alert_id'], unique=False)
    op.create_index(op.f('ix_relabel_cycles_deadline'), 'relabel_cycles', ['deadline'], unique=False)
    op.create_index(op.f('ix_relabel_cycles_status'), 'relabel_cycles', ['status'], unique=False)
    op.create_table('relabel_pairs',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('cycle_id', sa.BigInteger(), nullable=False),
    sa.Column('item_id', sa.BigInteger(), nullable=False),
    sa.Column('turn_a', sa.BigInteger(), nullable=False),
    sa.Column('turn_b', sa.BigInteger(), nullable=True),
    sa.Column('formed_by', sa.String(length=32), nullable=False),
    sa.Column('similarity', sa.Float(), nullable=True),
    sa.Column('reward_a', sa.Float(), nullable=True),
    sa.Column('reward_b', sa.Float(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_relabel_pairs')),
    sa.UniqueConstraint('item_id', name=op.f('uq_relabel_pairs_item_id'))
    )
    op.create_index(op.f('ix_relabel_pairs_cycle_id'), 'relabel_pairs', ['cycle_id'], unique=False)
    with op.batch_alter_table('review_items', schema=None) as batch_op:
        batch_op.add_column(sa.Column('task_key', sa.String(length=64), server_default='', nullable=False))
        batch_op.add_column(sa.Column('cycle_id', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('pair_turn_id', sa.BigInteger(), nullable=True))
        batch_op.drop_constraint(batch_op.f('uq_review_items_conversation_id_turn'), type_='unique')
        batch_op.create_index(batch_op.f('ix_review_items_cycle_id'), ['cycle_id'], unique=False)
        batch_op.create_unique_constraint(batch_op.f('uq_review_items_conversation_id_turn_task_key'),
                                          ['conversation_id', 'turn', 'task_key'])


def downgrade() -> None:
    with op.batch_alter_table('review_items', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('uq_review_items_conversation_id_turn_task_key'), type_='unique')
        batch_op.drop_index(batch_op.f('ix_review_items_cycle_id'))
        batch_op.create_unique_constraint(batch_op.f('uq_review_items_conversation_id_turn'),
                                          ['conversation_id', 'turn'])
        batch_op.drop_column('pair_turn_id')
        batch_op.drop_column('cycle_id')
        batch_op.drop_column('task_key')
    op.drop_index(op.f('ix_relabel_pairs_cycle_id'), table_name='relabel_pairs')
    op.drop_table('relabel_pairs')
    op.drop_index(op.f('ix_relabel_cycles_status'), table_name='relabel_cycles')
    op.drop_index(op.f('ix_relabel_cycles_alert_id'), table_name='relabel_cycles')
    op.drop_index(op.f('ix_relabel_cycles_deadline'), table_name='relabel_cycles')
    op.drop_table('relabel_cycles')
