"""Two API replicas on one PostgreSQL and one Redis: what one changes, the other stops
serving within ``INVALIDATION_BOUND_SECONDS`` while Redis answers (``service.invalidation``),
and within its cache's TTL while it does not.

The replicas are two apps (``create_app``) in this process, each with its own caches and
its own subscriber thread; the Redis is a ``redis-server`` of this module's own, stopped and
started again for the outage (never the machine's shared one)."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from bench.replicas import delta_zip
from service.invalidation import INVALIDATION_BOUND_SECONDS

from .conftest import image_files, new_key

TTL = 6.0  # CLIPFIT_KEY_CACHE_SECONDS here: well above the bound, short enough to wait for


@pytest.fixture(scope="module")
def replicas(new_postgres_database, redis_server, tmp_path_factory):
    """(a, b): two API replicas with admin keys, on the same database, Redis and blobs."""
    from fastapi.testclient import TestClient

    from api.app import create_app
    from registry.db import get_engine
    from registry.migrate import upgrade
    from registry.settings import Settings

    settings = Settings(database_url=new_postgres_database(), broker_url=redis_server.url,
                        data_dir=tmp_path_factory.mktemp("data"), base_models="clipfit-tiny",
                        device="cpu", rate_limit="", key_cache_seconds=TTL)
    upgrade(settings.sqlalchemy_url)
    with TestClient(create_app(settings)) as a, TestClient(create_app(settings)) as b:
        admin = new_key(a, ["admin"])
        for client in (a, b):
            client.headers["Authorization"] = f"Bearer {admin}"
            wait_until(lambda c=client: c.app.state.context.invalidation.subscribed, 10)
        yield a, b
    get_engine(settings.sqlalchemy_url).dispose()


@pytest.fixture(scope="module")
def images(colour_set):
    files, _ = image_files(colour_set)
    return files[::16]


def wait_until(predicate: Callable[[], bool], timeout: float) -> float:
    """Seconds until ``predicate()`` held (asked as fast as it answers); fails after
    ``timeout``."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout} s")
        time.sleep(0.005)
    return time.monotonic() - started


def key_id(client, secret: str) -> str:
    keys = client.get("/v1/keys").json()["data"]
    return next(k["id"] for k in keys if secret.startswith(k["prefix"]))


def import_adapter(client, seed: int, name: str | None = None) -> str:
    data = delta_zip(seed, ["red", "green", "blue"])
    r = client.post("/v1/adapters", data={"name": name} if name else {},
                    files={"file": ("d.zip", data)})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def classify(client, images, adapter: str):
    return client.post("/v1/classify", data={"adapter": adapter, "top_k": "1"}, files=images)


def test_a_revoked_key_stops_on_the_other_replica_within_the_bound(replicas):
    a, b = replicas
    secret = new_key(a, ["read"])
    reader = {"Authorization": f"Bearer {secret}"}
    assert b.get("/v1/adapters", headers=reader).status_code == 200  # b caches the key
    assert a.delete(f"/v1/keys/{key_id(a, secret)}").status_code == 204
    assert a.get("/v1/adapters", headers=reader).status_code == 401  # here: at once
    took = wait_until(lambda: b.get("/v1/adapters", headers=reader).status_code == 401, TTL)
    assert took < INVALIDATION_BOUND_SECONDS
    assert b.app.state.context.invalidation.received >= 1


def test_a_deleted_adapter_is_gone_on_the_other_replica_within_the_bound(replicas, images):
    a, b = replicas
    adapter = import_adapter(a, seed=1)
    assert classify(b, images, adapter).status_code == 200  # b caches its row and delta
    assert a.delete(f"/v1/adapters/{adapter}").status_code == 204
    took = wait_until(lambda: classify(b, images, adapter).status_code == 404, TTL)
    assert took < INVALIDATION_BOUND_SECONDS
    assert b.app.state.inference.cached_adapter(adapter, "default") is None  # delta dropped


def test_an_alias_moved_or_deleted_on_one_replica_holds_at_once_on_the_other(replicas,
                                                                                images):
    a, b = replicas
    first, second = import_adapter(a, 2, "shades"), import_adapter(a, 3, "shades")
    assert a.put("/v1/aliases/production", json={"name": "shades", "version": 1}
                 ).status_code == 200
    assert classify(b, images, "shades@production").json()["adapter_id"] == first
    assert a.put("/v1/aliases/production", json={"name": "shades", "version": 2}
                 ).status_code == 200
    assert classify(b, images, "shades@production").json()["adapter_id"] == second
    assert a.delete("/v1/aliases/production", params={"name": "shades"}).status_code == 204
    assert classify(b, images, "shades@production").status_code == 404


def test_changed_capture_rules_reach_the_other_replica_within_the_bound(replicas):
    a, b = replicas
    adapter = import_adapter(a, seed=4)
    captures = b.app.state.context.captures

    def b_rules():
        with b.app.state.context.sessions() as s:
            return captures.rules(s, "default", adapter)

    assert b_rules() is None  # capture off, cached for RULES_TTL_SECONDS
    assert a.put(f"/v1/adapters/{adapter}/capture", json={"sample_rate": 1.0}
                 ).status_code == 200
    assert wait_until(lambda: b_rules() is not None, 5) < INVALIDATION_BOUND_SECONDS
    assert a.delete(f"/v1/adapters/{adapter}/capture").status_code == 204
    assert wait_until(lambda: b_rules() is None, 5) < INVALIDATION_BOUND_SECONDS


def test_without_redis_the_ttl_bounds_staleness_and_a_new_subscription_clears(
        replicas, redis_server, images):
    a, b = replicas
    secret = new_key(a, ["read"])
    reader = {"Authorization": f"Bearer {secret}"}
    adapter = import_adapter(a, seed=5)
    assert classify(b, images, adapter).status_code == 200
    assert b.get("/v1/adapters", headers=reader).status_code == 200
    cached_at = time.monotonic()  # b trusts both from here, for TTL seconds at most
    invalidation_a, invalidation_b = (c.app.state.context.invalidation for c in (a, b))
    failures, resets = invalidation_a.publish_failures, invalidation_b.resets
    redis_server.stop()
    try:
        wait_until(lambda: not invalidation_b.subscribed, 10)
        # publishing fails: the requests do not
        assert a.delete(f"/v1/keys/{key_id(a, secret)}").status_code == 204
        assert a.delete(f"/v1/adapters/{adapter}").status_code == 204
        assert invalidation_a.publish_failures == failures + 2
        assert a.get("/v1/adapters", headers=reader).status_code == 401  # a itself: at once
        # b answers from its caches (the message is lost) until their TTL ends
        assert b.get("/v1/adapters", headers=reader).status_code == 200
        assert classify(b, images, adapter).status_code == 200
        wait_until(lambda: b.get("/v1/adapters", headers=reader).status_code == 401, TTL + 1)
        wait_until(lambda: classify(b, images, adapter).status_code == 404, TTL + 1)
        assert time.monotonic() - cached_at < TTL + 1
    finally:
        redis_server.start()
    # subscribed again: b cleared what it guards (a change may have been missed meanwhile)
    wait_until(lambda: invalidation_b.subscribed, 10)
    assert invalidation_b.resets == resets + 1
    other = new_key(a, ["read"])
    assert b.get("/v1/adapters", headers={"Authorization": f"Bearer {other}"}
                 ).status_code == 200
    assert a.delete(f"/v1/keys/{key_id(a, other)}").status_code == 204
    took = wait_until(lambda: b.get("/v1/adapters", headers={
        "Authorization": f"Bearer {other}"}).status_code == 401, TTL)
    assert took < INVALIDATION_BOUND_SECONDS
