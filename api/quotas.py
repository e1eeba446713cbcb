"""Rate limits and quotas, counted with the ``limits`` library: requests per key (a moving
second), upload bytes per key and day; jobs in flight and stored adapters per tenant (from
the database). Counters live in Redis when Redis is the broker (shared by every API
replica), else in this process's memory (the embedded service is one process)."""

from __future__ import annotations

import math
import time
from functools import lru_cache

from fastapi import HTTPException
from limits import RateLimitItemPerDay, parse
from limits.storage import storage_from_string
from limits.strategies import FixedWindowRateLimiter

from registry.settings import Settings


@lru_cache(maxsize=16)
def _parse(rate: str):
    """The limit for a rate string, parsed once (not on every request)."""
    return parse(rate)


def too_many(detail: str, retry_after: float) -> HTTPException:
    return HTTPException(429, detail=detail,
                         headers={"Retry-After": str(max(1, math.ceil(retry_after)))})


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
        """One request of ``key``: 429 with Retry-After over CLIPFIT_RATE_LIMIT."""
        if not self.settings.rate_limit:
            return
        item = _parse(self.settings.rate_limit)
        if not self.limiter.hit(item, "requests", key):
            raise too_many(f"rate limit of {self.settings.rate_limit} for this API key "
                           "exceeded; retry later", self._retry_after(item, "requests", key))

    def hit_upload(self, key: str, size: int) -> None:
        """``size`` uploaded bytes of ``key``: 429 over CLIPFIT_UPLOAD_BYTES_PER_DAY."""
        per_day = self.settings.upload_bytes_per_day
        if not per_day:
            return
        item = RateLimitItemPerDay(per_day)
        if size > per_day or not self.limiter.hit(item, "upload", key, cost=size):
            raise too_many(f"upload quota of {per_day} bytes per day for this API key "
                           "exceeded", self._retry_after(item, "upload", key))
