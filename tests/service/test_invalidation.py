"""Two API replicas on one PostgreSQL and one Redis: what one changes, the other stops
serving within ``INVALIDATION_BOUND_SECONDS`` while Redis answers (``service.invalidation``),
and within its cache's TTL while it does not.

The replicas are two apps (``create_app``) in this process, each with its own caches and
its own subscriber thread; the Redis is a ``redis-server`` of this module's own, stopped and
started again for the outage (never the machine's shared one)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from bench.replicas import delta_zip
from service.invalidation import INVALIDATION_BOUND_SECONDS, Change
from service.redis_retry import REDIS_RETRY_SECONDS

from .conftest import image_files, new_key

TTL = 6.0  # CLIPFIT_KEY_CACHE_SECONDS here: well above the bound, short enough to wait for
LONG_TTL = 120.0  # where a test must see a cache cleared long before its TTL could end


@contextmanager
def two_replicas(database_url: str, broker_url: str, data_dir, ttl: float) -> Iterator:
    """(a, b): two API replicas with admin keys, on the same database, Redis and blobs."""
    from fastapi.testclient import TestClient

    from api.app import create_app
    from registry.db import get_engine
    from registry.migrate import upgrade
    from registry.settings import Settings

    settings = Settings(database_url=database_url, broker_url=broker_url, data_dir=data_dir,
                        base_models="clipfit-tiny", device="cpu", rate_limit="",
                        key_cache_seconds=ttl)
    upgrade(settings.sqlalchemy_url)
    with TestClient(create_app(settings)) as a, TestClient(create_app(settings)) as b:
        admin = new_key(a, ["admin"])
        for client in (a, b):
            client.headers["Authorization"] = f"Bearer {admin}"
            wait_until(lambda c=client: c.app.state.context.invalidation.subscribed, 10)
        yield a, b
    get_engine(settings.sqlalchemy_url).dispose()


@pytest.fixture(scope="module")
def replicas(new_postgres_database, redis_server, tmp_path_factory):
    """(a, b): two API replicas, their caches' TTL ``TTL``."""
    with two_replicas(new_postgres_database(), redis_server.url,
                      tmp_path_factory.mktemp("data"), TTL) as pair:
        yield pair


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
    assert a.get("/v1/adapters", headers=reader).status_code == 200  # a caches the key
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
    assert a.get("/v1/adapters", headers=reader).status_code == 200  # a caches the key too
    assert b.get("/v1/adapters", headers=reader).status_code == 200
    cached_at = time.monotonic()  # b trusts both from here, for TTL seconds at most
    invalidation_a, invalidation_b = (c.app.state.context.invalidation for c in (a, b))
    failures, resets = invalidation_a.publish_failures, invalidation_b.resets
    skipped = invalidation_a.publish_skipped
    redis_server.stop()
    try:
        wait_until(lambda: not invalidation_b.subscribed, 10)
        # publishing fails: the requests do not
        assert a.delete(f"/v1/keys/{key_id(a, secret)}").status_code == 204
        failed_at = time.monotonic()
        assert a.delete(f"/v1/adapters/{adapter}").status_code == 204
        assert invalidation_a.publish_failures == failures + 2
        # the second change was not even tried: Redis failed less than REDIS_RETRY_SECONDS ago
        assert invalidation_a.publish_skipped == skipped + 1
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
    # a publishes again once REDIS_RETRY_SECONDS have passed since its failed publish
    time.sleep(max(0.0, failed_at + REDIS_RETRY_SECONDS - time.monotonic()))
    other = new_key(a, ["read"])
    assert b.get("/v1/adapters", headers={"Authorization": f"Bearer {other}"}
                 ).status_code == 200
    assert a.delete(f"/v1/keys/{key_id(a, other)}").status_code == 204
    took = wait_until(lambda: b.get("/v1/adapters", headers={
        "Authorization": f"Bearer {other}"}).status_code == 401, TTL)
    assert took < INVALIDATION_BOUND_SECONDS


# --- a change committed while a cache was being filled: the entry is not kept ----------------

def test_a_key_revoked_during_its_read_is_not_left_cached(replicas, monkeypatch):
    from api import auth
    from registry.tenants import hash_key

    a, _ = replicas
    invalidation = a.app.state.context.invalidation
    secret = new_key(a, ["read"])
    reader = {"Authorization": f"Bearer {secret}"}
    real, reads = auth.get_key_by_secret, []

    def racing(session, *, secret: str):
        key = real(session, secret=secret)
        if key is not None and secret == reader["Authorization"].removeprefix("Bearer "):
            reads.append(key.id)
            if len(reads) == 1:  # its revocation commits (anywhere) between read and store
                invalidation.changed(Change("key", key.id))
        return key

    monkeypatch.setattr(auth, "get_key_by_secret", racing)
    assert a.get("/v1/adapters", headers=reader).status_code == 200  # valid when read
    assert len(reads) == 1
    assert a.app.state.known_keys.get(hash_key(secret)) is None  # but not kept
    assert a.get("/v1/adapters", headers=reader).status_code == 200
    assert len(reads) == 2  # read again from the database
    assert a.app.state.known_keys.get(hash_key(secret)) is not None  # no race: kept
    assert a.get("/v1/adapters", headers=reader).status_code == 200
    assert len(reads) == 2


def test_an_adapter_deleted_during_its_read_is_not_left_cached(replicas, images,
                                                                monkeypatch):
    from registry import adapters as adapter_rows

    a, _ = replicas
    invalidation, engine = a.app.state.context.invalidation, a.app.state.inference
    adapter = import_adapter(a, seed=6)
    engine.forget(adapter)  # as if a had never looked it up
    real, reads = adapter_rows.get_adapter, []

    def racing(session, *, adapter_id: str, tenant_id: str | None = None):
        row = real(session, adapter_id=adapter_id, tenant_id=tenant_id)
        if adapter_id == adapter:
            reads.append(adapter_id)
            if len(reads) == 1:  # its deletion commits (anywhere) between read and store
                invalidation.changed(Change("adapter", adapter_id, tenant_id))
        return row

    monkeypatch.setattr(adapter_rows, "get_adapter", racing)
    assert classify(a, images, adapter).status_code == 200  # there when read
    assert reads and engine.recent_adapter(adapter, "default") is None  # but not kept
    assert classify(a, images, adapter).status_code == 200
    assert engine.recent_adapter(adapter, "default") is not None  # no race: kept


def test_a_delta_loaded_across_a_deletion_is_not_kept(replicas, images, monkeypatch):
    from api import inference

    a, _ = replicas
    invalidation, engine = a.app.state.context.invalidation, a.app.state.inference
    adapter = import_adapter(a, seed=8)
    engine.forget(adapter)
    real, raced = inference.crud.get_blob, []

    def racing(session, *, sha256: str):
        data = real(session, sha256=sha256)
        info = engine.recent_adapter(adapter, "default")
        if not raced and info is not None and sha256 == info.weights_sha256:
            raced.append(sha256)  # the deletion commits while the weights load
            invalidation.changed(Change("adapter", adapter, "default"))
        return data

    monkeypatch.setattr(inference.crud, "get_blob", racing)
    assert classify(a, images, adapter).status_code == 200
    assert raced and engine.cached_adapter(adapter, "default") is None  # delta not resident
    assert classify(a, images, adapter).status_code == 200
    assert engine.cached_adapter(adapter, "default") is not None  # no race: resident


def test_capture_rules_changed_during_their_read_are_not_left_cached(replicas, monkeypatch):
    from service import capture_writer

    a, _ = replicas
    ctx = a.app.state.context
    adapter = import_adapter(a, seed=7)
    real, reads = capture_writer.capture_rows.get_capture_settings, []

    def racing(session, *, tenant_id: str, lineage: str, **kwargs):
        row = real(session, tenant_id=tenant_id, lineage=lineage, **kwargs)
        if lineage == adapter:
            reads.append(lineage)
            if len(reads) == 1:  # a change commits (anywhere) between read and store
                ctx.invalidation.changed(Change("capture_rules", lineage, tenant_id))
        return row

    monkeypatch.setattr(capture_writer.capture_rows, "get_capture_settings", racing)

    def rules():
        with ctx.sessions() as s:
            return ctx.captures.rules(s, "default", adapter)

    assert rules() is None and len(reads) == 1
    assert rules() is None and len(reads) == 2  # not kept: read again
    assert rules() is None and len(reads) == 2  # no race: kept


# --- Redis hung or broken ---------------------------------------------------------------------

def test_publishing_to_a_hung_redis_costs_one_timeout_then_skips(monkeypatch):
    from registry.settings import Settings
    from service import invalidation as module

    monkeypatch.setattr(module, "REDIS_RETRY_SECONDS", 1.5)  # (5 s in service)
    with socket.socket() as hung:  # connections are taken (the backlog); nothing answers
        hung.bind(("127.0.0.1", 0))
        hung.listen(64)
        publisher = module.Invalidation(Settings(
            broker_url=f"redis://127.0.0.1:{hung.getsockname()[1]}/0"))
        try:
            started = time.monotonic()
            publisher.changed(Change("key", "k0"))
            failed_at = time.monotonic()
            first = failed_at - started
            # one timeout, not retried
            assert module.PUBLISH_TIMEOUT_SECONDS * 0.8 <= first < 2 * module.PUBLISH_TIMEOUT_SECONDS
            assert (publisher.publish_failures, publisher.publish_skipped) == (1, 0)
            generation = publisher.generation
            started = time.monotonic()
            for n in range(1, 11):
                publisher.changed(Change("key", f"k{n}"))
            assert time.monotonic() - started < module.PUBLISH_TIMEOUT_SECONDS  # not tried
            assert (publisher.publish_failures, publisher.publish_skipped) == (11, 10)
            assert publisher.generation != generation  # still applied in this process
            assert publisher.published == 0
            time.sleep(max(0.0, failed_at + 1.5 - time.monotonic()))  # time to try again
            started = time.monotonic()
            publisher.changed(Change("key", "k11"))
            assert time.monotonic() - started >= module.PUBLISH_TIMEOUT_SECONDS * 0.8
            assert (publisher.publish_failures, publisher.publish_skipped) == (12, 10)
        finally:
            publisher.close()


def test_the_subscriber_survives_an_unexpected_error(redis_server, monkeypatch, caplog):
    from registry.settings import Settings
    from service import invalidation as module

    monkeypatch.setattr(module, "RECONNECT_SECONDS", 0.1)
    settings = Settings(broker_url=redis_server.url)
    listener, publisher = module.Invalidation(settings), module.Invalidation(settings)
    seen: list[Change] = []
    listener.on_change(seen.append)
    receive = listener._receive

    def broken(data):
        if not seen:
            seen.append(Change("key", "raised"))
            raise RuntimeError("a bug in the subscriber")
        receive(data)

    listener._receive = broken
    listener.start()
    try:
        wait_until(lambda: listener.subscribed, 10)
        assert listener.resets == 1
        publisher.changed(Change("key", "first"))
        wait_until(lambda: listener.resets == 2 and listener.subscribed, 10)  # subscribed again
        assert "the subscriber failed" in caplog.text and "a bug in the subscriber" in caplog.text
        publisher.changed(Change("key", "second"))
        wait_until(lambda: Change("key", "second") in seen, 5)
        assert listener._thread is not None and listener._thread.is_alive()
    finally:
        listener.close()
        publisher.close()


def test_a_new_subscription_drops_what_was_missed_long_before_the_ttl(
        new_postgres_database, redis_server, tmp_path):
    with two_replicas(new_postgres_database(), redis_server.url, tmp_path / "data",
                      LONG_TTL) as (a, b):
        secret = new_key(a, ["read"])
        reader = {"Authorization": f"Bearer {secret}"}
        assert a.get("/v1/adapters", headers=reader).status_code == 200
        assert b.get("/v1/adapters", headers=reader).status_code == 200  # b caches the key
        cached_at = time.monotonic()
        invalidation_b = b.app.state.context.invalidation
        resets = invalidation_b.resets
        redis_server.stop()
        try:
            wait_until(lambda: not invalidation_b.subscribed, 10)
            assert a.delete(f"/v1/keys/{key_id(a, secret)}").status_code == 204  # lost
            assert a.get("/v1/adapters", headers=reader).status_code == 401
            assert b.get("/v1/adapters", headers=reader).status_code == 200  # b missed it
        finally:
            redis_server.start()
        wait_until(lambda: invalidation_b.subscribed, 10)
        assert invalidation_b.resets == resets + 1
        took = wait_until(lambda: b.get("/v1/adapters", headers=reader).status_code == 401,
                          LONG_TTL)
        assert took < INVALIDATION_BOUND_SECONDS
        # the new subscription cleared it: the TTL could not have
        assert time.monotonic() - cached_at < LONG_TTL / 4
