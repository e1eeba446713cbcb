from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from registry.db import make_engine
from registry.migrate import alembic_config
from registry.models import Base

TABLES = {"blobs", "datasets", "dataset_images", "jobs", "job_events", "adapters", "tenants",
          "api_keys", "idempotency_keys", "webhook_endpoints", "webhook_deliveries",
          "capture_settings", "captures"}


def test_upgrade_downgrade_upgrade_and_models_match(database_url, tmp_path):
    # a database of its own, so the shared migrated one is left alone
    if database_url.startswith("sqlite"):
        url = f"sqlite:///{tmp_path / 'updown.sqlite3'}"
    else:
        url = database_url  # the session database is migrated here first, then kept at head
    config = alembic_config(url)
    engine = make_engine(url)
    command.upgrade(config, "head")
    assert TABLES <= set(inspect(engine).get_table_names())
    with engine.connect() as conn:  # the models and the migrations describe one schema
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}),
                                Base.metadata)
    assert diff == []
    command.downgrade(config, "base")
    assert not TABLES & set(inspect(engine).get_table_names())
    command.upgrade(config, "head")
    assert TABLES <= set(inspect(engine).get_table_names())
    engine.dispose()
