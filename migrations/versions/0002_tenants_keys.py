"""tenants and API keys; every dataset, job and adapter belongs to a tenant; idempotency keys
per tenant with the request's hash

Existing rows go to the tenant 'default'. Idempotency keys of existing jobs are not carried
over (they were global and without a request hash; they expire anyway).

Revision ID: 0002
Revises: 0001
"""
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OWNED = ("datasets", "jobs", "adapters")


def upgrade() -> None:
    tenants = op.create_table(
        'tenants',
        sa.Column('id', sa.String(length=32), nullable=False),
        sa.Column('name', sa.String(length=100), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('name', name='uq_tenants_name'),
    )
    op.bulk_insert(tenants, [{"id": "default", "name": "default",
                              "created_at": datetime.now(UTC).replace(tzinfo=None)}])
    op.create_table(
        'api_keys',
        sa.Column('id', sa.String(length=32), nullable=False),
        sa.Column('tenant_id', sa.String(length=32), nullable=False),
        sa.Column('name', sa.String(length=100), nullable=True),
        sa.Column('prefix', sa.String(length=16), nullable=False),
        sa.Column('key_hash', sa.String(length=64), nullable=False),
        sa.Column('scopes', sa.JSON(), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.Column('revoked_at', sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name='fk_api_keys_tenant'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('key_hash', name='uq_api_keys_key_hash'),
    )
    for table in OWNED:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column('tenant_id', sa.String(length=32), nullable=False,
                                       server_default='default'))
            batch.create_foreign_key(f'fk_{table}_tenant', 'tenants', ['tenant_id'], ['id'])
            batch.create_index(f'ix_{table}_tenant_id', ['tenant_id'])
    op.create_table(
        'idempotency_keys',
        sa.Column('tenant_id', sa.String(length=32), nullable=False),
        sa.Column('key', sa.String(length=200), nullable=False),
        sa.Column('request_hash', sa.String(length=64), nullable=False),
        sa.Column('job_id', sa.String(length=32), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name='fk_idempotency_tenant'),
        sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name='fk_idempotency_job',
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('tenant_id', 'key'),
    )
    with op.batch_alter_table('jobs') as batch:
        batch.drop_column('idempotency_key')


def downgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column('idempotency_key', sa.String(length=200), nullable=True))
        batch.create_unique_constraint('uq_jobs_idempotency_key', ['idempotency_key'])
    op.drop_table('idempotency_keys')
    for table in OWNED:
        with op.batch_alter_table(table) as batch:
            batch.drop_index(f'ix_{table}_tenant_id')
            batch.drop_constraint(f'fk_{table}_tenant', type_='foreignkey')
            batch.drop_column('tenant_id')
    op.drop_table('api_keys')
    op.drop_table('tenants')
