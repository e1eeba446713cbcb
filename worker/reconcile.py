"""The reconciler: the database is the truth, and this makes the queue agree with it.

Every worker process runs one in a thread; a database lease lets one act at a time. Each
round it
- gives a running job whose heartbeat is older than CLIPFIT_STALE_AFTER_SECONDS (its worker
  was killed, lost its node, or its stop grace ran out) back to the queue as a new attempt,
  or fails it after CLIPFIT_MAX_ATTEMPTS, or ends it cancelled when that was asked;
- sends again a queued job that has no message in the broker (Redis restarted without its
  data) once it has waited CLIPFIT_REQUEUE_AFTER_SECONDS since it was last sent; where the
  broker cannot be inspected, every such job is sent again (duplicates are harmless: a
  delivery of a job that a live attempt runs, or that has finished, does nothing). A job
  that was never sent (the API stored it while the broker was away) is sent at once.

While the broker is away a round fails (and is retried the next one); jobs it could not send
are marked never sent, so the first round after the broker returns sends them.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from datetime import timedelta

import redis
from kombu.exceptions import OperationalError as KombuOperationalError
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError as SQLAlchemyOperationalError

from registry import crud
from registry.blobs import Collected, collect_garbage, use_blob_store
from registry.blobstore import BlobStore, BlobStoreUnavailable
from registry.db import make_engine, session_scope
from registry.jobs import mark_unsent
from registry.models import JobStatus, utcnow
from registry.settings import Settings
from service.queue import task_for

log = logging.getLogger(__name__)
LEASE = "reconciler"
COLLECTOR_LEASE = "blob-collector"
UNREACHABLE = (OSError, redis.ConnectionError, redis.TimeoutError, KombuOperationalError,
               SQLAlchemyOperationalError)


def broker_job_ids(broker_url: str, queue: str = "celery") -> str | None:
    """Every message the broker holds for ``queue`` (waiting or delivered, not acknowledged),
    as one string to search job ids in; None when the broker cannot be inspected."""
    if not broker_url.startswith(("redis://", "rediss://")):
        return None
    client = redis.Redis.from_url(broker_url, socket_timeout=5)
    try:
        waiting = client.lrange(queue, 0, -1)
        delivered = client.hvals("unacked")
    finally:
        client.close()
    return b"\n".join(waiting + delivered).decode("utf-8", errors="replace")


def reconcile_once(engine: Engine, settings: Settings, send: Callable[[str, str], None],
                   holder: str) -> dict[str, list[str]]:
    """One round; the job ids it acted on, by action (empty when another holds the lease).
    ``send(job_id, task)`` publishes a job to the task of its kind (training jobs and batch
    predictions alike)."""
    done: dict[str, list[str]] = {"requeued": [], "failed": [], "cancelled": [], "resent": []}
    tasks: dict[str, str] = {}  # job id -> the task of its kind
    with session_scope(engine) as s:
        if not crud.acquire_lease(s, name=LEASE, holder=holder,
                                  ttl_seconds=settings.reconcile_interval_seconds * 3):
            return done
    now = utcnow()
    with session_scope(engine) as s:
        for job in crud.stale_running_jobs(
                s, stale_before=now - timedelta(seconds=settings.stale_after_seconds)):
            silent = f"no heartbeat for {settings.stale_after_seconds:g} s"
            if job.cancel_requested:
                crud.finish_job(s, job=job, status=JobStatus.cancelled)
                done["cancelled"].append(job.id)
            elif job.attempts >= settings.max_attempts:
                crud.finish_job(s, job=job, status=JobStatus.failed, error=(
                    f"its worker was lost {job.attempts} times ({silent} each time); "
                    "not retried again (CLIPFIT_MAX_ATTEMPTS)"))
                done["failed"].append(job.id)
            else:
                job.status, job.enqueued_at = JobStatus.queued.value, now
                crud.add_event(s, job_id=job.id, kind="requeued",
                               payload={"after_attempt": job.attempts, "reason": silent})
                done["requeued"].append(job.id)
                tasks[job.id] = task_for(job.kind)
    try:
        held = broker_job_ids(settings.celery_broker_url)
    except Exception:
        _unsent(engine, done["requeued"])
        raise
    with session_scope(engine) as s:
        for job in crud.queued_jobs_sent_before(
                s, before=now - timedelta(seconds=settings.requeue_after_seconds)):
            if held is None or job.id not in held:
                job.enqueued_at = now
                done["resent"].append(job.id)
                tasks[job.id] = task_for(job.kind)
    to_send = done["requeued"] + done["resent"]
    for i, job_id in enumerate(to_send):
        try:
            send(job_id, tasks[job_id])
        except Exception:
            _unsent(engine, to_send[i:])
            raise
    if any(done.values()):
        log.warning("reconciler: %s", {k: v for k, v in done.items() if v})
    return done


def collect_blobs_once(engine: Engine, settings: Settings, store: BlobStore | None,
                       holder: str) -> Collected | None:
    """The blobs nothing has named for CLIPFIT_BLOB_GC_GRACE_HOURS, deleted by one process
    per CLIPFIT_BLOB_GC_INTERVAL_SECONDS (a lease); None when another holds it."""
    with session_scope(engine) as s:
        if not crud.acquire_lease(s, name=COLLECTOR_LEASE, holder=holder,
                                  ttl_seconds=settings.blob_gc_interval_seconds):
            return None
    collected = collect_garbage(engine, store=store,
                                grace=timedelta(hours=settings.blob_gc_grace_hours))
    if collected.deleted or collected.adopted or collected.skipped:
        log.info("blob collector: %d deleted (%d bytes), %d adopted from the store%s",
                 collected.deleted, collected.bytes_freed, collected.adopted,
                 f"; {'; '.join(collected.skipped)}" if collected.skipped else "")
    return collected


def _unsent(engine: Engine, job_ids: list[str]) -> None:
    """Jobs this round meant to send but could not (the broker is away): marked never sent,
    so the next round sends them without waiting CLIPFIT_REQUEUE_AFTER_SECONDS."""
    if job_ids:
        with session_scope(engine) as s:
            mark_unsent(s, job_ids=job_ids)


class Reconciler:
    """``reconcile_once`` every CLIPFIT_RECONCILE_INTERVAL_SECONDS in a daemon thread."""

    def __init__(self, settings: Settings, send: Callable[[str, str], None]):
        self.settings, self.send = settings, send
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        # no pooled connections: a prefork worker forks while this thread lives
        self.engine = make_engine(settings.sqlalchemy_url, pooled=False)
        self.store = use_blob_store(settings)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="clipfit-reconciler",
                                        daemon=True)

    def _run(self) -> None:
        collect_at = time.monotonic() + self.settings.reconcile_interval_seconds * 3
        while not self._stop.wait(self.settings.reconcile_interval_seconds):
            try:
                reconcile_once(self.engine, self.settings, self.send, self.holder)
            except UNREACHABLE as e:  # the broker (or database) is away: one line a round
                log.warning("reconciler round failed (%s: %s); retrying", type(e).__name__, e)
            except Exception:
                log.warning("reconciler round failed; retrying", exc_info=True)
            if time.monotonic() >= collect_at:
                collect_at = time.monotonic() + self.settings.blob_gc_interval_seconds
                try:
                    collect_blobs_once(self.engine, self.settings, self.store, self.holder)
                except (*UNREACHABLE, BlobStoreUnavailable) as e:  # away: next time
                    log.warning("blob collection failed (%s: %s)", type(e).__name__, e)
                except Exception:
                    log.warning("blob collection failed", exc_info=True)

    def start(self) -> Reconciler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.engine.dispose()
