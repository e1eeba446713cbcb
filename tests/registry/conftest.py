"""A fresh PostgreSQL database and a fresh SQLite file per session, migrated by Alembic."""

import pytest
from alembic import command
from sqlalchemy.orm import sessionmaker

from registry.db import make_engine
from registry.migrate import alembic_config


@pytest.fixture(scope="session")
def postgres_url(new_postgres_database):
    return new_postgres_database()


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('registry') / 'clipfit.sqlite3'}"


@pytest.fixture(scope="session", params=["postgres", "sqlite"])
def database_url(request):
    return request.getfixturevalue(f"{request.param}_url")


@pytest.fixture(scope="session")
def migrated(database_url):
    command.upgrade(alembic_config(database_url), "head")
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def session(migrated):
    with sessionmaker(migrated, expire_on_commit=False)() as s:
        yield s
        s.rollback()
