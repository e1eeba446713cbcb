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
(``publish_failures``); a subscriber that loses Redis clears every cache it guards when it
subscribes again (what was published meanwhile is lost), and until then the TTLs bound the
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

log = logging.getLogger(__name__)
KINDS = ("key", "adapter", "capture_rules")
INVALIDATION_BOUND_SECONDS = 1.0  # stated in docs/operations.md; tests/service hold it
PUBLISH_TIMEOUT_SECONDS = 0.5  # connect and answer: a publish takes microseconds
RECONNECT_SECONDS = 1.0  # between a lost subscription and the next try
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
        self._publisher: redis.Redis | None = None
        self._generations = itertools.count(1)  # next() is atomic: no lock needed
        self.generation = 0  # moves on every change applied here (and every reset)
        self.subscribed = False  # the subscriber listens (API processes with Redis)
        self.published = 0
        self.publish_failures = 0
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
        if self.url is None:
            return
        try:
            if self._publisher is None:
                self._publisher = redis.Redis.from_url(
                    self.url, socket_timeout=PUBLISH_TIMEOUT_SECONDS,
                    socket_connect_timeout=PUBLISH_TIMEOUT_SECONDS)
            self._publisher.publish(self.channel, change.encode(self.origin))
            self.published += 1
        except redis.RedisError as e:
            self.publish_failures += 1
            log.warning("could not publish the invalidation of %s %s (%s: %s): other API "
                        "processes see it within their cache's TTL", change.kind, change.id,
                        type(e).__name__, e)

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
            client = redis.Redis.from_url(self.url, health_check_interval=HEALTH_CHECK_SECONDS,
                                          socket_connect_timeout=PUBLISH_TIMEOUT_SECONDS,
                                          socket_timeout=HEALTH_CHECK_SECONDS * 2)
            pubsub = client.pubsub()
            try:
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
            finally:
                self.subscribed = False
                pubsub.close()
                client.close()
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
