"""Rate limits and quotas, counted with the ``limits`` library: requests per key (a moving
second), upload bytes per key and day; jobs in flight and stored adapters per tenant (from
the database, ``check_room``). Counters live in Redis when Redis is the broker (shared by every API
replica), else in this process's memory (the embedded service is one process)."""

from __future__ import annotations

import time
from functools import lru_cache

from limits import RateLimitItemPerDay, parse
from limits.storage import storage_from_string
from limits.strategies import FixedWindowRateLimiter
from sqlalchemy.orm import Session

from registry.adapters import count_adapters
from registry.jobs import count_active_jobs
from registry.settings import Settings

from .errors import OverQuota


@lru_cache(maxsize=16)
def _parse(rate: str):
    """The limit for a rate string, parsed once (not on every request)."""
    return parse(rate)


def check_room(session: Session, settings: Settings, tenant_id: str, *,
               new_job: bool) -> None:
    """``OverQuota`` when the tenant may not start another job (``new_job``) or store
    another adapter: jobs in flight count against both limits, since each becomes an
    adapter."""
    active = count_active_jobs(session, tenant_id=tenant_id)
    if new_job and settings.max_active_jobs and active >= settings.max_active_jobs:
        raise OverQuota(f"{active} jobs are queued or running, the limit is "
                        f"{settings.max_active_jobs}: wait for one to finish", retry_after=30)
    if settings.max_adapters and active + count_adapters(
            session, tenant_id=tenant_id) >= settings.max_adapters:
        raise OverQuota(f"the limit of {settings.max_adapters} stored adapters (with those "
                        "being trained) is reached: delete some", retry_after=3600)


class Quotas:
    def __init__(self, settings: Settings):
        self.settings = settings
        broker = settings.celery_broker_url
        uri = broker if broker.startswith(("redis://", "rediss://")) else "memory://"
        self.limiter = FixedWindowRateLimiter(storage_from_string(uri))

    def _retry_after(self, item, *identifiers: str) -> float:
        reset, _ = self.limiter.get_window_stats(item, *identifiers)
        return reset - time.time()

    def hit_request(self, key: str) -> None:
        """One request of ``key``: ``OverQuota`` over CLIPFIT_RATE_LIMIT."""
        if not self.settings.rate_limit:
            return
        item = _parse(self.settings.rate_limit)
        if not self.limiter.hit(item, "requests", key):
            raise OverQuota(f"rate limit of {self.settings.rate_limit} for this API key "
                            "exceeded; retry later",
                            retry_after=self._retry_after(item, "requests", key))

    def hit_upload(self, key: str | None, size: int) -> None:
        """``size`` uploaded bytes of ``key`` (None: anonymous): ``OverQuota`` over
        CLIPFIT_UPLOAD_BYTES_PER_DAY."""
        key = key or "anonymous"
        per_day = self.settings.upload_bytes_per_day
        if not per_day:
            return
        item = RateLimitItemPerDay(per_day)
        if size > per_day or not self.limiter.hit(item, "upload", key, cost=size):
            raise OverQuota(f"upload quota of {per_day} bytes per day for this API key "
                            "exceeded", retry_after=self._retry_after(item, "upload", key))
