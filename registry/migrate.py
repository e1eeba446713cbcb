"""Run the Alembic migrations in ``migrations/`` from code (``clipfit serve``, tests)."""

from __future__ import annotations

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
