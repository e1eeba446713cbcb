"""Engines and sessions for a database URL (the caller passes the URL; nothing global)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool


def make_engine(url: str, *, pooled: bool = True) -> Engine:
    """An engine; SQLite gets foreign keys, WAL and a busy timeout (api + worker share it).
    ``pooled=False`` keeps no connection open between uses (safe across a fork)."""
    pool = {} if pooled else {"poolclass": NullPool}
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False},
                               **pool)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection, _record):
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True, **pool)


@lru_cache
def get_engine(url: str) -> Engine:
    """One engine (one connection pool) per URL in this process, made on first use."""
    return make_engine(url)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session whose transaction commits on success and rolls back on error."""
    with session_factory(engine)() as session, session.begin():
        yield session


def owned(query, model, tenant_id: str | None):
    """Rows of ``tenant_id`` only (None: any tenant, for the workers and admins)."""
    return query if tenant_id is None else query.where(model.tenant_id == tenant_id)
