"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-27 05:19:59.059203
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import monitor.store.models

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('consumer_offsets',
    sa.Column('group_id', sa.String(length=256), nullable=False),
    sa.Column('topic', sa.String(length=256), nullable=False),
    sa.Column('partition', sa.Integer(), nullable=False),
    sa.Column('next_offset', sa.BigInteger(), nullable=False),
    sa.Column('updated_at', monitor.store.models.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('group_id', 'topic', 'partition', name=op.f('pk_consumer_offsets'))
    )
    op.create_table('dead_letters',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('source_topic', sa.String(length=256), nullable=False),
    sa.Column('source_partition', sa.Integer(), nullable=False),
    sa.Column('source_offset', sa.BigInteger(), nullable=False),
    sa.Column('key', sa.LargeBinary(), nullable=True),
    sa.Column('raw', sa.LargeBinary(), nullable=False),
    sa.Column('reason', sa.String(length=32), nullable=False),
    sa.Column('detail', sa.Text(), nullable=False),
    sa.Column('received_at', monitor.store.models.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_dead_letters')),
    sa.UniqueConstraint('source_topic', 'source_partition', 'source_offset', name=op.f('uq_dead_letters_source_topic_source_partition_source_offset'))
    )
    with op.batch_alter_table('dead_letters', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_dead_letters_reason'), ['reason'], unique=False)

    op.create_table('ratings',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('event_id', sa.Uuid(), nullable=False),
    sa.Column('conversation_id', sa.String(length=256), nullable=False),
    sa.Column('turn', sa.Integer(), nullable=False),
    sa.Column('ts', monitor.store.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('value', sa.Float(), nullable=False),
    sa.Column('satisfaction', sa.Float(), nullable=False),
    sa.Column('reasons', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('comment', sa.Text(), nullable=True),
    sa.Column('joined', sa.Boolean(), nullable=False),
    sa.Column('source_topic', sa.String(length=256), nullable=False),
    sa.Column('source_partition', sa.Integer(), nullable=False),
    sa.Column('source_offset', sa.BigInteger(), nullable=False),
    sa.Column('ingested_at', monitor.store.models.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ratings')),
    sa.UniqueConstraint('event_id', name=op.f('uq_ratings_event_id'))
    )
    with op.batch_alter_table('ratings', schema=None) as batch_op:
        batch_op.create_index('ix_ratings_conversation_turn', ['conversation_id', 'turn'], unique=False)

    op.create_table('turns',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('event_id', sa.Uuid(), nullable=False),
    sa.Column('conversation_id', sa.String(length=256), nullable=False),
    sa.Column('turn', sa.Integer(), nullable=False),
    sa.Column('ts', monitor.store.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('model_version', sa.String(length=128), nullable=False),
    sa.Column('domain', sa.String(length=64), nullable=False),
    sa.Column('locale', sa.String(length=32), nullable=True),
    sa.Column('channel', sa.String(length=32), nullable=True),
    sa.Column('messages', sa.JSON(), nullable=False),
    sa.Column('prompt', sa.Text(), nullable=False),
    sa.Column('response', sa.Text(), nullable=False),
    sa.Column('producer_reward', sa.Float(), nullable=True),
    sa.Column('score', sa.Float(), nullable=True),
    sa.Column('scorer', sa.String(length=256), nullable=True),
    sa.Column('score_error', sa.Text(), nullable=True),
    sa.Column('satisfaction', sa.Float(), nullable=True),
    sa.Column('rating_count', sa.Integer(), nullable=False),
    sa.Column('rated_at', monitor.store.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('source_topic', sa.String(length=256), nullable=False),
    sa.Column('source_partition', sa.Integer(), nullable=False),
    sa.Column('source_offset', sa.BigInteger(), nullable=False),
    sa.Column('ingested_at', monitor.store.models.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_turns')),
    sa.UniqueConstraint('conversation_id', 'turn', name=op.f('uq_turns_conversation_id_turn')),
    sa.UniqueConstraint('event_id', name=op.f('uq_turns_event_id'))
    )
    with op.batch_alter_table('turns', schema=None) as batch_op:
        batch_op.create_index('ix_turns_domain_ts', ['domain', 'ts'], unique=False)
        batch_op.create_index(batch_op.f('ix_turns_ts'), ['ts'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('turns', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_turns_ts'))
        batch_op.drop_index('ix_turns_domain_ts')

    op.drop_table('turns')
    with op.batch_alter_table('ratings', schema=None) as batch_op:
        batch_op.drop_index('ix_ratings_conversation_turn')

    op.drop_table('ratings')
    with op.batch_alter_table('dead_letters', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_dead_letters_reason'))

    op.drop_table('dead_letters')
    op.drop_table('consumer_offsets')
