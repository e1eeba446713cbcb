"""A Redis (broker) outage breaks nothing that does not need the broker.

A private ``redis-server`` (its own port, no persistence) is stopped and started again while
the API (in this process) and a ``clipfit worker`` process use it: reads, classify, key
checks and uploads answer as usual, a job submitted meanwhile is stored queued (202) and the
reconciler sends it once Redis is back. Quotas alone: counted in memory while Redis is away,
in Redis again once it answers.
"""

from __future__ import annotations

import base64
import time
from pathlib import Path

import pytest
import redis

from .conftest import (
    FINISHED,
    RedisServer,
    Worker,
    image_files,
    new_key,
    wait_for,
    zip_folder,
)

TRAIN = {"base_model": "clipfit-tiny", "epochs": "2", "lr": "0.1", "batch_size": "16",
         "val_fraction": "0.25", "seed": "1"}


@pytest.fixture(scope="module")
def outage_env(new_postgres_database, redis_server, tmp_path_factory) -> dict[str, str]:
    return {
        "CLIPFIT_DATABASE_URL": new_postgres_database(),
        "CLIPFIT_BROKER_URL": redis_server.url,
        "CLIPFIT_DATA_DIR": str(tmp_path_factory.mktemp("data")),
        "CLIPFIT_BASE_MODELS": "clipfit-tiny", "CLIPFIT_DEVICE": "cpu",
        "CLIPFIT_PROGRESS_INTERVAL_SECONDS": "0.2",
        # the reconciler's clocks, shortened from minutes to seconds
        "CLIPFIT_HEARTBEAT_SECONDS": "0.5", "CLIPFIT_STALE_AFTER_SECONDS": "4",
        "CLIPFIT_RECONCILE_INTERVAL_SECONDS": "1", "CLIPFIT_REQUEUE_AFTER_SECONDS": "3",
    }


def settings_of(env: dict[str, str], **overrides):
    from registry.settings import Settings

    return Settings(**{k[len("CLIPFIT_"):].lower(): v for k, v in env.items()} | overrides)


def test_quotas_count_in_memory_while_redis_is_away(redis_server, outage_env, monkeypatch):
    from service import quotas as quotas_module
    from service.errors import OverQuota
    from service.quotas import Quotas

    monkeypatch.setattr(quotas_module, "REDIS_RETRY_SECONDS", 2.0)
    quotas = Quotas(settings_of(outage_env, rate_limit="3/minute"))
    quotas.hit_request("k1")  # counted in Redis
    assert not quotas.redis_away and redis.Redis.from_url(redis_server.url).keys("*")
    redis_server.stop()
    try:
        started = time.monotonic()
        quotas.hit_request("k1")
        quotas.hit_request("k1")  # in memory now: a fresh count, still limited
        quotas.hit_request("k1")
        with pytest.raises(OverQuota, match="rate limit of 3/minute"):
            quotas.hit_request("k1")
        assert time.monotonic() - started < 1.5  # no request waits on the dead Redis
        assert quotas.redis_away and quotas.redis_failures == 1  # Redis not asked again...
        time.sleep(2.1)
        quotas.hit_request("k2")
        assert quotas.redis_failures == 2  # ...until REDIS_RETRY_SECONDS have passed
    finally:
        redis_server.start()
    time.sleep(2.1)
    quotas.hit_request("k1")  # in Redis again (which lost its counts with its restart)
    assert not quotas.redis_away


def test_a_broker_outage_breaks_nothing_that_does_not_need_it(
        redis_server, outage_env, colour_set, tmp_path):
    from fastapi.testclient import TestClient

    from api.app import create_app
    from registry.db import get_engine
    from registry.migrate import upgrade

    settings = settings_of(outage_env)
    upgrade(settings.sqlalchemy_url)
    worker = Worker(outage_env, tmp_path / "worker.log")
    try:
        with TestClient(create_app(settings)) as api:
            _outage(api, redis_server, worker, colour_set)
    finally:
        worker.stop()
        get_engine(settings.sqlalchemy_url).dispose()


def _outage(api, redis_server: RedisServer, worker: Worker, colour_set: Path) -> None:
    api.headers["Authorization"] = f"Bearer {new_key(api, ['admin'])}"
    reader = new_key(api, ["read"])  # never used before the outage: checked in the database
    files, labels = image_files(colour_set)
    first = api.post("/v1/jobs", files=files, data={**TRAIN, "labels": labels}).json()
    adapter_id = wait_for(api, first["id"], lambda j: j["status"] in FINISHED)["adapter_id"]
    assert adapter_id, worker.log.read_text()[-3000:]
    image = base64.b64encode((colour_set / "red" / "0000.png").read_bytes()).decode()

    redis_server.stop()
    started = time.monotonic()
    r = api.post("/v1/datasets", files={"dataset": ("c.zip", zip_folder(colour_set))})
    assert r.status_code == 201, r.text  # its upload quota counted in memory
    dataset_id = r.json()["id"]
    r = api.post("/v1/jobs", data={**TRAIN, "dataset_id": dataset_id})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["status"] == "queued"
    reads = ["/v1/jobs", f"/v1/jobs/{job['id']}", f"/v1/jobs/{job['id']}/events",
             "/v1/adapters", f"/v1/adapters/{adapter_id}", "/v1/models", "/v1/datasets",
             f"/v1/datasets/{dataset_id}", "/v1/aliases", "/v1/webhooks", "/healthz",
             "/metrics"]
    answers = {url: api.get(url) for url in reads}
    assert {url: r.status_code for url, r in answers.items()} == dict.fromkeys(reads, 200)
    assert answers[f"/v1/jobs/{job['id']}"].json()["status"] == "queued"
    assert "clipfit_quota_redis_away 1.0" in answers["/metrics"].text
    for body in ({"adapter_id": adapter_id, "images": [image]},
                 {"base_model": "clipfit-tiny", "classes": ["red", "blue"], "images": [image]}):
        r = api.post("/v1/classify", json=body)
        assert r.status_code == 200 and len(r.json()["predictions"]) == 1, r.text
    assert api.get("/v1/jobs", headers={"Authorization": f"Bearer {reader}"}).status_code == 200
    assert api.post("/v1/jobs", headers={"Authorization": f"Bearer {reader}"},
                    data={**TRAIN, "dataset_id": dataset_id}).status_code == 403
    assert api.get("/v1/jobs", headers={"Authorization": "Bearer cfk_unknown"}).status_code == 401
    ready = api.get("/readyz")
    assert ready.status_code == 503 and ready.json()["checks"]["broker"] != "ok"
    outage = time.monotonic() - started
    assert outage < 30, f"the requests of the outage took {outage:.0f} s"

    redis_server.start()  # empty: the job's only record is the database's
    done = wait_for(api, job["id"], lambda j: j["status"] in FINISHED, timeout=60)
    assert done["status"] == "succeeded", (done, worker.log.read_text()[-3000:])
    events = api.get(f"/v1/jobs/{job['id']}/events").json()["data"]
    assert [e["kind"] for e in events].count("succeeded") == 1
    assert api.get("/readyz").status_code == 200
