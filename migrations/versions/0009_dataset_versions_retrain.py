"""dataset versions (parent_id, version: a dataset never changes once stored), the retrain of
a lineage from its labelled captures (captures.dataset_id and benchmark, jobs.retrain,
adapters.dataset_id and benchmark_images, capture_settings.retrain_after and promote) and
each lineage's benchmark set (benchmark_images)

Revision ID: 0009
Revises: 0008
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from registry.migrate import foreign_keys_off_on_sqlite

revision: str = '0009'
down_revision: str | None = '0008'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with foreign_keys_off_on_sqlite(op):
        _add_columns()
    # the adapters stored before: the dataset their job trained on
    adapters = sa.table('adapters', sa.column('job_id', sa.String),
                        sa.column('dataset_id', sa.String))
    jobs = sa.table('jobs', sa.column('id', sa.String), sa.column('dataset_id', sa.String))
    op.execute(adapters.update().where(adapters.c.job_id.is_not(None)).values(
        dataset_id=sa.select(jobs.c.dataset_id).where(jobs.c.id == adapters.c.job_id)
        .scalar_subquery()))
    _create_benchmark_images()


def _add_columns() -> None:
    with op.batch_alter_table('datasets') as batch:
        batch.add_column(sa.Column('parent_id', sa.String(length=32),
                                   sa.ForeignKey('datasets.id', name='fk_datasets_parent'),
                                   nullable=True))
        batch.add_column(sa.Column('version', sa.Integer(), nullable=False,
                                   server_default='1'))
        batch.create_index('ix_datasets_parent_id', ['parent_id'])
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column('retrain', sa.JSON(), nullable=True))
    with op.batch_alter_table('adapters') as batch:
        batch.add_column(sa.Column('dataset_id', sa.String(length=32),
                                   sa.ForeignKey('datasets.id', name='fk_adapters_dataset'),
                                   nullable=True))
        batch.add_column(sa.Column('benchmark_images', sa.Integer(), nullable=True))
    with op.batch_alter_table('captures') as batch:
        batch.add_column(sa.Column('dataset_id', sa.String(length=32),
                                   sa.ForeignKey('datasets.id', name='fk_captures_dataset'),
                                   nullable=True))
        batch.add_column(sa.Column('benchmark', sa.Boolean(), nullable=False,
                                   server_default=sa.false()))
    with op.batch_alter_table('capture_settings') as batch:
        batch.add_column(sa.Column('retrain_after', sa.Integer(), nullable=True))
        batch.add_column(sa.Column('promote', sa.String(length=10), nullable=False,
                                   server_default='manual'))


def _create_benchmark_images() -> None:
    op.create_table(
        'benchmark_images',
        sa.Column('tenant_id', sa.String(length=32), nullable=False),
        sa.Column('lineage', sa.String(length=200), nullable=False),
        sa.Column('position', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('blob_sha256', sa.String(length=64), nullable=False),
        sa.Column('label', sa.String(length=200), nullable=False),
        sa.Column('source', sa.String(length=10), nullable=False),
        sa.Column('capture_id', sa.String(length=32), nullable=True),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'],
                                name='fk_benchmark_images_tenant', ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['blob_sha256'], ['blobs.sha256'],
                                name='fk_benchmark_images_blob'),
        sa.PrimaryKeyConstraint('tenant_id', 'lineage', 'position'),
    )
    op.create_index('ix_benchmark_images_blob_sha256', 'benchmark_images', ['blob_sha256'])


def downgrade() -> None:
    # the benchmark sets go, with the image blobs that only they named
    op.drop_index('ix_benchmark_images_blob_sha256', table_name='benchmark_images')
    op.drop_table('benchmark_images')
    blobs = sa.table('blobs', sa.column('sha256', sa.String))
    named = [sa.select(sa.column(column)).select_from(sa.table(table)) for table, column in (
        ('dataset_images', 'blob_sha256'), ('adapters', 'weights_sha256'),
        ('captures', 'blob_sha256'))]
    op.execute(blobs.delete().where(blobs.c.sha256.not_in(sa.union(*named))))
    with foreign_keys_off_on_sqlite(op):
        with op.batch_alter_table('capture_settings') as batch:
            batch.drop_column('promote')
            batch.drop_column('retrain_after')
        with op.batch_alter_table('captures') as batch:
            batch.drop_column('benchmark')
            batch.drop_column('dataset_id')
        with op.batch_alter_table('adapters') as batch:
            batch.drop_column('benchmark_images')
            batch.drop_column('dataset_id')
        with op.batch_alter_table('jobs') as batch:
            batch.drop_column('retrain')
        with op.batch_alter_table('datasets') as batch:
            batch.drop_index('ix_datasets_parent_id')
            batch.drop_column('version')
            batch.drop_column('parent_id')
