"""a job's auto values and warm-start parent in columns of their own (they were mixed into
its hyperparameters); an adapter's hyperparameters are read from its config only (they were
stored twice)

Revision ID: 0007
Revises: 0006
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

METADATA = ("auto", "parent_adapter_id")


def upgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column('auto', sa.JSON(), nullable=True))
        batch.add_column(sa.Column('parent_adapter_id', sa.String(length=32), nullable=True))
    jobs = sa.table('jobs', sa.column('id', sa.String), sa.column('hyperparameters', sa.JSON),
                    sa.column('auto', sa.JSON), sa.column('parent_adapter_id', sa.String))
    connection = op.get_bind()
    for ident, values in connection.execute(sa.select(jobs.c.id, jobs.c.hyperparameters)):
        if isinstance(values, dict) and any(k in values for k in METADATA):
            connection.execute(jobs.update().where(jobs.c.id == ident).values(
                auto=values.get("auto"), parent_adapter_id=values.get("parent_adapter_id"),
                hyperparameters={k: v for k, v in values.items() if k not in METADATA}))
    with op.batch_alter_table('adapters') as batch:
        batch.drop_column('hyperparameters')


def downgrade() -> None:
    with op.batch_alter_table('adapters') as batch:
        batch.add_column(sa.Column('hyperparameters', sa.JSON(), nullable=True))
    adapters = sa.table('adapters', sa.column('id', sa.String), sa.column('config', sa.JSON),
                        sa.column('hyperparameters', sa.JSON))
    connection = op.get_bind()
    for ident, config in connection.execute(sa.select(adapters.c.id, adapters.c.config)):
        connection.execute(adapters.update().where(adapters.c.id == ident).values(
            hyperparameters=(config or {}).get("hyperparameters", {})))
    jobs = sa.table('jobs', sa.column('id', sa.String), sa.column('hyperparameters', sa.JSON),
                    sa.column('auto', sa.JSON), sa.column('parent_adapter_id', sa.String))
    rows = connection.execute(sa.select(jobs.c.id, jobs.c.hyperparameters, jobs.c.auto,
                                        jobs.c.parent_adapter_id)).all()
    for ident, values, auto, parent in rows:
        if auto or parent:
            connection.execute(jobs.update().where(jobs.c.id == ident).values(
                hyperparameters=dict(values or {}) | ({"auto": auto} if auto else {})
                | ({"parent_adapter_id": parent} if parent else {})))
    with op.batch_alter_table('jobs') as batch:
        batch.drop_column('parent_adapter_id')
        batch.drop_column('auto')
