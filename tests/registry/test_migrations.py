from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from registry.db import make_engine
from registry.migrate import alembic_config
from registry.models import Base

TABLES = {"blobs", "datasets", "dataset_images", "jobs", "job_events", "adapters", "tenants",
          "api_keys", "idempotency_keys", "webhook_endpoints", "webhook_deliveries",
          "capture_settings", "captures", "benchmark_images", "served_stats",
          "drift_alerts", "predictions", "prediction_images", "prediction_chunks"}


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


def test_0009_keeps_every_row_both_ways(database_url, tmp_path, new_postgres_database):
    """Dataset versions and retrain columns are added to tables that hold data; on SQLite a
    dropped column copies its table, which must not take the rows that name it along
    (dataset_images cascade from datasets)."""
    from sqlalchemy import text

    url = f"sqlite:///{tmp_path / 'rows.sqlite3'}" if database_url.startswith("sqlite") \
        else new_postgres_database()
    config, engine = alembic_config(url), make_engine(url)
    command.upgrade(config, "0008")
    rows = {
        "tenants": "INSERT INTO tenants (id, name, created_at) VALUES ('t', 't9', '2026-01-01')",
        "blobs": "INSERT INTO blobs (sha256, size, data, created_at) VALUES ('b', 1, :data, "
                 "'2026-01-01')",
        "datasets": "INSERT INTO datasets (id, tenant_id, classnames, created_at) VALUES "
                    "('d', 't', '[\"a\"]', '2026-01-01')",
        "dataset_images": "INSERT INTO dataset_images (dataset_id, position, blob_sha256, "
                          "label, filename) VALUES ('d', 0, 'b', 0, 'x.png')",
        "jobs": "INSERT INTO jobs (id, tenant_id, status, dataset_id, base_model, templates, "
                "hyperparameters, attempts, cancel_requested, created_at) VALUES ('j', 't', "
                "'succeeded', 'd', 'm', '[]', '{}', 1, false, '2026-01-01')",
        "job_events": "INSERT INTO job_events (job_id, kind, payload, created_at) VALUES "
                      "('j', 'queued', '{}', '2026-01-01')",
        "adapters": "INSERT INTO adapters (id, tenant_id, job_id, name, version, base_model, "
                    "base_fingerprint, classnames, templates, metrics, config, "
                    "trainable_count, weights_sha256, size_bytes, created_at) VALUES ('a', "
                    "'t', 'j', 'n', 1, 'm', 'f', '[]', '[]', '{}', '{}', 0, 'b', 1, "
                    "'2026-01-01')",
        "captures": "INSERT INTO captures (id, tenant_id, lineage, adapter_id, blob_sha256, "
                    "size_bytes, media_type, filename, predicted, confidence, unknown, top_k, "
                    "rule, state, new_class, created_at, expires_at) VALUES ('c', 't', 'n', "
                    "'a', 'b', 1, 'image/png', 'x.png', 'a', 0.5, false, '[]', 'unknown', "
                    "'pending', false, '2026-01-01', '2026-02-01')",
        "capture_settings": "INSERT INTO capture_settings (tenant_id, lineage, unknown, "
                            "retention_days, updated_at) VALUES ('t', 'n', true, 30, "
                            "'2026-01-01')",
    }
    with engine.begin() as conn:
        for sql in rows.values():
            conn.execute(text(sql), {"data": b"x"} if ":data" in sql else {})

    def counts() -> dict[str, int]:
        with engine.connect() as conn:
            return {t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar() for t in rows}

    before = counts()
    assert min(before.values()) == 1  # the default tenant is there too
    command.upgrade(config, "head")
    assert counts() == before
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version, parent_id FROM datasets")).one() == (1, None)
        assert conn.execute(text("SELECT dataset_id FROM adapters")).scalar() == "d"
        assert conn.execute(text("SELECT benchmark, dataset_id FROM captures")).one() == \
            (False, None)
        assert conn.execute(text("SELECT promote FROM capture_settings")).scalar() == "manual"
    command.downgrade(config, "0008")
    assert counts() == before
    with engine.connect() as conn:  # and foreign keys are still enforced on SQLite
        if url.startswith("sqlite"):
            assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
    engine.dispose()


def test_0012_keeps_training_jobs_as_they_were(database_url, tmp_path, new_postgres_database):
    """jobs gains a kind (existing rows: train) and an optional dataset; on SQLite the table
    is copied, which must not take the rows that name it (events, adapters) along."""
    from sqlalchemy import text

    url = f"sqlite:///{tmp_path / 'kind.sqlite3'}" if database_url.startswith("sqlite") \
        else new_postgres_database()
    config, engine = alembic_config(url), make_engine(url)
    command.upgrade(config, "0011")
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO datasets (id, tenant_id, classnames, version, created_at)"
                          " VALUES ('d', 'default', '[\"a\"]', 1, '2026-01-01')"))
        conn.execute(text("INSERT INTO jobs (id, tenant_id, status, dataset_id, base_model, "
                          "templates, hyperparameters, attempts, cancel_requested, created_at) "
                          "VALUES ('j', 'default', 'succeeded', 'd', 'm', '[]', '{}', 1, false, "
                          "'2026-01-01')"))
        conn.execute(text("INSERT INTO job_events (job_id, kind, payload, created_at) VALUES "
                          "('j', 'queued', '{}', '2026-01-01')"))
    command.upgrade(config, "0012")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT kind, dataset_id FROM jobs")).all() == [("train", "d")]
        assert conn.execute(text("SELECT count(*) FROM job_events")).scalar() == 1
    command.downgrade(config, "0011")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT id FROM jobs")).all() == [("j",)]
        assert conn.execute(text("SELECT count(*) FROM job_events")).scalar() == 1
    engine.dispose()
