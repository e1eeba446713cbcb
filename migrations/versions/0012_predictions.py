"""batch predictions: jobs.kind ("train" or "predict"; a prediction has no training dataset,
so jobs.dataset_id may be empty), and a prediction's own fields, images and finished chunks

Revision ID: 0012
Revises: 0011
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from registry.migrate import foreign_keys_off_on_sqlite

revision: str = '0012'
down_revision: str | None = '0011'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with foreign_keys_off_on_sqlite(op), op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column('kind', sa.String(length=16), nullable=False,
                                   server_default='train'))
        batch.alter_column('dataset_id', existing_type=sa.String(length=32), nullable=True)
    op.create_table(
        'predictions',
        sa.Column('job_id', sa.String(length=32), nullable=False),
        sa.Column('adapter_id', sa.String(length=32), nullable=True),
        sa.Column('adapter_ref', sa.String(length=300), nullable=True),
        sa.Column('classnames', sa.JSON(), nullable=False),
        sa.Column('top_k', sa.Integer(), nullable=False),
        sa.Column('temperature', sa.Double(), nullable=False),
        sa.Column('threshold', sa.Double(), nullable=True),
        sa.Column('source', sa.String(length=10), nullable=False),
        sa.Column('dataset_id', sa.String(length=32), nullable=True),
        sa.Column('images', sa.Integer(), nullable=False),
        sa.Column('chunk_size', sa.Integer(), nullable=False),
        sa.Column('classified', sa.Integer(), nullable=False),
        sa.Column('unknown', sa.Integer(), nullable=False),
        sa.Column('unreadable', sa.Integer(), nullable=False),
        sa.Column('results_jsonl_sha256', sa.String(length=64), nullable=True),
        sa.Column('results_csv_sha256', sa.String(length=64), nullable=True),
        sa.Column('results_bytes', sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name='fk_predictions_job',
                                ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['results_jsonl_sha256'], ['blobs.sha256'],
                                name='fk_predictions_jsonl_blob'),
        sa.ForeignKeyConstraint(['results_csv_sha256'], ['blobs.sha256'],
                                name='fk_predictions_csv_blob'),
        sa.PrimaryKeyConstraint('job_id'),
    )
    op.create_index('ix_predictions_results_jsonl_sha256', 'predictions',
                    ['results_jsonl_sha256'])
    op.create_index('ix_predictions_results_csv_sha256', 'predictions', ['results_csv_sha256'])
    op.create_table(
        'prediction_images',
        sa.Column('job_id', sa.String(length=32), nullable=False),
        sa.Column('position', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('blob_sha256', sa.String(length=64), nullable=False),
        sa.Column('filename', sa.String(length=512), nullable=False),
        sa.ForeignKeyConstraint(['job_id'], ['predictions.job_id'],
                                name='fk_prediction_images_prediction', ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['blob_sha256'], ['blobs.sha256'],
                                name='fk_prediction_images_blob'),
        sa.PrimaryKeyConstraint('job_id', 'position'),
    )
    op.create_index('ix_prediction_images_blob_sha256', 'prediction_images', ['blob_sha256'])
    op.create_table(
        'prediction_chunks',
        sa.Column('job_id', sa.String(length=32), nullable=False),
        sa.Column('chunk', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('attempt', sa.Integer(), nullable=False),
        sa.Column('rows', sa.JSON(), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(['job_id'], ['predictions.job_id'],
                                name='fk_prediction_chunks_prediction', ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('job_id', 'chunk'),
    )


def downgrade() -> None:
    """Batch predictions go with their tables (their result files become unnamed blobs)."""
    op.drop_table('prediction_chunks')
    op.drop_index('ix_prediction_images_blob_sha256', table_name='prediction_images')
    op.drop_table('prediction_images')
    op.drop_index('ix_predictions_results_csv_sha256', table_name='predictions')
    op.drop_index('ix_predictions_results_jsonl_sha256', table_name='predictions')
    op.drop_table('predictions')
    jobs = sa.table('jobs', sa.column('id', sa.String), sa.column('kind', sa.String))
    predict = sa.select(jobs.c.id).where(jobs.c.kind == 'predict')
    for table in ('job_events', 'idempotency_keys'):
        named = sa.table(table, sa.column('job_id', sa.String))
        op.execute(named.delete().where(named.c.job_id.in_(predict)))
    op.execute(jobs.delete().where(jobs.c.kind == 'predict'))
    with foreign_keys_off_on_sqlite(op), op.batch_alter_table('jobs') as batch:
        batch.alter_column('dataset_id', existing_type=sa.String(length=32), nullable=False)
        batch.drop_column('kind')
