"""Run the Alembic migrations in ``migrations/`` from code (``clipfit serve``, tests)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config

ROOT = Path(__file__).resolve().parents[1]


def alembic_config(url: str | None = None) -> Config:
    """The project's ``alembic.ini``; ``url`` overrides the settings' database URL."""
    ini = ROOT / "alembic.ini"
    if not ini.exists():
        raise FileNotFoundError(f"{ini} is missing: run clipfit from a checkout of the "
                                "project (pip install -e .)")
    config = Config(str(ini))
    if url:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    config.attributes["configure_logger"] = False
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Migrate the database at ``url`` to ``revision``."""
    command.upgrade(alembic_config(url), revision)


@contextmanager
def foreign_keys_off_on_sqlite(op) -> Iterator[None]:
    """For a migration (``op``: alembic's): SQLite adds a foreign key, drops a column or
    changes one by copying the table; with foreign keys on, dropping the old copy of a table
    others name would fail, or delete the rows that name it (cascades). Off for the copies
    (PRAGMA foreign_keys works only outside a transaction), on again after."""
    sqlite = op.get_bind().dialect.name == "sqlite"
    if sqlite:
        with op.get_context().autocommit_block():
            op.execute("PRAGMA foreign_keys=OFF")
    try:
        yield
    finally:
        if sqlite:
            with op.get_context().autocommit_block():
                op.execute("PRAGMA foreign_keys=ON")
