"""Liveness, readiness (database, broker and blob store reachable), the version and Prometheus
metrics."""

from __future__ import annotations

from itertools import accumulate

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from pydantic import BaseModel, Field

from clipfit_core.version import __version__ as RELEASE
from service import served, status

from ..auth import unless_open
from ..deps import ContextDep, InferenceDep
from ..metrics import REGISTRY

router = APIRouter(tags=["health"])
API_VERSION = "v1"  # the prefix of every resource's path


@router.get("/healthz")
def healthz():
    return {"status": "ok", "version": RELEASE}


class VersionPublic(BaseModel):
    version: str = Field(description="the clipfit release the service runs", examples=["0.2.0"])
    api: str = Field(description="the API version: the prefix of its paths", examples=["v1"])


@router.get("/v1/version", response_model=VersionPublic, summary="The service's release")
def version():
    return VersionPublic(version=RELEASE, api=API_VERSION)


class Readiness(BaseModel):
    status: str
    checks: dict[str, str]


@router.get("/readyz", response_model=Readiness,
            responses={503: {"model": Readiness, "description": "a dependency is unreachable"}})
def readyz(ctx: ContextDep):
    checks = status.readiness(ctx)
    ok = all(v == "ok" for v in checks.values())
    return JSONResponse(status_code=200 if ok else 503,
                        content={"status": "ok" if ok else "unavailable", "checks": checks})


def capture_counters(ctx, scrape: CollectorRegistry) -> None:
    """This process's captures: written, and skipped by reason (a fixed set of labels)."""
    Counter("clipfit_captures_written", "classified images captured for review",
            registry=scrape).inc(ctx.captures.written)
    skipped = Counter("clipfit_captures_skipped", "captures a rule kept but that were not "
                      "stored: over a lineage's cap (cap), over the tenant's capture quota "
                      "(quota), the write queue full (queue_full), capture turned off "
                      "meanwhile (off), a database error (error)", ["reason"], registry=scrape)
    for reason, n in ctx.captures.skipped.items():
        skipped.labels(reason).inc(n)


def invalidation_metrics(invalidation, scrape: CollectorRegistry) -> None:
    """This process's part in cross-replica cache invalidation (``service.invalidation``)."""
    Gauge("clipfit_invalidation_subscribed", "1 while this process hears other replicas' "
          "changes on Redis (0: its caches go stale for at most their TTL)",
          registry=scrape).set(int(invalidation.subscribed))
    for name, help_ in [("published", "changes published to the other replicas"),
                        ("publish_failures", "changes Redis did not take (TTL-bounded)"),
                        ("publish_skipped", "of those, not tried (Redis failed just before)"),
                        ("received", "other replicas' changes applied here"),
                        ("resets", "subscriptions made (every guarded cache cleared)")]:
        Counter(f"clipfit_invalidation_{name}", help_, registry=scrape).inc(
            getattr(invalidation, name))


class _Families:
    """Metric families built for one scrape (a collector of a per-scrape registry)."""

    def __init__(self, families: list):
        self.families = families

    def collect(self):
        return iter(self.families)


def served_counters(ctx, scrape: CollectorRegistry) -> None:
    """This process's answers with adapters since it started, per adapter id (never a
    tenant or anything from a request): a bounded label set, the served.METRIC_ADAPTERS
    adapters with the most answers, every other one summed under adapter="other"."""
    labels = (f"; label adapter: the {served.METRIC_ADAPTERS} adapters with the most answers "
              f"in this process by id, every other summed under adapter=\"{served.OTHER}\"")
    counters = {name: CounterMetricFamily(f"clipfit_served_{name}", help_ + labels,
                                          labels=["adapter"])
                for name, help_ in [
                    ("predictions", "images answered with an adapter"),
                    ("unknown", "answers of 'unknown' (below a rejection threshold)"),
                    ("low_confidence",
                     f"answers whose top probability is below {served.LOW_CONFIDENCE}"),
                    ("captured", "answers queued for capture by their lineage's rules")]}
    confidence = HistogramMetricFamily(
        "clipfit_served_confidence", "the top probability of answers with an adapter "
        "(buckets of 0.1; a probability equal to a bound counts in the bucket above it)"
        + labels, labels=["adapter"])
    for adapter, counts in ctx.served.totals().items():
        for name, family in counters.items():
            family.add_metric([adapter], getattr(counts, name))
        bounds = [str(b) for b in served.BUCKET_BOUNDS] + ["1.0", "+Inf"]
        cumulative = list(accumulate(counts.histogram))
        confidence.add_metric([adapter], list(zip(bounds, [*cumulative, cumulative[-1]])),
                              counts.confidence_sum)
    scrape.register(_Families([*counters.values(), confidence]))
    Counter("clipfit_served_dropped", "adapter-hours of served counts dropped while the "
            f"database was away (beyond the {served.MAX_PENDING:,} kept in memory)",
            registry=scrape).inc(ctx.served.dropped)
    Counter("clipfit_served_flush_failures", "flushes of served counts the database did not "
            "take (kept for the next one)", registry=scrape).inc(ctx.served.flush_failures)


# operators only: the job counts and queue depth are every tenant's
@router.get("/metrics", dependencies=[Depends(unless_open("open_metrics", "admin"))],
            response_class=Response, responses={200: {
                "description": "Prometheus text format", "content": {"text/plain": {}}}},
            summary="Prometheus metrics of the whole service (an admin key, or "
                    "CLIPFIT_OPEN_METRICS=true)")
def metrics(ctx: ContextDep, engine: InferenceDep):
    scrape = CollectorRegistry()
    jobs = Gauge("clipfit_jobs", "jobs by state", ["status"], registry=scrape)
    for state, n in status.job_counts(ctx).items():
        jobs.labels(state).set(n)
    depth = ctx.queue.depth()
    if depth is not None:
        Gauge("clipfit_queue_depth", "messages waiting in the broker",
              registry=scrape).set(depth)
    Gauge("clipfit_quota_redis_away", "1 while rate limits and upload quotas are counted in "
          "this process's memory because Redis does not answer",
          registry=scrape).set(int(ctx.quotas.redis_away))
    Counter("clipfit_quota_redis_failures", "counter updates Redis did not answer (counted "
            "in memory instead)", registry=scrape).inc(ctx.quotas.redis_failures)
    invalidation_metrics(ctx.invalidation, scrape)
    capture_counters(ctx, scrape)
    served_counters(ctx, scrape)
    cache = Gauge("clipfit_cache_events", "inference cache hits and misses", ["cache", "kind"],
                  registry=scrape)
    text_hits, text_misses = engine.text_cache_stats()
    cache.labels("delta", "hit").set(engine.delta_hits)
    cache.labels("delta", "miss").set(engine.delta_misses)
    cache.labels("text_features", "hit").set(text_hits)
    cache.labels("text_features", "miss").set(text_misses)
    batching = {name: Gauge(f"clipfit_inference_{name}", help_, ["model"], registry=scrape)
                for name, help_ in [
                    ("batches", "forward passes run by the inference thread"),
                    ("rows", "images classified"),
                    ("mixed_batches", "forward passes with more than one delta"),
                    ("busy_seconds", "seconds the inference thread spent running batches"),
                    ("queued_rows", "images waiting for the model"),
                    ("resident_deltas", "deltas in the LayerNorm table")]}
    for model, stats in engine.batch_stats().items():
        for name, value in stats.items():
            batching[name].labels(model).set(value)
    body = generate_latest(REGISTRY) + generate_latest(scrape)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
