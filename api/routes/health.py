"""Liveness, readiness (database and broker reachable) and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest
from sqlalchemy import text

from registry import crud
from registry.db import session_factory

from ..inference import get_engine
from ..metrics import REGISTRY

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz():
    return {"status": "ok"}


def _queue_depth() -> int | None:
    """Messages waiting in the broker's default queue (None when the broker is unreachable).
    A queue nobody has declared yet (no worker has started) holds no messages."""
    from worker.celery_app import app

    try:
        with app.connection_for_write() as conn:
            channel = conn.default_channel
            try:
                return channel.queue_declare(queue=app.conf.task_default_queue,
                                             passive=True).message_count
            except conn.channel_errors:
                return 0
    except Exception:  # noqa: BLE001 (unknown is an answer)
        return None


@router.get("/readyz")
def readyz():
    checks = {}
    try:
        with session_factory()() as s:
            s.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as e:  # noqa: BLE001 (reported as unreachable)
        checks["database"] = f"unreachable: {type(e).__name__}"
    from worker.celery_app import app

    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        checks["broker"] = "ok"
    except Exception as e:  # noqa: BLE001 (reported as unreachable)
        checks["broker"] = f"unreachable: {type(e).__name__}"
    ok = all(v == "ok" for v in checks.values())
    return JSONResponse(status_code=200 if ok else 503,
                        content={"status": "ok" if ok else "unavailable", "checks": checks})


@router.get("/metrics")
def metrics():
    scrape = CollectorRegistry()
    jobs = Gauge("clipfit_jobs", "jobs by state", ["status"], registry=scrape)
    with session_factory()() as s:
        for status, n in crud.count_jobs_by_status(s).items():
            jobs.labels(status).set(n)
    depth = _queue_depth()
    if depth is not None:
        Gauge("clipfit_queue_depth", "messages waiting in the broker",
              registry=scrape).set(depth)
    engine = get_engine()
    cache = Gauge("clipfit_cache_events", "inference cache hits and misses", ["cache", "kind"],
                  registry=scrape)
    text_hits, text_misses = engine.text_cache_stats()
    cache.labels("delta", "hit").set(engine.delta_hits)
    cache.labels("delta", "miss").set(engine.delta_misses)
    cache.labels("text_features", "hit").set(text_hits)
    cache.labels("text_features", "miss").set(text_misses)
    body = generate_latest(REGISTRY) + generate_latest(scrape)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
