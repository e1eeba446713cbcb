"""what each adapter answered per hour (served_stats: counts, unknown, low confidence,
captured, a histogram of the top probability) and when its drift was last reported
(drift_alerts)

Revision ID: 0010
Revises: 0009
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0010'
down_revision: str | None = '0009'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'served_stats',
        sa.Column('tenant_id', sa.String(length=32), nullable=False),
        sa.Column('adapter_id', sa.String(length=32), nullable=False),
        sa.Column('hour', sa.DateTime(), nullable=False),
        sa.Column('predictions', sa.Integer(), nullable=False),
        sa.Column('unknown', sa.Integer(), nullable=False),
        sa.Column('low_confidence', sa.Integer(), nullable=False),
        sa.Column('captured', sa.Integer(), nullable=False),
        sa.Column('histogram', sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint('tenant_id', 'adapter_id', 'hour'),
    )
    op.create_index('ix_served_stats_hour', 'served_stats', ['hour'])
    op.create_table(
        'drift_alerts',
        sa.Column('adapter_id', sa.String(length=32), nullable=False),
        sa.Column('tenant_id', sa.String(length=32), nullable=False),
        sa.Column('fired_at', sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint('adapter_id'),
    )
    op.create_index('ix_drift_alerts_fired_at', 'drift_alerts', ['fired_at'])


def downgrade() -> None:
    op.drop_index('ix_drift_alerts_fired_at', table_name='drift_alerts')
    op.drop_table('drift_alerts')
    op.drop_index('ix_served_stats_hour', table_name='served_stats')
    op.drop_table('served_stats')
