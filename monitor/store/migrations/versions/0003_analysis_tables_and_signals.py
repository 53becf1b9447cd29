"""analysis tables and signals

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 08:57:10.147791
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import monitor.store.models

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('alerts',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('key', sa.String(length=512), nullable=False),
    sa.Column('segment', sa.String(length=256), nullable=False),
    sa.Column('detector', sa.String(length=32), nullable=False),
    sa.Column('direction', sa.String(length=8), nullable=False),
    sa.Column('mode', sa.String(length=32), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('started_at', monitor.store.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('resolved_at', monitor.store.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('first_seen_at', monitor.store.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', monitor.store.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('evidence', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('published_state', sa.String(length=16), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_alerts')),
    sa.UniqueConstraint('key', name=op.f('uq_alerts_key'))
    )
    with op.batch_alter_table('alerts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_alerts_segment'), ['segment'], unique=False)
        batch_op.create_index('ix_alerts_state_started', ['state', 'started_at'], unique=False)

    op.create_table('analysis_runs',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('started_at', monitor.store.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('finished_at', monitor.store.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('watermark', monitor.store.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('labelled', sa.Integer(), nullable=False),
    sa.Column('segments', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('drift_summary', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('drift_html', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_analysis_runs'))
    )
    op.create_table('calibrations',
    sa.Column('segment', sa.String(length=256), nullable=False),
    sa.Column('fitted_at', monitor.store.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('reference_from', monitor.store.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('reference_to', monitor.store.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('labels', sa.Integer(), nullable=False),
    sa.Column('scorer', sa.String(length=256), nullable=True),
    sa.Column('params', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.PrimaryKeyConstraint('segment', name=op.f('pk_calibrations'))
    )
    with op.batch_alter_table('turns', schema=None) as batch_op:
        batch_op.add_column(sa.Column('sig_length_tokens', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('sig_length_ratio', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('sig_markdown_density', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('sig_sycophancy', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('sig_hedging', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('sig_refusal', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('sig_overpromise', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('sig_compliance_missing', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('sig_repetition', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('prompt_harmful', sa.Boolean(), nullable=True))
        batch_op.add_column(sa.Column('prompt_risk_source', sa.String(length=16), nullable=True))



def downgrade() -> None:
    with op.batch_alter_table('turns', schema=None) as batch_op:
        batch_op.drop_column('prompt_risk_source')
        batch_op.drop_column('prompt_harmful')
        batch_op.drop_column('sig_repetition')
        batch_op.drop_column('sig_compliance_missing')
        batch_op.drop_column('sig_overpromise')
        batch_op.drop_column('sig_refusal')
        batch_op.drop_column('sig_hedging')
        batch_op.drop_column('sig_sycophancy')
        batch_op.drop_column('sig_markdown_density')
        batch_op.drop_column('sig_length_ratio')
        batch_op.drop_column('sig_length_tokens')

    op.drop_table('calibrations')
    op.drop_table('analysis_runs')
    with op.batch_alter_table('alerts', schema=None) as batch_op:
        batch_op.drop_index('ix_alerts_state_started')
        batch_op.drop_index(batch_op.f('ix_alerts_segment'))

    op.drop_table('alerts')
