"""image and delta bytes may live outside the database: blobs.data may be empty (NULL: the
bytes are in the blob store, CLIPFIT_BLOB_URL), and blobs.touched_at says when a writer last
stored or named the blob (the garbage collector leaves younger blobs alone)

Revision ID: 0011
Revises: 0010
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from registry.migrate import foreign_keys_off_on_sqlite

revision: str = '0011'
down_revision: str | None = '0010'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with foreign_keys_off_on_sqlite(op), op.batch_alter_table('blobs') as batch:
        batch.alter_column('data', existing_type=sa.LargeBinary(), nullable=True)
        batch.add_column(sa.Column('touched_at', sa.DateTime(), nullable=True))
    blobs = sa.table('blobs', sa.column('created_at', sa.DateTime),
                     sa.column('touched_at', sa.DateTime))
    op.execute(blobs.update().values(touched_at=blobs.c.created_at))
    with foreign_keys_off_on_sqlite(op), op.batch_alter_table('blobs') as batch:
        batch.alter_column('touched_at', existing_type=sa.DateTime(), nullable=False)
        batch.create_index('ix_blobs_touched_at', ['touched_at'])


def downgrade() -> None:
    """Only while every blob's bytes are still in the database (``clipfit blobs migrate
    --to-database`` brings them back first)."""
    blobs = sa.table('blobs', sa.column('data', sa.LargeBinary))
    missing = op.get_bind().execute(
        sa.select(sa.func.count()).select_from(blobs).where(blobs.c.data.is_(None))).scalar()
    if missing:
        raise RuntimeError(f"{missing} blobs have their bytes in the blob store; run "
                           "'clipfit blobs migrate --to-database' before downgrading")
    with foreign_keys_off_on_sqlite(op), op.batch_alter_table('blobs') as batch:
        batch.drop_index('ix_blobs_touched_at')
        batch.drop_column('touched_at')
        batch.alter_column('data', existing_type=sa.LargeBinary(), nullable=False)
