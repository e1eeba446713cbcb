"""What adapters serve, counted per API process and added up in the database.

Classify ``record``s the answers of each request with an adapter (zero-shot ones are not
counted): how many, how many "unknown", how many of low confidence (a top probability below
LOW_CONFIDENCE), how many queued for capture, and a histogram of the top probability
(HISTOGRAM_BUCKETS buckets of 0.1: [0, 0.1), ..., [0.9, 1]). That is a dict update under a
lock; nothing on the request path waits for I/O or can fail the request.

A flusher thread per API process adds the counts to ``served_stats`` (per tenant, adapter
and UTC hour) every FLUSH_SECONDS and when the process stops, in one transaction, as
increments (several processes add to one hour). While the database is away the counts stay
here and go with the next flush: at most MAX_PENDING adapter-hours, beyond which the oldest
are dropped and counted (``dropped``). The same thread deletes hours older than
RETENTION_DAYS once an hour, and runs the drift check (``service.drift``) every
DRIFT_CHECK_SECONDS, which one process at a time does, under a database lease.

Apart from that, the process keeps its totals since it started, per adapter, for /metrics."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from registry import served as served_rows
from registry.models import HISTOGRAM_BUCKETS, utcnow
from registry.settings import Settings

from .background import BackgroundThread

log = logging.getLogger(__name__)
# a top probability below this is a low-confidence answer; the same value as
# clipfit_core.report.LOW_CONFIDENCE, the held-out share it is compared with
# (tests/service/test_monitoring.py keeps them equal; importing the report here would load
# torchmetrics into every process that builds a context)
LOW_CONFIDENCE = 0.5
BUCKET_BOUNDS = tuple(i / HISTOGRAM_BUCKETS for i in range(1, HISTOGRAM_BUCKETS))  # 0.1..0.9
FLUSH_SECONDS = 15.0
MAX_PENDING = 10_000  # adapter-hours kept while the database is away
MAX_TRACKED = 100_000  # adapters with totals of their own in this process (then "other")
METRIC_ADAPTERS = 200  # adapters with a label of their own on /metrics (the most answers)
OTHER = "other"  # the label of every other adapter's sums
RETENTION_DAYS = 90
CLEANUP_SECONDS = 3600.0
DRIFT_CHECK_SECONDS = 60.0


def bucket_of(prob: float) -> int:
    """The histogram bucket of a top probability: [i/10, (i+1)/10), the last one closed."""
    return bisect_right(BUCKET_BOUNDS, prob)


def hour_of(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


@dataclass
class Counts:
    predictions: int = 0
    unknown: int = 0
    low_confidence: int = 0
    captured: int = 0
    histogram: list[int] = field(default_factory=lambda: [0] * HISTOGRAM_BUCKETS)
    confidence_sum: float = 0.0  # for the Prometheus histogram's _sum (not stored)

    @classmethod
    def of(cls, answers: Sequence[dict], captured: int) -> Counts:
        counts = cls(predictions=len(answers), captured=captured)
        for answer in answers:
            top = answer["top_k"][0]["prob"] if answer.get("top_k") else 0.0
            counts.unknown += bool(answer.get("unknown"))
            counts.low_confidence += top < LOW_CONFIDENCE
            counts.histogram[bucket_of(top)] += 1
            counts.confidence_sum += top
        return counts

    def add(self, other: Counts) -> None:
        self.predictions += other.predictions
        self.unknown += other.unknown
        self.low_confidence += other.low_confidence
        self.captured += other.captured
        self.histogram = [a + b for a, b in zip(self.histogram, other.histogram)]
        self.confidence_sum += other.confidence_sum


Key = tuple[str, str, datetime]  # tenant, adapter, hour


class ServedCounts(BackgroundThread):
    THREAD_NAME = "clipfit-served"  # flushes the counts; checks for drift

    def __init__(self, settings: Settings, sessions: sessionmaker[Session]):
        super().__init__()
        self.settings, self.sessions = settings, sessions
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"  # the drift lease
        self._flushing = threading.Lock()  # one flush at a time
        self._pending: dict[Key, Counts] = {}  # insertion order: oldest first
        self._totals: dict[str, Counts] = {}
        self._untracked = Counts()  # adapters beyond MAX_TRACKED
        self.dropped = 0  # adapter-hours dropped while the database was away
        self.flush_failures = 0

    # ------------------------------------------------------------------ the request side

    def record(self, *, tenant_id: str, adapter_id: str, answers: Sequence[dict],
               captured: int = 0, now: datetime | None = None) -> None:
        """Count one request's answers (never raises: counting must not fail a request)."""
        try:
            counts = Counts.of(answers, captured)
            key = (tenant_id, adapter_id, hour_of(now or utcnow()))
            with self._lock:
                pending = self._pending.get(key)
                if pending is None:
                    pending = self._pending[key] = Counts()
                    self._trim()
                pending.add(counts)
                total = self._totals.get(adapter_id)
                if total is None and len(self._totals) < MAX_TRACKED:
                    total = self._totals[adapter_id] = Counts()
                (total or self._untracked).add(counts)
        except Exception:  # a bug here must not fail classify (logged with its trace)
            log.exception("served answers could not be counted")

    def _trim(self) -> None:
        """Drop the oldest adapter-hours beyond MAX_PENDING (the lock is held)."""
        while len(self._pending) > MAX_PENDING:
            del self._pending[next(iter(self._pending))]
            self.dropped += 1

    # ------------------------------------------------------------------ /metrics

    def totals(self, limit: int | None = None) -> dict[str, Counts]:
        """This process's counts since it started: the ``limit`` adapters (default
        METRIC_ADAPTERS) with the most answers under their ids, every other one summed under
        OTHER (present only when there are others)."""
        limit = METRIC_ADAPTERS if limit is None else limit
        with self._lock:
            ranked = sorted(self._totals.items(), key=lambda kv: (-kv[1].predictions, kv[0]))
            out = {adapter: _copy(c) for adapter, c in ranked[:limit]}
            rest = [c for _, c in ranked[limit:]]
            if self._untracked.predictions:
                rest.append(self._untracked)
            if rest:
                other = out[OTHER] = Counts()
                for counts in rest:
                    other.add(counts)
        return out

    # ------------------------------------------------------------------ the flusher

    def flush(self) -> bool:
        """Add what was counted since the last flush to the database, in one transaction.
        False when the database is away: the counts are kept for the next flush."""
        with self._flushing:
            with self._lock:
                batch, self._pending = self._pending, {}
            if not batch:
                return True
            try:
                with self.sessions() as s:
                    for (tenant, adapter, hour), c in sorted(batch.items()):
                        served_rows.add_served(
                            s, tenant_id=tenant, adapter_id=adapter, hour=hour,
                            predictions=c.predictions, unknown=c.unknown,
                            low_confidence=c.low_confidence, captured=c.captured,
                            histogram=c.histogram)
                    s.commit()
                return True
            except Exception as e:
                if isinstance(e, SQLAlchemyError):
                    log.warning("served counts not stored (kept for the next flush): %s",
                                type(e).__name__)
                else:  # a bug: logged with its trace, the counts kept all the same
                    log.exception("served counts not stored (kept for the next flush)")
                with self._lock:
                    self.flush_failures += 1
                    for key, counts in self._pending.items():  # counted meanwhile: newer
                        batch.setdefault(key, Counts()).add(counts)
                    self._pending = batch
                    self._trim()
                return False

    def delete_old(self, now: datetime | None = None) -> int:
        """Delete the hours older than RETENTION_DAYS; how many."""
        with self.sessions() as s:
            deleted = served_rows.delete_served_before(
                s, before=(now or utcnow()) - timedelta(days=RETENTION_DAYS))
            s.commit()
        return deleted

    def close(self, timeout: float = 10.0) -> None:
        """Stop the flusher, after a last flush."""
        if not self._stop(timeout):
            self.flush()

    def _run(self) -> None:
        from .drift import check_once  # drift reads adapters and writes the outbox

        start = time.monotonic()
        due = {"flush": start + FLUSH_SECONDS, "drift": start + DRIFT_CHECK_SECONDS,
               "cleanup": start + FLUSH_SECONDS}
        every = {"flush": FLUSH_SECONDS, "drift": DRIFT_CHECK_SECONDS,
                 "cleanup": CLEANUP_SECONDS}
        work = {"flush": self.flush, "cleanup": self.delete_old,
                "drift": lambda: check_once(self.sessions, self.settings, holder=self.holder)}
        while True:
            with self._lock:
                while not self._closing and time.monotonic() < min(due.values()):
                    self._lock.wait(max(0.0, min(due.values()) - time.monotonic()))
                if self._closing:
                    break
            for name in ("flush", "drift", "cleanup"):
                if time.monotonic() >= due[name]:
                    due[name] = time.monotonic() + every[name]
                    try:
                        work[name]()
                    except SQLAlchemyError as e:  # the database is away: the next round
                        log.warning("served %s failed: %s", name, type(e).__name__)
                    except Exception:  # a bug must not stop the thread
                        log.exception("served %s failed", name)
        self.flush()


def _copy(counts: Counts) -> Counts:
    return Counts(counts.predictions, counts.unknown, counts.low_confidence, counts.captured,
                  list(counts.histogram), counts.confidence_sum)
