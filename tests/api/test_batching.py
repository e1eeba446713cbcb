"""/v1/classify through the batching engine: concurrent requests for different adapters (and
zero-shot) share forward passes and each gets exactly its own answer; a full queue is a 503
with Retry-After; the metrics count the batches."""

from __future__ import annotations

import asyncio
import io
import threading

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from api.app import create_app
from clipfit_core.data import Sample
from clipfit_core.delta import Delta, DeltaConfig, extract_delta
from clipfit_core.models import create_base_model
from registry import crud
from registry.db import get_engine, session_scope
from registry.migrate import upgrade
from registry.models import DEFAULT_TENANT
from registry.settings import Settings

CLASSES = ["red", "green", "blue"]


def png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def make_service(tmp_path, n_adapters: int, **overrides):
    """Settings, an admin key and ``n_adapters`` random deltas stored as adapters."""
    settings = Settings(data_dir=tmp_path, base_models="clipfit-tiny", device="cpu",
                        rate_limit="", **overrides)
    upgrade(settings.sqlalchemy_url)
    base = create_base_model("clipfit-tiny", device="cpu")
    g = torch.Generator().manual_seed(0)
    ids = []
    with session_scope(get_engine(settings.sqlalchemy_url)) as s:
        _, key = crud.create_key(s, tenant_id=DEFAULT_TENANT, scopes=["admin"])
        for i in range(n_adapters):
            delta = Delta({k: v + 0.2 * torch.randn(v.shape, generator=g)
                           for k, v in extract_delta(base.model).items()},
                          DeltaConfig(base_model="clipfit-tiny",
                                      base_fingerprint=base.fingerprint,
                                      classnames=CLASSES, templates=["a photo of a {}."]))
            job = crud.create_job(s, tenant_id=DEFAULT_TENANT, classnames=CLASSES,
                                  images=[Sample(png(i), 0, "x.png")], base_model="clipfit-tiny",
                                  templates=["a photo of a {}."], hyperparameters={})
            crud.mark_running(s, job_id=job.id)
            ids.append(crud.store_adapter(s, job=job, weights=delta.to_bytes(),
                                          config=delta.config_dict(), metrics={}).id)
    return settings, key, ids


def request_for(i: int, adapter_ids: list[str]) -> dict:
    """Every fourth request is zero-shot; the others go round the adapters."""
    images = [("images", (f"{i}-{k}.png", png(100 * i + k), "image/png"))
              for k in range(1 + i % 2)]
    if i % 4 == 3:
        return {"files": images, "data": {"base_model": "clipfit-tiny",
                                           "classes": ",".join(CLASSES), "top_k": "3"}}
    return {"files": images, "data": {"adapter_id": adapter_ids[i % len(adapter_ids)],
                                       "top_k": "3"}}


def probabilities(answer: dict) -> list[dict[str, float]]:
    return [{t["label"]: t["prob"] for t in p["top_k"]} for p in answer["predictions"]]


async def post_all(app, key: str, requests: list[dict]) -> list[httpx.Response]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t",
                                 headers={"Authorization": f"Bearer {key}"}) as client:
        return await asyncio.gather(*[client.post("/v1/classify", **r) for r in requests])


def test_concurrent_requests_for_many_adapters_share_batches(tmp_path):
    settings, key, ids = make_service(tmp_path, 5, batch_max_size=16, batch_max_wait_ms=100)
    requests = [request_for(i, ids) for i in range(20)]
    # each request alone, one after another, with the delta swapped in (the old path)
    serial_app = create_app(settings.model_copy(update={"batching": False}))
    alone = [asyncio.run(post_all(serial_app, key, [r]))[0] for r in requests]
    app = create_app(settings)
    together = asyncio.run(post_all(app, key, requests))
    for i, (a, b) in enumerate(zip(alone, together)):
        assert a.status_code == b.status_code == 200, (i, a.text, b.text)
        assert len(b.json()["predictions"]) == 1 + i % 2
        for pa, pb in zip(probabilities(a.json()), probabilities(b.json())):
            assert pa.keys() == pb.keys()
            assert all(pb[k] == pytest.approx(pa[k], abs=1e-4) for k in pa), i
    stats = app.state.inference.batch_stats()["clipfit-tiny"]
    assert stats["rows"] == sum(1 + i % 2 for i in range(20))
    assert stats["batches"] < 20 and stats["mixed_batches"] >= 1
    assert stats["resident_deltas"] == 5
    metrics = asyncio.run(_get(app, key, "/metrics")).text
    assert 'clipfit_inference_batches{model="clipfit-tiny"}' in metrics
    app.state.inference.close()
    serial_app.state.inference.close()


async def _get(app, key: str, path: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t",
                                 headers={"Authorization": f"Bearer {key}"}) as client:
        return await client.get(path)


def test_a_full_queue_answers_503_with_retry_after(tmp_path):
    settings, key, ids = make_service(tmp_path, 1, batch_max_size=2, batch_max_wait_ms=0,
                                      batch_queue_images=2)
    app = create_app(settings)
    engine = app.state.inference
    server = engine.server("clipfit-tiny")
    two = {"files": [("images", (f"{k}.png", png(k), "image/png")) for k in range(2)],
           "data": {"adapter_id": ids[0]}}

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t",
                                     headers={"Authorization": f"Bearer {key}"}) as client:
            with server.model._encode_lock:  # the model is busy with the first request
                first = asyncio.create_task(client.post("/v1/classify", **two))
                while server.started_batches == 0:
                    await asyncio.sleep(0.01)  # ... once the thread took it
                second = asyncio.create_task(client.post("/v1/classify", **two))
                while server.queued_rows < 2:
                    await asyncio.sleep(0.01)
                refused = await client.post("/v1/classify", **two)
            return refused, await first, await second

    refused, first, second = asyncio.run(scenario())
    assert refused.status_code == 503
    assert int(refused.headers["retry-after"]) >= 1
    assert "busy" in refused.json()["detail"]
    assert first.status_code == second.status_code == 200
    assert len(second.json()["predictions"]) == 2
    engine.server("clipfit-tiny").close()  # shutting down: a 503 to retry, not a 500
    stopping = asyncio.run(post_all(app, key, [two]))[0]
    assert stopping.status_code == 503 and stopping.headers["retry-after"] == "5"
    engine.close()


def test_many_concurrent_requests_do_not_exhaust_the_database_pool(tmp_path):
    """More concurrent requests than pooled connections (5 + 10 overflow), each loading its
    delta from the registry: none may hold a connection while waiting for the model, and no
    database wait may stall the event loop (that deadlocked until the pool timeout)."""
    settings, key, ids = make_service(tmp_path, 24, batch_max_size=64)
    app = create_app(settings)
    requests = [{"files": [("images", ("x.png", png(i), "image/png"))],
                 "data": {"adapter_id": ids[i % len(ids)]}} for i in range(48)]
    answers: list = []
    runner = threading.Thread(target=lambda: answers.extend(
        asyncio.run(post_all(app, key, requests))), daemon=True)
    runner.start()
    runner.join(timeout=25)  # under the pool timeout (30 s): no request waited for it
    assert not runner.is_alive(), "requests stalled waiting for database connections"
    assert [r.status_code for r in answers] == [200] * len(requests), \
        {r.status_code: r.text for r in answers}
    app.state.inference.close()


def test_a_client_that_leaves_has_its_rows_dropped(tmp_path):
    """The client disconnects while its request waits behind a running batch: the request's
    images never reach the model, and the route ends (499) instead of computing them."""
    settings, key, ids = make_service(tmp_path, 1, batch_max_size=4, batch_max_wait_ms=0)
    app = create_app(settings)
    server = app.state.inference.server("clipfit-tiny")
    request = httpx.Request(
        "POST", "http://t/v1/classify", headers={"Authorization": f"Bearer {key}"},
        files=[("images", (f"{k}.png", png(k), "image/png")) for k in range(3)],
        data={"adapter_id": ids[0]})
    body = request.read()
    sent: list[dict] = []

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t",
                                     headers={"Authorization": f"Bearer {key}"}) as client:
            with server.model._encode_lock:  # the model is busy with another request
                busy = asyncio.create_task(client.post("/v1/classify", files=[
                    ("images", ("b.png", png(99), "image/png"))],
                    data={"adapter_id": ids[0]}))
                while server.started_batches == 0:
                    await asyncio.sleep(0.01)
                left = asyncio.Event()
                messages = [{"type": "http.request", "body": body, "more_body": False}]

                async def receive() -> dict:
                    if messages:
                        return messages.pop()
                    await left.wait()
                    return {"type": "http.disconnect"}

                async def send(message: dict) -> None:
                    sent.append(message)

                scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                         "method": "POST", "scheme": "http", "path": "/v1/classify",
                         "raw_path": b"/v1/classify", "query_string": b"", "root_path": "",
                         "server": ("t", 80), "client": ("127.0.0.1", 1),
                         "headers": [(k.lower(), v) for k, v in request.headers.raw]}
                gone = asyncio.create_task(app(scope, receive, send))
                while server.queued_rows < 3:
                    await asyncio.sleep(0.01)
                left.set()  # the client hangs up while its rows wait
                await asyncio.wait_for(gone, 30)
                assert server.queued_rows == 0
            assert (await busy).status_code == 200

    asyncio.run(scenario())
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 499
    assert server.rows == 1  # only the busy request's image was computed
    app.state.inference.close()
