"""The embedded default: a Celery worker in a thread of the API process.

It is an ordinary ``WorkController`` (the worker ``celery worker`` starts, minus process-level
signal handling) with the solo pool, consuming from the same broker and running the same
``clipfit.train_job`` and ``clipfit.predict_job`` tasks as a standalone worker; only the
process it lives in differs.
"""

from __future__ import annotations

import logging
import threading

from celery import Celery
from celery.worker import WorkController
from sqlalchemy import Engine, select

from registry.crud import add_event
from registry.db import session_scope
from registry.models import Job, JobStatus, utcnow
from service.queue import task_for

log = logging.getLogger(__name__)


class EmbeddedWorker:
    def __init__(self, app: Celery, hostname: str = "embedded@clipfit"):
        self._ready = threading.Event()
        worker = self

        class Controller(WorkController):
            def on_consumer_ready(self, consumer):
                worker._ready.set()

        self.controller = Controller(
            app=app, pool="solo", concurrency=1, hostname=hostname, loglevel="WARNING",
            without_heartbeat=True, without_mingle=True, without_gossip=True)
        self.thread = threading.Thread(target=self._run, args=(app,), name="clipfit-worker",
                                       daemon=True)

    def _run(self, app: Celery) -> None:
        app.set_current()  # Celery's current app is per thread; the pool looks tasks up there
        self.controller.start()

    def start(self, timeout: float = 30.0) -> None:
        self.thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"the embedded worker did not start within {timeout} s")

    def stop(self, timeout: float = 10.0) -> None:
        self.controller.stop(in_sighandler=False)
        self.thread.join(timeout)


def requeue_unfinished(app: Celery, engine: Engine) -> list[str]:
    """Enqueue every queued or running job again (the database is the source of truth).

    Only for a process that owns all workers of its broker (the embedded service at start),
    where a job still marked running was certainly cut off by a crash or restart: it goes
    back to the queue at once, without waiting for its heartbeat to go stale. The task is
    idempotent, so a job whose message also survived in the broker runs once."""
    with session_scope(engine) as s:
        jobs = list(s.scalars(select(Job).where(
            Job.status.in_([JobStatus.queued.value, JobStatus.running.value]))
            .order_by(Job.created_at)))
        for job in jobs:
            if job.status == JobStatus.running.value:
                job.status = JobStatus.queued.value
                add_event(s, job_id=job.id, kind="requeued",
                          payload={"after_attempt": job.attempts,
                                   "reason": "the service restarted"})
            job.enqueued_at = utcnow()
        ids = [(job.id, job.kind) for job in jobs]
    for job_id, kind in ids:
        app.send_task(task_for(kind), args=[job_id])
    if ids:
        log.warning("re-enqueued %d unfinished job(s): %s", len(ids),
                    ", ".join(job_id for job_id, _ in ids))
    return [job_id for job_id, _ in ids]
