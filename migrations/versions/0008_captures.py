"""capture settings per adapter lineage, and the captured classify images kept for review

Revision ID: 0008
Revises: 0007
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0008'
down_revision: str | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'capture_settings',
        sa.Column('tenant_id', sa.String(length=32), nullable=False),
        sa.Column('lineage', sa.String(length=200), nullable=False),
        sa.Column('alias', sa.String(length=40), nullable=True),
        sa.Column('sample_rate', sa.Double(), nullable=True),
        sa.Column('below_confidence', sa.Double(), nullable=True),
        sa.Column('unknown', sa.Boolean(), nullable=False),
        sa.Column('classes', sa.JSON(), nullable=True),
        sa.Column('max_per_hour', sa.Integer(), nullable=True),
        sa.Column('max_per_day', sa.Integer(), nullable=True),
        sa.Column('retention_days', sa.Integer(), nullable=False),
        sa.Column('updated_at', sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'],
                                name='fk_capture_settings_tenant', ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('tenant_id', 'lineage'),
    )
    op.create_table(
        'captures',
        sa.Column('id', sa.String(length=32), nullable=False),
        sa.Column('tenant_id', sa.String(length=32), nullable=False),
        sa.Column('lineage', sa.String(length=200), nullable=False),
        sa.Column('adapter_id', sa.String(length=32), nullable=False),
        sa.Column('blob_sha256', sa.String(length=64), nullable=False),
        sa.Column('size_bytes', sa.Integer(), nullable=False),
        sa.Column('media_type', sa.String(length=50), nullable=False),
        sa.Column('filename', sa.String(length=512), nullable=False),
        sa.Column('predicted', sa.String(length=200), nullable=False),
        sa.Column('confidence', sa.Double(), nullable=False),
        sa.Column('unknown', sa.Boolean(), nullable=False),
        sa.Column('top_k', sa.JSON(), nullable=False),
        sa.Column('rule', sa.String(length=20), nullable=False),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('label', sa.String(length=200), nullable=True),
        sa.Column('new_class', sa.Boolean(), nullable=False),
        sa.Column('labelled_at', sa.DateTime(), nullable=True),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.Column('expires_at', sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name='fk_captures_tenant',
                                ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['blob_sha256'], ['blobs.sha256'], name='fk_captures_blob'),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_captures_lineage_created', 'captures',
                    ['tenant_id', 'lineage', 'created_at'])
    op.create_index('ix_captures_expires_at', 'captures', ['expires_at'])
    op.create_index('ix_captures_blob_sha256', 'captures', ['blob_sha256'])


def downgrade() -> None:
    op.drop_index('ix_captures_blob_sha256', table_name='captures')
    op.drop_index('ix_captures_expires_at', table_name='captures')
    op.drop_index('ix_captures_lineage_created', table_name='captures')
    op.drop_table('captures')
    op.drop_table('capture_settings')
