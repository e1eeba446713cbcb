import uuid

import psycopg
import pytest
import torch

from clipfit_core.models import create_base_model
from clipfit_core.synthetic import write_dataset

torch.set_num_threads(min(2, torch.get_num_threads()))


PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


@pytest.fixture(scope="session")
def new_postgres_database():
    """A factory of empty PostgreSQL databases (URLs), dropped at the end of the session."""
    names = []

    def create() -> str:
        name = f"clipfit_test_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        names.append(name)
        return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"

    yield create
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        for name in names:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def tiny():
    """A shared clipfit-tiny base; tests that train must leave it as they found it."""
    return create_base_model("clipfit-tiny")


@pytest.fixture(scope="session")
def colour_train(tmp_path_factory):
    """16 training images for each of 4 colour classes."""
    return write_dataset(tmp_path_factory.mktemp("train"), per_class=16, seed=0)


@pytest.fixture(scope="session")
def colour_test(tmp_path_factory):
    """30 held-out images per class, drawn with another seed."""
    return write_dataset(tmp_path_factory.mktemp("test"), per_class=30, seed=1)
