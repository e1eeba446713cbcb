"""Rate limits and quotas, counted with the ``limits`` library: requests per key (a moving
second), upload bytes per key and day; jobs in flight and stored adapters per tenant (from
the database, ``check_room``). Counters live in Redis when Redis is the broker (shared by every API
replica), else in this process's memory (the embedded service is one process).

While Redis is unreachable the counters fall back to this process's memory (each API replica
then counts on its own, so a key may get up to one limit per replica), with a warning; Redis is
tried again every ``REDIS_RETRY_SECONDS`` (by one request, with a short timeout) and used again
as soon as it answers. A broker outage thus never refuses a request that does not need the
broker."""

from __future__ import annotations

import logging
import time
from functools import lru_cache

from limits import RateLimitItemPerDay, parse
from limits.errors import StorageError
from limits.storage import MemoryStorage, storage_from_string
from limits.strategies import FixedWindowRateLimiter
from sqlalchemy.orm import Session

from registry.adapters import count_adapters
from registry.jobs import count_active_jobs
from registry.settings import Settings

from .errors import OverQuota
from .redis_retry import REDIS_RETRY_SECONDS, REDIS_TIMEOUT_SECONDS, RedisBackoff, no_retry

log = logging.getLogger(__name__)
# REDIS_RETRY_SECONDS (service.redis_retry): after a failure, count in memory this long before
# trying Redis again (read here on every failure: tests shorten it)


@lru_cache(maxsize=16)
def _parse(rate: str):
    """The limit for a rate string, parsed once (not on every request)."""
    return parse(rate)


def check_room(session: Session, settings: Settings, tenant_id: str, *,
               new_job: bool, makes_adapter: bool = True) -> None:
    """``OverQuota`` when the tenant may not start another job (``new_job``) or store
    another adapter: training jobs in flight count against both limits, since each becomes
    an adapter; batch predictions in flight count against the first (a batch prediction
    makes no adapter: ``makes_adapter`` False)."""
    active = count_active_jobs(session, tenant_id=tenant_id)
    if new_job and settings.max_active_jobs and active >= settings.max_active_jobs:
        raise OverQuota(f"{active} jobs are queued or running, the limit is "
                        f"{settings.max_active_jobs}: wait for one to finish", retry_after=30)
    if not makes_adapter or not settings.max_adapters:
        return
    training = count_active_jobs(session, tenant_id=tenant_id, kind="train")
    if training + count_adapters(session, tenant_id=tenant_id) >= settings.max_adapters:
        raise OverQuota(f"the limit of {settings.max_adapters} stored adapters (with those "
                        "being trained) is reached: delete some", retry_after=3600)


class Quotas:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.local = FixedWindowRateLimiter(MemoryStorage())
        self.shared: FixedWindowRateLimiter | None = None  # in Redis, where it is the broker
        broker = settings.celery_broker_url
        if broker.startswith(("redis://", "rediss://")):
            self.shared = FixedWindowRateLimiter(storage_from_string(
                broker, wrap_exceptions=True, socket_timeout=REDIS_TIMEOUT_SECONDS,
                socket_connect_timeout=REDIS_TIMEOUT_SECONDS, retry=no_retry()))
        self._redis = RedisBackoff()

    @property
    def redis_away(self) -> bool:
        """Counting in memory because Redis did not answer."""
        return self._redis.away

    @property
    def redis_failures(self) -> int:
        """Times Redis did not answer a counter (for /metrics)."""
        return self._redis.failures

    def _count(self, method: str, *args, **kwargs):
        """``method`` of the limiter in use: Redis's, or this process's memory while Redis
        does not answer (tried again by one request every REDIS_RETRY_SECONDS)."""
        if self.shared is not None and self._redis.may_try(REDIS_RETRY_SECONDS):
            try:  # while Redis is away, this request probes; the others count in memory
                result = getattr(self.shared, method)(*args, **kwargs)
            except StorageError as e:
                self._redis_failed(e)
            else:
                if self._redis.answered():
                    log.warning("Redis answers again: rate limits and upload quotas are "
                                "counted there again")
                return result
        return getattr(self.local, method)(*args, **kwargs)

    def _redis_failed(self, error: StorageError) -> None:
        if self._redis.failed(REDIS_RETRY_SECONDS):
            cause = error.storage_error
            log.warning("Redis is unreachable (%s: %s): rate limits and upload quotas are "
                        "counted in this process's memory until it answers (tried every "
                        "%g s)", type(cause).__name__, cause, REDIS_RETRY_SECONDS)

    def _retry_after(self, item, *identifiers: str) -> float:
        reset, _ = self._count("get_window_stats", item, *identifiers)
        return reset - time.time()

    def hit_request(self, key: str) -> None:
        """One request of ``key``: ``OverQuota`` over CLIPFIT_RATE_LIMIT."""
        if not self.settings.rate_limit:
            return
        item = _parse(self.settings.rate_limit)
        if not self._count("hit", item, "requests", key):
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
        if size > per_day or not self._count("hit", item, "upload", key, cost=size):
            raise OverQuota(f"upload quota of {per_day} bytes per day for this API key "
                            "exceeded", retry_after=self._retry_after(item, "upload", key))
