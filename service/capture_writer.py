"""Capturing classified images off the request path. Classify asks ``rules`` (cached per
lineage for RULES_TTL_SECONDS, so a lineage without capture costs no database round trip per
request) and ``offer``s the answers; the images a rule keeps wait in a queue bounded in bytes
(beyond it they are dropped and counted) for one writer thread per process, which applies
the caps and the tenant's capture quota when it writes, and deletes expired captures every
SWEEP_SECONDS. Nothing here ever fails a classify request."""

from __future__ import annotations

import hashlib
import io
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta

from cachetools import TTLCache
from PIL import Image
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from registry import captures as capture_rows
from registry.blobstore import BlobStoreUnavailable
from registry.models import utcnow
from registry.settings import Settings

from .background import BackgroundThread
from .capture_rules import CaptureRules

log = logging.getLogger(__name__)
# a changed setting reaches every API process within this at worst (at once while Redis
# answers: service.invalidation)
RULES_TTL_SECONDS = 5.0
SWEEP_SECONDS = 60.0
SWEEP_BATCH = 1000  # captures deleted per transaction
# a tenant's capture bytes are summed from the database at most this often per process (the
# sum visits every capture of the tenant); in between, what this process wrote is added
QUOTA_RECOUNT_SECONDS = 30.0
SKIP_REASONS = ("cap", "quota", "queue_full", "off", "error")
MEDIA_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp", "image/bmp",
               "image/tiff")
OCTET_STREAM = "application/octet-stream"


def lineage_of(adapter) -> str:
    """What capture settings and captures belong to: the adapter's name (every version,
    later ones too), or its id when it has none."""
    return adapter.name or adapter.id


def media_type(data: bytes) -> str:
    """The image's content type, read from its header (application/octet-stream when it is
    not one of MEDIA_TYPES)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            found = image.get_format_mimetype()
    except (OSError, ValueError, Image.DecompressionBombError):  # it decoded when classified
        return OCTET_STREAM
    return found if found in MEDIA_TYPES else OCTET_STREAM


@dataclass
class _Pending:
    tenant_id: str
    lineage: str
    adapter_id: str
    filename: str
    data: bytes
    answer: dict
    rule: str


class CaptureWriter(BackgroundThread):
    THREAD_NAME = "clipfit-captures"  # writes captures; sweeps expired ones every minute

    def __init__(self, settings: Settings, sessions: sessionmaker[Session],
                 generation: Callable[[], int]):
        super().__init__()
        self.settings, self.sessions = settings, sessions
        # the invalidation generation (service.invalidation): moves on every change applied
        # in this process, so rules read across a change are not kept
        self._generation = generation
        self.max_queued_bytes = int(settings.capture_queue_mb * 2**20)
        self._rules: TTLCache[tuple[str, str], CaptureRules | None] = TTLCache(
            maxsize=10_000, ttl=RULES_TTL_SECONDS)
        self._queue: deque[_Pending] = deque()
        self._queued_bytes = 0
        self._writing = 0
        self._tenant_bytes: dict[str, tuple[int, float]] = {}  # tenant -> (bytes, read at)
        self.written = 0
        self.skipped: Counter[str] = Counter({reason: 0 for reason in SKIP_REASONS})

    # ------------------------------------------------------------------ the request side

    def rules(self, session: Session, tenant_id: str, lineage: str) -> CaptureRules | None:
        """The lineage's rules (None: capture is off), read at most every
        RULES_TTL_SECONDS per lineage in this process."""
        key = (tenant_id, lineage)
        with self._lock:
            if key in self._rules:
                return self._rules[key]
        generation = self._generation()
        row = capture_rows.get_capture_settings(session, tenant_id=tenant_id, lineage=lineage)
        rules = CaptureRules.of(row) if row is not None else None
        with self._lock:
            self._rules[key] = rules
        if self._generation() != generation:  # a change may have crossed the read: not kept
            self.forget(tenant_id, lineage)
        return rules

    def forget(self, tenant_id: str, lineage: str) -> None:
        """Drop a lineage's cached rules (they were changed, here or in another process:
        ``service.invalidation``)."""
        with self._lock:
            self._rules.pop((tenant_id, lineage), None)

    def forget_all(self) -> None:
        """Drop every cached rule (changes may have been missed)."""
        with self._lock:
            self._rules.clear()

    def offer(self, rules: CaptureRules, *, tenant_id: str, lineage: str, adapter_id: str,
              images: Sequence[tuple[str, bytes]], answers: Sequence[dict]) -> int:
        """Queue the images a rule keeps, with the answers the caller got; how many."""
        queued = 0
        for (name, data), answer in zip(images, answers):
            rule = rules.fired(answer)
            if rule is not None:
                queued += self._enqueue(_Pending(tenant_id, lineage, adapter_id, name, data,
                                                 answer, rule))
        return queued

    def _enqueue(self, item: _Pending) -> bool:
        with self._lock:
            if self._closing or self._queued_bytes + len(item.data) > self.max_queued_bytes:
                self.skipped["queue_full"] += 1
                return False
            self._queue.append(item)
            self._queued_bytes += len(item.data)
            self._lock.notify_all()
        self.start()
        return True

    # ------------------------------------------------------------------ the writer thread

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued (for up to ``timeout`` seconds), then stop."""
        self._stop(timeout)

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every queued capture is written or skipped."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._queue or self._writing:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{len(self._queue)} captures still queued")
                self._lock.wait(left)

    def _run(self) -> None:
        next_sweep = time.monotonic()
        while True:
            with self._lock:
                while not self._queue and not self._closing \
                        and time.monotonic() < next_sweep:
                    self._lock.wait(max(0.0, next_sweep - time.monotonic()))
                if self._closing and not self._queue:
                    return
                item = self._queue.popleft() if self._queue else None
                if item is not None:
                    self._queued_bytes -= len(item.data)
                    self._writing += 1
            if item is not None:
                try:
                    self._count(self.write(item))
                finally:
                    with self._lock:
                        self._writing -= 1
                        self._lock.notify_all()
            if time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + SWEEP_SECONDS
                try:
                    self.sweep()
                except SQLAlchemyError as e:  # the database is away: the next sweep retries
                    log.warning("deleting expired captures failed: %s", type(e).__name__)

    def _count(self, outcome: str) -> None:
        with self._lock:
            if outcome == "written":
                self.written += 1
            else:
                self.skipped[outcome] += 1

    def write(self, item: _Pending) -> str:
        """Store one capture, within the lineage's caps and the tenant's capture quota:
        ``written``, or why it was skipped (``off``, ``cap``, ``quota``, ``error``)."""
        try:
            with self.sessions() as s:
                outcome = self._store(s, item)
                s.commit()
            return outcome
        except (SQLAlchemyError, BlobStoreUnavailable) as e:  # the database or the blob
            log.warning("a capture could not be stored: %s", type(e).__name__)  # store blinked
            return "error"
        except Exception:  # a bug must not stop the writer thread (logged with its trace)
            log.exception("a capture could not be stored")
            return "error"

    def _store(self, s: Session, item: _Pending) -> str:
        tenant, lineage, now = item.tenant_id, item.lineage, utcnow()
        # the lock makes one lineage's writes take turns (in every API process): caps hold
        row = capture_rows.get_capture_settings(s, tenant_id=tenant, lineage=lineage,
                                                lock=True)
        if row is None:
            return "off"  # turned off since the request was answered
        rules = CaptureRules.of(row)
        for cap, window in ((rules.max_per_hour, timedelta(hours=1)),
                            (rules.max_per_day, timedelta(days=1))):
            if cap is not None and capture_rows.count_captures_since(
                    s, tenant_id=tenant, lineage=lineage, since=now - window) >= cap:
                return "cap"
        quota, used = self.settings.capture_bytes_per_tenant, None
        if quota and not capture_rows.holds_capture_image(
                s, tenant_id=tenant, sha256=hashlib.sha256(item.data).hexdigest()):
            used = self._used_bytes(s, tenant)
            if used + len(item.data) > quota:
                return "quota"
        answer = item.answer
        capture_rows.add_capture(
            s, data=item.data, tenant_id=tenant, lineage=lineage, adapter_id=item.adapter_id,
            media_type=media_type(item.data), filename=item.filename[:512],
            predicted=answer["label"][:200],
            confidence=answer["top_k"][0]["prob"] if answer["top_k"] else 0.0,
            unknown=bool(answer.get("unknown")), top_k=answer["top_k"], rule=item.rule,
            created_at=now, expires_at=now + timedelta(days=rules.retention_days))
        if used is not None:  # a new image: counted until the next recount
            self._tenant_bytes[tenant] = (used + len(item.data), self._tenant_bytes[tenant][1])
        return "written"

    def _used_bytes(self, s: Session, tenant: str) -> int:
        """The tenant's capture bytes: summed in the database every QUOTA_RECOUNT_SECONDS,
        plus what this process stored since (another API process's captures of the last
        QUOTA_RECOUNT_SECONDS may be missed: the quota can be passed by that much)."""
        cached = self._tenant_bytes.get(tenant)
        if cached is None or time.monotonic() - cached[1] >= QUOTA_RECOUNT_SECONDS:
            cached = (capture_rows.capture_bytes(s, tenant_id=tenant), time.monotonic())
            self._tenant_bytes[tenant] = cached
        return cached[0]

    def sweep(self, now=None) -> int:
        """Delete every capture whose retention has ended (with the images nothing else
        holds); how many."""
        now, total = now or utcnow(), 0
        while True:
            with self.sessions() as s:
                deleted = capture_rows.delete_expired_captures(s, now=now,
                                                              limit=SWEEP_BATCH)
                s.commit()
            total += deleted
            if deleted < SWEEP_BATCH:
                return total
