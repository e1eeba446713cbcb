"""The service against real parts: PostgreSQL, Redis, Celery worker processes, clipfit-tiny.

The API runs in the test process (FastAPI's TestClient); workers are ``clipfit worker``
processes started here, so killing one is a real crash.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import redis

from clipfit_core.synthetic import write_dataset

REDIS_DB = 11  # a database of its own on the local Redis, flushed at start and end
FINISHED = {"succeeded", "failed", "cancelled"}


@pytest.fixture(scope="session")
def service_env(new_postgres_database, tmp_path_factory):
    """Settings for the api (this process) and the workers (their environment)."""
    url = new_postgres_database()
    env = {
        "CLIPFIT_DATABASE_URL": url,
        "CLIPFIT_BROKER_URL": f"redis://127.0.0.1:6379/{REDIS_DB}",
        "CLIPFIT_DATA_DIR": str(tmp_path_factory.mktemp("data")),
        "CLIPFIT_BASE_MODELS": "clipfit-tiny",
        "CLIPFIT_PROGRESS_INTERVAL_SECONDS": "0.2",
        "CLIPFIT_DEVICE": "cpu",
        "CLIPFIT_MAX_ACTIVE_JOBS": "100",  # tests leave jobs queued; quotas are tested apart
        # one key makes every request of the session: rate limits are tested apart
        # (test_quotas, test_broker_outage), not left to whichever tests share a second
        "CLIPFIT_RATE_LIMIT": "",
        # the reconciler's clocks, shortened from minutes to seconds
        "CLIPFIT_HEARTBEAT_SECONDS": "0.5", "CLIPFIT_STALE_AFTER_SECONDS": "4",
        "CLIPFIT_RECONCILE_INTERVAL_SECONDS": "1", "CLIPFIT_REQUEUE_AFTER_SECONDS": "3",
    }
    return env


@pytest.fixture(scope="session")
def service_settings(service_env):
    """The same settings as an object, as the front door hands them to the API."""
    from registry.settings import Settings

    return Settings(**{k[len("CLIPFIT_"):].lower(): v for k, v in service_env.items()})


@pytest.fixture(scope="session")
def api(service_settings):
    """A TestClient on the app, configured for PostgreSQL + Redis, schema from Alembic."""
    from fastapi.testclient import TestClient

    from api.app import create_app
    from registry.db import get_engine
    from registry.migrate import upgrade

    client = redis.Redis(port=6379, db=REDIS_DB)
    client.flushdb()
    upgrade(service_settings.sqlalchemy_url)
    with TestClient(create_app(service_settings)) as test_client:
        test_client.headers["Authorization"] = f"Bearer {new_key(test_client, ['admin'])}"
        yield test_client
    get_engine(service_settings.sqlalchemy_url).dispose()
    client.flushdb()


def new_key(client, scopes: list[str], tenant: str = "default") -> str:
    """A key of ``tenant`` (created when missing) with ``scopes``, straight in the database."""
    from registry import crud

    with client.app.state.context.sessions() as session:
        found = crud.get_tenant_by_name(session, name=tenant)
        tenant_id = found.id if found else crud.create_tenant(session, name=tenant).id
        _, secret = crud.create_key(session, tenant_id=tenant_id, scopes=scopes)
        session.commit()
    return secret


def collect_released(client) -> None:
    """Run the blob collector as if its grace period had passed: what nothing names goes."""
    from datetime import timedelta

    from registry.blobs import collect_garbage
    from registry.db import get_engine
    from registry.models import utcnow

    context = client.app.state.context
    grace = timedelta(hours=context.settings.blob_gc_grace_hours)
    collect_garbage(get_engine(context.settings.sqlalchemy_url), grace=grace,
                    store=context.blobs, now=utcnow() + grace + timedelta(minutes=1))


@pytest.fixture
def db_session(api):
    """A session on the API's database."""
    with api.app.state.context.sessions() as session:
        yield session


def stop_process_group(proc: subprocess.Popen, grace: float = 30) -> None:
    """SIGTERM to a process started with start_new_session, SIGKILL after ``grace`` s."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


class Worker:
    """A ``clipfit worker`` process (prefork pool, one job at a time) in its own session."""

    def __init__(self, env: dict[str, str], log: Path, **extra_env: str):
        self.log = log
        self.handle = open(log, "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "clipfit", "worker", "--concurrency", "1",
             "--hostname", f"test{time.monotonic_ns()}@%h"],
            env=os.environ | env | extra_env, stdout=self.handle, stderr=subprocess.STDOUT,
            start_new_session=True)
        deadline = time.monotonic() + 60
        while " ready." not in log.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"worker did not start:\n{log.read_text()}")
            time.sleep(0.2)

    def kill(self) -> None:
        """A crash: SIGKILL to the worker and its pool process, nothing cleaned up."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.handle.close()

    def stop(self) -> None:
        stop_process_group(self.proc)
        self.handle.close()


@pytest.fixture
def start_worker(service_env, tmp_path):
    workers = []

    def start(**extra_env: str) -> Worker:
        worker = Worker(service_env, tmp_path / f"worker{len(workers)}.log", **extra_env)
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()


@pytest.fixture(scope="session")
def colour_set(tmp_path_factory) -> Path:
    """4 colour classes x 16 images: learnable by clipfit-tiny in seconds."""
    return write_dataset(tmp_path_factory.mktemp("colours"), per_class=16, seed=0)


def image_files(root: Path) -> tuple[list, list[str]]:
    """(multipart files, labels) for every image of a folder-per-class set."""
    files, labels = [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for path in sorted(folder.iterdir()):
            files.append(("images", (path.name, path.read_bytes(), "image/png")))
            labels.append(folder.name)
    return files, labels


def zip_folder(root: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for path in sorted(root.rglob("*.png")):
            z.write(path, path.relative_to(root).as_posix())
    return buf.getvalue()


def wait_for(client, job_id: str, predicate, timeout: float = 120.0, *,
             path: str = "/v1/jobs") -> dict:
    """The job (or, with ``path`` "/v1/predictions", the batch prediction) once
    ``predicate`` holds for it; fails after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        body = client.get(f"{path}/{job_id}").json()
        if predicate(body):
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out; {path}/{job_id} is {body}")
        time.sleep(0.2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A ``redis-server`` of a test module's own (never the machine's shared one), on a
    fixed port across stops and starts: stopped, it is a broker outage."""

    def __init__(self, root: Path):
        self.port, self.root = free_port(), root
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.root)], stdout=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
            finally:
                client.close()

    def stop(self) -> None:
        """Killed: the outage, as a crash or a lost node looks (no data kept)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def key(server) -> str:
    """The admin key of the module's ``server`` (a ``clipfit serve`` it starts)."""
    return server.client.headers["Authorization"].removeprefix("Bearer ")
