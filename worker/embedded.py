"""The embedded default: a Celery worker in a thread of the API process.

It is an ordinary ``WorkController`` (the worker ``celery worker`` starts, minus process-level
signal handling) with the solo pool, consuming from the same broker and running the same
``clipfit.train_job`` task as a standalone worker; only the process it lives in differs.
"""

from __future__ import annotations

import fcntl
import logging
import threading
from pathlib import Path

from celery.worker import WorkController
from sqlalchemy import select

from registry.db import session_scope
from registry.models import Job, JobStatus

from .celery_app import app

log = logging.getLogger(__name__)


class EmbeddedWorker:
    def __init__(self, hostname: str = "embedded@clipfit"):
        self._ready = threading.Event()
        worker = self

        class Controller(WorkController):
            def on_consumer_ready(self, consumer):
                worker._ready.set()

        self.controller = Controller(
            app=app, pool="solo", concurrency=1, hostname=hostname, loglevel="WARNING",
            without_heartbeat=True, without_mingle=True, without_gossip=True)
        self.thread = threading.Thread(target=self.controller.start, name="clipfit-worker",
                                       daemon=True)

    def start(self, timeout: float = 30.0) -> None:
        self.thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"the embedded worker did not start within {timeout} s")

    def stop(self, timeout: float = 10.0) -> None:
        self.controller.stop(in_sighandler=False)
        self.thread.join(timeout)


def lock_data_dir(data_dir: Path):
    """One embedded service per data directory (it owns the jobs found running there)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    handle = open(data_dir / "serve.lock", "w")  # noqa: SIM115 (held for the process lifetime)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as e:
        handle.close()
        raise RuntimeError(f"another 'clipfit serve' is using {data_dir}; stop it or pass "
                           "another --data-dir") from e
    return handle


def requeue_unfinished() -> list[str]:
    """Enqueue every queued or running job again (the database is the source of truth).

    Only for a process that owns all workers of its broker (the embedded service at start),
    where a job still marked running was cut off by a crash or restart. The task is
    idempotent, so a job whose message also survived in the broker runs once."""
    from .tasks import train_job

    with session_scope() as s:
        ids = list(s.scalars(select(Job.id).where(
            Job.status.in_([JobStatus.queued.value, JobStatus.running.value]))
            .order_by(Job.created_at)))
    for job_id in ids:
        train_job.delay(job_id)
    if ids:
        log.warning("re-enqueued %d unfinished job(s): %s", len(ids), ", ".join(ids))
    return ids
