"""/v1/classify through the batching engine: concurrent requests for different adapters (and
zero-shot) share forward passes and each gets exactly its own answer; a full queue is a 503
with Retry-After; the metrics count the batches."""

from __future__ import annotations

import asyncio
import io

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from api.app import create_app
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
                                  images=[(png(i), 0, "x.png")], base_model="clipfit-tiny",
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
    engine.close()
