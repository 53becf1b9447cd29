"""api keys: hashed keys with a name and a role

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 23:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import monitor.store.models

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'api_keys',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('name', sa.String(length=64), nullable=False),
        sa.Column('role', sa.String(length=16), nullable=False),
        sa.Column('digest', sa.String(length=64), nullable=False),
        sa.Column('prefix', sa.String(length=16), nullable=False),
        sa.Column('created_at', monitor.store.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column('revoked_at', monitor.store.models.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_api_keys')),
        sa.UniqueConstraint('name', name=op.f('uq_api_keys_name')),
        sa.UniqueConstraint('digest', name=op.f('uq_api_keys_digest')),
    )


def downgrade() -> None:
    op.drop_table('api_keys')
