"""Training jobs: their lifecycle (claim, heartbeat, progress, end), events,
checkpoints, idempotency records and the reconciler's lease and look-ups.

Keyword-only arguments; ``None`` when nothing is found; the caller owns the transaction."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, delete, func, select, update
from sqlalchemy.orm import Session, selectinload

from .datasets import ImageRecord, create_dataset, dataset_images, dataset_size
from .db import owned as _owned
from .models import (
    FINISHED,
    Dataset,
    IdempotencyKey,
    Job,
    JobCheckpoint,
    JobEvent,
    JobStatus,
    Lease,
    PredictionChunk,
    PredictionImage,
    utcnow,
)
from .webhooks import enqueue_webhook_event


def get_idempotency(session: Session, *, tenant_id: str, key: str,
                    not_before: datetime) -> IdempotencyKey | None:
    """The tenant's record of ``key``; one older than ``not_before`` has expired and is
    removed (its job stays)."""
    record = session.get(IdempotencyKey, (tenant_id, key))
    if record is not None and record.created_at < not_before:
        session.delete(record)
        session.flush()
        return None
    return record


def record_idempotency(session: Session, *, tenant_id: str, key: str, request_hash: str,
                       job_id: str) -> None:
    session.add(IdempotencyKey(tenant_id=tenant_id, key=key, request_hash=request_hash,
                               job_id=job_id))
    session.flush()


def create_job(
    session: Session, *, tenant_id: str, classnames: Sequence[str],
    images: Sequence[ImageRecord], base_model: str, templates: Sequence[str],
    hyperparameters: dict[str, Any], name: str | None = None, dataset: Dataset | None = None,
    auto: list[str] | None = None, parent_adapter_id: str | None = None,
    retrain: dict[str, Any] | None = None,
) -> Job:
    """A dataset (images with ``source`` bytes, ``label``, ``name``) and its queued job, of ``tenant_id``;
    with ``dataset``, the job trains on that stored dataset instead (``images`` unused)."""
    if dataset is None:
        dataset = create_dataset(session, tenant_id=tenant_id, classnames=classnames,
                                 images=images)
    job = Job(tenant_id=tenant_id, dataset_id=dataset.id, base_model=base_model,
              templates=list(templates), hyperparameters=dict(hyperparameters), name=name,
              auto=auto, parent_adapter_id=parent_adapter_id, retrain=retrain,
              status=JobStatus.queued.value, enqueued_at=utcnow())
    session.add(job)
    session.flush()
    add_event(session, job_id=job.id, kind="queued", payload={
        "images": len(images) if images else dataset_size(session, dataset_id=dataset.id)})
    return job


def get_job(session: Session, *, job_id: str, tenant_id: str | None = None,
            kind: str | None = None) -> Job | None:
    """The job, if it exists and (with ``tenant_id``) belongs to that tenant (and, with
    ``kind``, is of that kind)."""
    job = session.get(Job, job_id)
    return job if job is not None and tenant_id in (None, job.tenant_id) and \
        kind in (None, job.kind) else None


def list_jobs(session: Session, *, tenant_id: str | None, status: str | None = None,
              limit: int = 50, before: tuple[datetime, str] | None = None,
              kind: str = "train") -> list[Job]:
    """Newest first; ``before`` = (created_at, id) of the last job of the previous page."""
    query = (_owned(select(Job), Job, tenant_id).where(Job.kind == kind)
             .options(selectinload(Job.adapter)))  # one query for the page's adapters
    return list(session.scalars(page_of_jobs(query, status=status, limit=limit,
                                             before=before)))


def page_of_jobs(query: Select, *, status: str | None, limit: int,
                 before: tuple[datetime, str] | None) -> Select:
    """``query`` (of jobs, or joined with them) as one page: newest first, only ``status``
    (None: any), after ``before`` = (created_at, id) of the previous page's last job."""
    query = query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)
    if status is not None:
        query = query.where(Job.status == status)
    if before is not None:
        created, job_id = before
        query = query.where((Job.created_at < created)
                            | ((Job.created_at == created) & (Job.id < job_id)))
    return query


def count_active_jobs(session: Session, *, tenant_id: str, kind: str | None = None) -> int:
    """The tenant's queued and running jobs (of ``kind``; None: training jobs and batch
    predictions alike)."""
    query = select(func.count()).select_from(Job).where(
        Job.tenant_id == tenant_id,
        Job.status.in_([JobStatus.queued.value, JobStatus.running.value]))
    if kind is not None:
        query = query.where(Job.kind == kind)
    return session.scalar(query) or 0


def count_named_jobs_in_flight(session: Session, *, tenant_id: str, name: str) -> int:
    """The tenant's queued and running jobs that will make a version of ``name``."""
    return session.scalar(select(func.count()).select_from(Job).where(
        Job.tenant_id == tenant_id, Job.name == name,
        Job.status.in_([JobStatus.queued.value, JobStatus.running.value]))) or 0


def retrain_jobs(session: Session, *, tenant_id: str, lineage: str) -> list[Job]:
    """The retrains of a lineage (jobs with ``retrain``, named after it), oldest first."""
    return list(session.scalars(select(Job).where(
        Job.tenant_id == tenant_id, Job.name == lineage, Job.retrain.is_not(None))
        .order_by(Job.created_at, Job.id)))


def count_jobs_by_status(session: Session) -> dict[str, int]:
    rows = session.execute(select(Job.status, func.count()).group_by(Job.status))
    return {status.value: 0 for status in JobStatus} | dict(rows.all())


def training_images(
    session: Session, *, job: Job
) -> tuple[list[str], list[ImageRecord]]:
    """The job's class names and its images (``ImageRecord``), in stored order."""
    return list(job.dataset.classnames), dataset_images(session, dataset_id=job.dataset_id)


def add_event(session: Session, *, job_id: str, kind: str, payload: dict[str, Any]) -> JobEvent:
    event = JobEvent(job_id=job_id, kind=kind, payload=payload)
    session.add(event)
    session.flush()
    return event


def list_events(session: Session, *, job_id: str, after_id: int = 0,
                limit: int = 100) -> list[JobEvent]:
    query = (select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.id > after_id)
             .order_by(JobEvent.id).limit(limit))
    return list(session.scalars(query))


def mark_running(session: Session, *, job_id: str,
                 stale_before: datetime | None = None) -> Job | None:
    """Claim a job: attempts + 1 (the attempt is the fencing token of every later write),
    heartbeat now. ``None`` when the job is gone, finished, or (with ``stale_before``)
    running with a heartbeat newer than that: a live attempt holds it and this delivery is a
    duplicate."""
    job = session.get(Job, job_id, with_for_update=True)
    if job is None or job.status in FINISHED:
        return None
    if job.status == JobStatus.running.value and stale_before is not None and \
            job.heartbeat_at is not None and job.heartbeat_at >= stale_before:
        return None
    job.status = JobStatus.running.value
    job.attempts += 1
    job.started_at = job.started_at or utcnow()
    job.heartbeat_at = utcnow()
    add_event(session, job_id=job.id, kind="running", payload={"attempt": job.attempts})
    return job


def holds(job: Job | None, attempt: int | None) -> bool:
    """Whether ``attempt`` still owns the running ``job`` (None: no fencing)."""
    return job is not None and job.status == JobStatus.running.value and \
        (attempt is None or job.attempts == attempt)


def heartbeat(session: Session, *, job_id: str, attempt: int) -> bool:
    """A live attempt's heartbeat; False when it no longer owns the job (a newer attempt
    took over, or the job ended): the caller stops."""
    job = session.get(Job, job_id)
    if not holds(job, attempt):
        return False
    job.heartbeat_at = utcnow()
    return True


def record_progress(session: Session, *, job_id: str, progress: dict[str, Any],
                    attempt: int | None = None) -> bool:
    """Store progress and a heartbeat; return whether the run should stop (cancellation
    requested, or ``attempt`` no longer owns the job)."""
    job = session.get(Job, job_id)
    if not holds(job, attempt):
        return True
    job.progress = progress
    job.heartbeat_at = utcnow()
    add_event(session, job_id=job_id, kind="progress", payload=progress)
    return job.cancel_requested


def finish_attempt(session: Session, *, job_id: str, attempt: int, status: JobStatus,
                   error: str | None = None) -> bool:
    """End the job, when ``attempt`` still owns it (a stale worker's ending is dropped)."""
    job = session.get(Job, job_id, with_for_update=True)
    if not holds(job, attempt):
        return False
    finish_job(session, job=job, status=status, error=error)
    return True


def request_cancel(session: Session, *, job_id: str,
                   stale_before: datetime | None = None) -> Job | None:
    """Flag a job for cooperative cancellation. A queued job, or (with ``stale_before``) a
    running one whose heartbeat is older than that (its worker is gone), is cancelled at
    once; a live one stops within a couple of seconds."""
    job = session.get(Job, job_id, with_for_update=True)
    if job is None or job.status in FINISHED:
        return job
    job.cancel_requested = True
    stuck = job.status == JobStatus.running.value and stale_before is not None and \
        (job.heartbeat_at is None or job.heartbeat_at < stale_before)
    if job.status == JobStatus.queued.value or stuck:
        finish_job(session, job=job, status=JobStatus.cancelled)
    else:
        add_event(session, job_id=job.id, kind="cancel_requested", payload={})
    return job


def acquire_lease(session: Session, *, name: str, holder: str, ttl_seconds: float) -> bool:
    """Hold the lease ``name`` for ``ttl_seconds`` when it is free, expired or already ours."""
    now = utcnow()
    lease = session.get(Lease, name, with_for_update=True)
    if lease is None:
        session.add(Lease(name=name, holder=holder,
                          expires_at=now + timedelta(seconds=ttl_seconds)))
        session.flush()  # a concurrent insert fails here (IntegrityError): not ours
        return True
    if lease.holder != holder and lease.expires_at > now:
        return False
    lease.holder, lease.expires_at = holder, now + timedelta(seconds=ttl_seconds)
    return True


def stale_running_jobs(session: Session, *, stale_before: datetime) -> list[Job]:
    """Running jobs whose heartbeat is older than ``stale_before``: their worker is gone."""
    return list(session.scalars(select(Job).where(
        Job.status == JobStatus.running.value,
        (Job.heartbeat_at < stale_before) | Job.heartbeat_at.is_(None)).with_for_update()))


def queued_jobs_sent_before(session: Session, *, before: datetime) -> list[Job]:
    """Queued jobs last sent to the queue before ``before`` (or never)."""
    return list(session.scalars(select(Job).where(
        Job.status == JobStatus.queued.value,
        (Job.enqueued_at < before) | Job.enqueued_at.is_(None)).order_by(Job.created_at)))


def mark_unsent(session: Session, *, job_ids: Sequence[str]) -> None:
    """Queued jobs whose message could not be sent (the broker was away): marked never sent,
    so the reconciler sends them on its next round."""
    session.execute(update(Job).where(Job.id.in_(list(job_ids)),
                                      Job.status == JobStatus.queued.value)
                    .values(enqueued_at=None))


def save_checkpoint(session: Session, *, job_id: str, attempt: int, epoch: int,
                    data: bytes) -> bool:
    """Replace the job's checkpoint, when ``attempt`` still owns the job."""
    job = session.get(Job, job_id)
    if not holds(job, attempt):
        return False
    row = session.get(JobCheckpoint, job_id)
    if row is None:
        session.add(JobCheckpoint(job_id=job_id, attempt=attempt, epoch=epoch, data=data))
    else:
        row.attempt, row.epoch, row.data, row.created_at = attempt, epoch, data, utcnow()
    return True


def get_checkpoint(session: Session, *, job_id: str) -> JobCheckpoint | None:
    return session.get(JobCheckpoint, job_id)


def finish_job(session: Session, *, job: Job, status: JobStatus, error: str | None = None,
               adapter_id: str | None = None) -> Job:
    """End the job (its checkpoint, or a batch prediction's images and chunk answers, are
    no longer needed), and queue the tenant's webhooks (of a training job)."""
    session.execute(delete(JobCheckpoint).where(JobCheckpoint.job_id == job.id))
    job.status = status.value
    job.error = error
    job.finished_at = utcnow()
    add_event(session, job_id=job.id, kind=status.value,
              payload={"error": error} if error else {})
    if job.kind == "predict":
        session.execute(delete(PredictionChunk).where(PredictionChunk.job_id == job.id))
        session.execute(delete(PredictionImage).where(PredictionImage.job_id == job.id))
        return job
    data = {"job_id": job.id, "status": status.value, "name": job.name,
            "base_model": job.base_model, "error": error}
    if adapter_id is not None:
        data["adapter_id"] = adapter_id
    enqueue_webhook_event(session, tenant_id=job.tenant_id, event_type=f"job.{status.value}",
                          data=data)
    return job
