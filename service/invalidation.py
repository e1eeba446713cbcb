"""Cross-replica cache invalidation: what one API process changes, every other drops from its
caches within INVALIDATION_BOUND_SECONDS while Redis answers.

An API process caches a few things read from the database (the API keys it checked, the
adapter rows it looked up, each lineage's capture rules), each for a time (TTL) so that a
change made through another process takes effect there within that TTL at worst. A use case
that changes one of them (a key revoked, an adapter deleted, capture settings changed) calls
``Invalidation.changed`` once its transaction has committed: the change is applied to this
process's caches at once and published on Redis (pub/sub, on the broker's Redis), where a
subscriber thread in every API process applies it to its own caches.

Aliases have no cache: ``name@alias`` is resolved in the database per request, so a move or
a deletion (by hand, or by a retrain's auto-promotion in the worker) takes effect at once on
every replica and needs no message.

Failures never fail a request: publishing to an unreachable Redis is logged and counted
(``publish_failures``). The publishing client is built once, times out after
``PUBLISH_TIMEOUT_SECONDS`` and never retries a command; after a failed publish, changes are
not published for ``REDIS_RETRY_SECONDS`` (``service.redis_retry``; then one change tries
again), so a hung Redis costs one timeout every few seconds, not one per change. Each change
not published (failed or skipped) counts in ``publish_failures``, the skipped ones in
``publish_skipped`` too: this is safe because the other processes' caches drop what such a
change made stale within their TTL anyway. A subscriber that loses Redis (or meets any other
error: logged with its traceback, never a silently dead thread) tries again every
``RECONNECT_SECONDS`` and clears every cache it guards when it subscribes again (what was
published meanwhile is lost); until then the TTLs bound the
staleness (CLIPFIT_KEY_CACHE_SECONDS for keys and adapter rows, RULES_TTL_SECONDS for
capture rules). With the embedded default (no Redis) there is one API process: changes are
applied to it alone.

A reader that fills a cache takes ``generation`` before its database read and drops what it
stored when ``generation`` moved meanwhile (``stale_since``): a change that committed between
the read and the store cannot leave a stale entry behind."""

from __future__ import annotations

import itertools
import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from urllib.parse import urlsplit

import redis

from registry.settings import Settings

from .background import BackgroundThread
from .redis_retry import REDIS_RETRY_SECONDS, RedisBackoff, no_retry

log = logging.getLogger(__name__)
KINDS = ("key", "adapter", "capture_rules")
INVALIDATION_BOUND_SECONDS = 1.0  # stated in docs/operations.md; tests/service hold it
PUBLISH_TIMEOUT_SECONDS = 0.5  # connect and answer: a publish takes microseconds
RECONNECT_SECONDS = 1.0  # between a lost subscription and the next try
# REDIS_RETRY_SECONDS (service.redis_retry): after a failed publish, publish nothing this long
POLL_SECONDS = 0.5  # the subscriber's wait per message; only how soon ``close`` is seen
HEALTH_CHECK_SECONDS = 5  # a silent connection is found dead after about this


@dataclass(frozen=True)
class Change:
    """One changed thing: ``kind`` key (``id`` the key's id), adapter (deleted; the
    adapter's id) or capture_rules (``id`` the lineage)."""

    kind: str
    id: str
    tenant_id: str | None = None

    def encode(self, origin: str) -> str:
        return json.dumps(asdict(self) | {"origin": origin})

    @classmethod
    def decode(cls, data: bytes | str) -> tuple[Change, str]:
        """(the change, the process that published it); ValueError for anything else."""
        try:
            fields = json.loads(data)
            change = cls(str(fields["kind"]), str(fields["id"]), fields.get("tenant_id"))
            origin = str(fields.get("origin", ""))
        except (TypeError, KeyError, ValueError) as e:
            raise ValueError(f"not an invalidation message: {data[:200]!r}") from e
        if change.kind not in KINDS:
            raise ValueError(f"unknown invalidation kind {change.kind!r}")
        return change, origin


def channel_for(broker_url: str) -> str:
    """The channel: one per Redis database (pub/sub ignores database numbers, so services
    sharing one Redis on different databases must not hear each other)."""
    db = urlsplit(broker_url).path.strip("/") or "0"
    return f"clipfit:invalidate:db{db}"


class Invalidation(BackgroundThread):
    THREAD_NAME = "clipfit-invalidation"  # the subscriber (API processes only)

    def __init__(self, settings: Settings):
        super().__init__()
        broker = settings.celery_broker_url
        self.url = broker if broker.startswith(("redis://", "rediss://")) else None
        self.channel = channel_for(broker) if self.url else ""
        self.origin = uuid.uuid4().hex  # this process: its own messages are applied already
        self._handlers: list[Callable[[Change], None]] = []
        self._resets: list[Callable[[], None]] = []
        # built once (from_url connects on first use); no retry: a hung Redis costs one
        # timeout per try, and tries are spaced by REDIS_RETRY_SECONDS after a failure
        self._publisher: redis.Redis | None = None
        if self.url is not None:
            self._publisher = redis.Redis.from_url(
                self.url, socket_timeout=PUBLISH_TIMEOUT_SECONDS,
                socket_connect_timeout=PUBLISH_TIMEOUT_SECONDS, retry=no_retry())
        self._publishing = RedisBackoff()
        self._generations = itertools.count(1)  # next() is atomic: no lock needed
        self.generation = 0  # moves on every change applied here (and every reset)
        self.subscribed = False  # the subscriber listens (API processes with Redis)
        self.published = 0
        self.publish_failures = 0  # changes not published: Redis failed, or was skipped
        self.publish_skipped = 0  # of those, not tried (within REDIS_RETRY_SECONDS of a failure)
        self.received = 0  # changes from other processes applied here
        self.resets = 0  # subscriptions (re)made: every guarded cache cleared

    # ------------------------------------------------------------------ wiring

    def on_change(self, handler: Callable[[Change], None]) -> None:
        """``handler`` drops what a change makes stale (called from any thread)."""
        self._handlers.append(handler)

    def on_reset(self, handler: Callable[[], None]) -> None:
        """``handler`` clears a cache (changes may have been missed)."""
        self._resets.append(handler)

    def stale_since(self, generation: int) -> bool:
        """Whether a change was applied after ``generation`` was read."""
        return self.generation != generation

    # ------------------------------------------------------------------ the publishing side

    def changed(self, change: Change) -> None:
        """After the change committed: drop it from this process's caches, and tell the
        others. Never raises."""
        self._apply(change)
        if self._publisher is None:
            return
        if not self._publishing.may_try(REDIS_RETRY_SECONDS):
            with self._lock:
                self.publish_failures += 1
                self.publish_skipped += 1
            log.warning("did not publish the invalidation of %s %s (Redis failed less than "
                        "%g s ago): other API processes see it within their cache's TTL",
                        change.kind, change.id, REDIS_RETRY_SECONDS)
            return
        try:
            self._publisher.publish(self.channel, change.encode(self.origin))
        except redis.RedisError as e:
            self._publishing.failed(REDIS_RETRY_SECONDS)
            with self._lock:
                self.publish_failures += 1
            log.warning("could not publish the invalidation of %s %s (%s: %s): other API "
                        "processes see it within their cache's TTL; not publishing for %g s",
                        change.kind, change.id, type(e).__name__, e, REDIS_RETRY_SECONDS)
        else:
            if self._publishing.answered():
                log.warning("invalidation: publishing to Redis again")
            with self._lock:
                self.published += 1

    def _apply(self, change: Change) -> None:
        self.generation = next(self._generations)
        for handler in self._handlers:
            try:
                handler(change)
            except Exception:  # one cache's bug must not leave the others stale
                log.exception("invalidation handler failed for %s", change)

    def _reset(self) -> None:
        self.generation = next(self._generations)
        self.resets += 1
        for handler in self._resets:
            try:
                handler()
            except Exception:
                log.exception("invalidation reset handler failed")

    # ------------------------------------------------------------------ the subscriber

    def start(self) -> None:
        """Start listening (API processes; nothing to listen to without Redis)."""
        if self.url is not None:
            super().start()

    def close(self, timeout: float = 5.0) -> None:
        self._stop(timeout)
        if self._publisher is not None:
            self._publisher.close()

    def _run(self) -> None:
        lost = False
        while not self._closing:
            client = pubsub = None
            try:
                client = redis.Redis.from_url(
                    self.url, health_check_interval=HEALTH_CHECK_SECONDS,
                    socket_connect_timeout=PUBLISH_TIMEOUT_SECONDS,
                    socket_timeout=HEALTH_CHECK_SECONDS * 2)
                pubsub = client.pubsub()
                pubsub.subscribe(self.channel)
                while not self._closing:
                    message = pubsub.get_message(timeout=POLL_SECONDS)
                    if message is None:
                        continue
                    if message["type"] == "subscribe":  # listening from now on
                        self._reset()
                        self.subscribed = True
                        if lost:
                            log.warning("invalidation: subscribed to Redis again; caches "
                                        "cleared")
                            lost = False
                    elif message["type"] == "message":
                        self._receive(message["data"])
            except (redis.RedisError, OSError) as e:
                self.subscribed = False
                if not lost:
                    log.warning("invalidation: lost Redis (%s: %s); cached keys and adapters "
                                "go stale for at most their TTL until it answers again",
                                type(e).__name__, e)
                lost = True
            except Exception:  # a bug, or what Redis's client did not wrap: never die silently
                self.subscribed = False
                log.exception("invalidation: the subscriber failed; caches go stale for at "
                              "most their TTL until it subscribes again")
                lost = True
            finally:
                self.subscribed = False
                for closing in (pubsub, client):
                    try:
                        if closing is not None:
                            closing.close()
                    except Exception:  # closing a broken connection: nothing to keep
                        log.debug("invalidation: closing %r failed", closing, exc_info=True)
            with self._lock:
                if not self._closing:
                    self._lock.wait(RECONNECT_SECONDS)

    def _receive(self, data: bytes) -> None:
        try:
            change, origin = Change.decode(data)
        except ValueError as e:
            log.warning("invalidation: %s", e)
            return
        if origin != self.origin:
            self.received += 1
            self._apply(change)
