"""adapter versions per name (never reused: adapter_names), and aliases (name@alias)

Revision ID: 0006
Revises: 0005
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('adapters') as batch:
        batch.add_column(sa.Column('version', sa.Integer(), nullable=True))
        batch.create_unique_constraint('uq_adapters_name_version',
                                       ['tenant_id', 'name', 'version'])
    # adapters stored before: each name's adapters numbered by age
    adapters = sa.table('adapters', sa.column('id', sa.String), sa.column('tenant_id', sa.String),
                        sa.column('name', sa.String), sa.column('version', sa.Integer),
                        sa.column('created_at', sa.DateTime))
    connection = op.get_bind()
    rows = connection.execute(sa.select(adapters.c.id, adapters.c.tenant_id, adapters.c.name)
                              .where(adapters.c.name.is_not(None))
                              .order_by(adapters.c.created_at, adapters.c.id)).all()
    counters: dict[tuple[str, str], int] = {}
    for ident, tenant, name in rows:
        counters[(tenant, name)] = counters.get((tenant, name), 0) + 1
        connection.execute(adapters.update().where(adapters.c.id == ident)
                           .values(version=counters[(tenant, name)]))
    names = op.create_table(
        'adapter_names',
        sa.Column('tenant_id', sa.String(length=32), nullable=False),
        sa.Column('name', sa.String(length=200), nullable=False),
        sa.Column('last_version', sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name='fk_adapter_names_tenant'),
        sa.PrimaryKeyConstraint('tenant_id', 'name'),
    )
    if counters:
        op.bulk_insert(names, [{"tenant_id": t, "name": n, "last_version": v}
                               for (t, n), v in counters.items()])
    op.create_table(
        'adapter_aliases',
        sa.Column('id', sa.String(length=32), nullable=False),
        sa.Column('tenant_id', sa.String(length=32), nullable=False),
        sa.Column('name', sa.String(length=200), nullable=False),
        sa.Column('alias', sa.String(length=40), nullable=False),
        sa.Column('adapter_id', sa.String(length=32), nullable=False),
        sa.Column('updated_at', sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name='fk_aliases_tenant'),
        sa.ForeignKeyConstraint(['adapter_id'], ['adapters.id'], name='fk_aliases_adapter'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('tenant_id', 'name', 'alias', name='uq_adapter_aliases_name_alias'),
    )
    op.create_index('ix_adapter_aliases_tenant_id', 'adapter_aliases', ['tenant_id'])
    op.create_index('ix_adapter_aliases_adapter_id', 'adapter_aliases', ['adapter_id'])


def downgrade() -> None:
    op.drop_index('ix_adapter_aliases_adapter_id', table_name='adapter_aliases')
    op.drop_index('ix_adapter_aliases_tenant_id', table_name='adapter_aliases')
    op.drop_table('adapter_aliases')
    op.drop_table('adapter_names')
    with op.batch_alter_table('adapters') as batch:
        batch.drop_constraint('uq_adapters_name_version', type_='unique')
        batch.drop_column('version')
