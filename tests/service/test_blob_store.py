"""The service with its bytes in a real S3-compatible store (SeaweedFS on a private port):
a job trained by a real worker process, classify, the store going away (503 with
Retry-After, nothing stored, nothing lost), and a backup restored (database dump + a copy of
the bucket) into a second service that answers the same."""

from __future__ import annotations

import subprocess
import time

import pytest
import redis
from sqlalchemy import func, select

from bench.objectstore import SeaweedFS
from registry import blob_moves
from registry.db import get_engine
from registry.models import Blob, Dataset

from .conftest import FINISHED, Worker, image_files, new_key, wait_for, zip_folder

REDIS_DB = 12
TRAIN = {"base_model": "clipfit-tiny", "epochs": "30", "lr": "0.1", "batch_size": "16",
         "val_fraction": "0.25", "seed": "1"}


def _settings(env: dict[str, str]):
    from registry.settings import Settings

    return Settings(**{k[len("CLIPFIT_"):].lower(): v for k, v in env.items()})


def _app(env: dict[str, str]):
    from fastapi.testclient import TestClient

    from api.app import create_app
    from registry.migrate import upgrade

    settings = _settings(env)
    upgrade(settings.sqlalchemy_url)
    client = TestClient(create_app(settings))
    client.__enter__()
    client.headers["Authorization"] = f"Bearer {new_key(client, ['admin'])}"
    return client


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with SeaweedFS(tmp_path_factory.mktemp("s3")) as store:
        yield store


@pytest.fixture(scope="module")
def s3_env(s3, new_postgres_database, tmp_path_factory):
    redis.Redis(port=6379, db=REDIS_DB).flushdb()
    return {"CLIPFIT_DATABASE_URL": new_postgres_database(),
            "CLIPFIT_BROKER_URL": f"redis://127.0.0.1:6379/{REDIS_DB}",
            "CLIPFIT_DATA_DIR": str(tmp_path_factory.mktemp("s3data")),
            "CLIPFIT_BASE_MODELS": "clipfit-tiny", "CLIPFIT_DEVICE": "cpu",
            "CLIPFIT_RATE_LIMIT": "", "CLIPFIT_PROGRESS_INTERVAL_SECONDS": "0.5",
            **s3.env("blobs")}


@pytest.fixture(scope="module")
def trained(s3_env, colour_set, tmp_path_factory):
    """The S3-backed service with one trained adapter: (client, adapter id)."""
    client = _app(s3_env)
    worker = Worker(s3_env, tmp_path_factory.mktemp("logs") / "worker.log")
    try:
        files, labels = image_files(colour_set)
        r = client.post("/v1/jobs", files=files, data={**TRAIN, "labels": labels})
        assert r.status_code == 202, r.text
        job = wait_for(client, r.json()["id"], lambda j: j["status"] in FINISHED, timeout=300)
        assert job["status"] == "succeeded", job
    finally:
        worker.stop()
    yield client, job["adapter_id"]
    client.__exit__(None, None, None)
    redis.Redis(port=6379, db=REDIS_DB).flushdb()


def _classify(client, adapter_id: str, images: list[bytes]):
    return client.post("/v1/classify", data={"adapter_id": adapter_id, "top_k": "2"},
                       files=[("images", (f"{i}.png", b, "image/png"))
                              for i, b in enumerate(images)])


def _after_retries(call, seconds: float = 30):
    """``call()``'s answer once it is not a 503 (as a client honouring Retry-After does: a
    store that has just come back may answer its first reads with an error a moment)."""
    deadline = time.monotonic() + seconds
    while True:
        answer = call()
        if answer.status_code != 503 or time.monotonic() > deadline:
            return answer
        time.sleep(1)


def _images(colour_set) -> list[bytes]:
    return [(colour_set / c / "0001.png").read_bytes() for c in ("red", "blue", "green")]


def test_images_and_deltas_live_in_the_bucket(trained, s3_env, colour_set):
    client, adapter_id = trained
    r = _classify(client, adapter_id, _images(colour_set))
    assert r.status_code == 200, r.text
    assert [p["label"] for p in r.json()["predictions"]] == ["red", "blue", "green"]
    engine = get_engine(s3_env["CLIPFIT_DATABASE_URL"])
    with engine.connect() as conn:  # the database holds names and sizes, no bytes
        assert conn.scalar(select(func.count()).select_from(Blob).where(
            Blob.data.is_not(None))) == 0
        assert conn.scalar(select(func.count()).select_from(Blob)) == 64 + 1  # images+delta
    checked = blob_moves.verify(engine, client.app.state.context.blobs, deep=True)
    assert (checked.in_store, checked.ok) == (65, True)


def test_a_store_that_is_away_answers_503_and_stores_nothing(trained, s3, colour_set):
    client, adapter_id = trained
    images = _images(colour_set)
    before = _classify(client, adapter_id, images).json()["predictions"]

    def datasets() -> int:
        with client.app.state.context.sessions() as s:
            return s.scalar(select(func.count()).select_from(Dataset))

    stored = datasets()
    s3.stop()
    try:
        r = client.post("/v1/datasets", files={"dataset": ("c.zip", zip_folder(colour_set))})
        assert r.status_code == 503 and int(r.headers["Retry-After"]) > 0, r.text
        assert r.json()["code"] == "unavailable" and "blob store" in r.json()["message"]
        assert datasets() == stored  # nothing half-stored
        files, labels = image_files(colour_set)
        r = client.post("/v1/jobs", files=files, data={**TRAIN, "labels": labels})
        assert r.status_code == 503 and r.headers["Retry-After"], r.text
        client.app.state.inference._deltas.clear()  # a delta not resident in this replica
        r = _classify(client, adapter_id, images)
        assert r.status_code == 503 and r.headers["Retry-After"], r.text
        # what needs no stored bytes goes on answering
        r = client.post("/v1/classify", data={"classes": ["red", "blue"],
                                              "base_model": "clipfit-tiny"},
                        files=[("images", ("0.png", images[0], "image/png"))])
        assert r.status_code == 200, r.text
        assert client.get("/v1/adapters").status_code == 200
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["blob_store"] != "ok"
    finally:
        s3.start()
    assert client.get("/readyz").json()["checks"]["blob_store"] == "ok"
    assert _after_retries(lambda: _classify(client, adapter_id, images)).json()[
        "predictions"] == before
    r = client.post("/v1/datasets", files={"dataset": ("c.zip", zip_folder(colour_set))})
    assert r.status_code == 201, r.text
    assert datasets() == stored + 1


def test_a_backup_restores_into_a_service_that_answers_the_same(
        trained, s3, s3_env, colour_set, new_postgres_database, tmp_path):
    """docs/operations.md's backup: the database first (pg_dump), then the bucket (any
    copy: here object by object); restored into a new database and bucket prefix."""
    client, adapter_id = trained
    images = _images(colour_set)
    answer = _after_retries(lambda: _classify(client, adapter_id, images)).json()["predictions"]
    source = s3_env["CLIPFIT_DATABASE_URL"].replace("postgresql+psycopg", "postgresql")
    dump = tmp_path / "clipfit.sql"
    subprocess.run(["pg_dump", "--no-owner", "-f", str(dump), source], check=True)
    s3_client = s3._client()
    copied = 0
    for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=s3.bucket,
                                                                    Prefix="blobs/"):
        for item in page.get("Contents", []):
            s3_client.copy_object(Bucket=s3.bucket, CopySource={"Bucket": s3.bucket,
                                                                "Key": item["Key"]},
                                  Key="restored/" + item["Key"].removeprefix("blobs/"))
            copied += 1
    assert copied >= 65
    target = new_postgres_database()
    subprocess.run(["psql", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(dump),
                    target.replace("postgresql+psycopg", "postgresql")], check=True,
                   capture_output=True)
    restored_env = {**s3_env, **s3.env("restored"), "CLIPFIT_DATABASE_URL": target,
                    "CLIPFIT_DATA_DIR": str(tmp_path / "data")}
    restored = _app(restored_env)
    try:
        started = time.monotonic()
        r = _classify(restored, adapter_id, images)
        assert r.status_code == 200, r.text
        assert r.json()["predictions"] == answer
        assert time.monotonic() - started < 60
        checked = blob_moves.verify(get_engine(target), restored.app.state.context.blobs,
                                    deep=True)
        assert checked.ok and checked.in_store >= 65 and checked.in_database == 0
    finally:
        restored.__exit__(None, None, None)
