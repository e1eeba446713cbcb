"""When to ask Redis again while it does not answer, for the callers that carry on without
it (rate limits counted in memory, ``service.quotas``; invalidations left to the caches'
TTLs, ``service.invalidation``): after a failure, not for ``REDIS_RETRY_SECONDS``; then one
caller asks (with a short timeout) while the others still go without, and Redis is used
again as soon as it answers. An outage thus costs a timeout every few seconds, not one per
request."""

from __future__ import annotations

import threading
import time

from redis.backoff import NoBackoff
from redis.retry import Retry

REDIS_TIMEOUT_SECONDS = 0.5  # connect and answer: what these callers ask takes microseconds
REDIS_RETRY_SECONDS = 5.0  # after a failure, go without Redis this long before trying it


def no_retry() -> Retry:
    """A client's ``retry``: a failed command fails at once (not again after a reconnect)."""
    return Retry(NoBackoff(), 0)


class RedisBackoff:
    """Whether to ask Redis now; ``away`` while it did not answer, ``failures`` counted."""

    def __init__(self) -> None:
        self.away = False  # the last try failed
        self.failures = 0  # tries Redis did not answer
        self._try_at = 0.0  # monotonic; while away, when to try again
        self._lock = threading.Lock()

    def may_try(self, retry_seconds: float) -> bool:
        """Whether to ask Redis now: always while it answers; while it is away, once every
        ``retry_seconds`` (this caller probes: the others are told no until it is done or
        ``retry_seconds`` have passed again)."""
        now = time.monotonic()
        with self._lock:
            if now < self._try_at:
                return False
            if self.away:
                self._try_at = now + retry_seconds
            return True

    def failed(self, retry_seconds: float) -> bool:
        """Redis did not answer: not asked again for ``retry_seconds``. Whether it answered
        until now (the first failure of an outage: the one to log)."""
        with self._lock:
            self.failures += 1
            self._try_at = time.monotonic() + retry_seconds
            first, self.away = not self.away, True
        return first

    def answered(self) -> bool:
        """Redis answered. Whether it was away until now (the end of an outage: to log)."""
        with self._lock:
            back, self.away = self.away, False
        return back
