"""Data-access functions shared by the api and the worker.

Keyword-only arguments; ``None`` when nothing is found; the caller owns the transaction
(``registry.db.session_scope``), so a job and its dataset are stored together or not at all.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, selectinload

from .models import (
    FINISHED,
    Adapter,
    Blob,
    Dataset,
    DatasetImage,
    Job,
    JobEvent,
    JobStatus,
    utcnow,
)


def put_blob(session: Session, *, data: bytes) -> str:
    """Store ``data`` once (by sha256); return its digest."""
    digest = hashlib.sha256(data).hexdigest()
    if session.get(Blob, digest) is None:
        session.add(Blob(sha256=digest, size=len(data), data=data))
        session.flush()
    return digest


def get_blob(session: Session, *, sha256: str) -> bytes | None:
    blob = session.get(Blob, sha256)
    return blob.data if blob is not None else None


def create_job(
    session: Session, *, classnames: Sequence[str],
    images: Sequence[tuple[bytes, int, str]], base_model: str, templates: Sequence[str],
    hyperparameters: dict[str, Any], name: str | None = None,
    idempotency_key: str | None = None,
) -> Job:
    """A dataset (images as (bytes, label, filename)) and its queued job."""
    dataset = Dataset(classnames=list(classnames))
    session.add(dataset)
    session.flush()
    for position, (data, label, filename) in enumerate(images):
        session.add(DatasetImage(dataset_id=dataset.id, position=position, label=label,
                                 filename=filename[:512], blob_sha256=put_blob(session, data=data)))
    job = Job(dataset_id=dataset.id, base_model=base_model, templates=list(templates),
              hyperparameters=dict(hyperparameters), name=name, idempotency_key=idempotency_key,
              status=JobStatus.queued.value)
    session.add(job)
    session.flush()
    add_event(session, job_id=job.id, kind="queued", payload={"images": len(images)})
    return job


def delete_job(session: Session, *, job_id: str) -> bool:
    """Remove a job that never ran, with its events, its dataset and the image blobs no other
    dataset uses (the API undoes a job it could not enqueue)."""
    job = session.get(Job, job_id)
    if job is None:
        return False
    dataset_id = job.dataset_id
    digests = set(session.scalars(select(DatasetImage.blob_sha256)
                                  .where(DatasetImage.dataset_id == dataset_id)))
    session.execute(delete(JobEvent).where(JobEvent.job_id == job_id))
    session.delete(job)
    session.flush()
    session.execute(delete(DatasetImage).where(DatasetImage.dataset_id == dataset_id))
    session.execute(delete(Dataset).where(Dataset.id == dataset_id))
    still_used = set(session.scalars(select(DatasetImage.blob_sha256)
                                     .where(DatasetImage.blob_sha256.in_(digests))))
    if digests - still_used:
        session.execute(delete(Blob).where(Blob.sha256.in_(digests - still_used)))
    return True


def get_job(session: Session, *, job_id: str) -> Job | None:
    return session.get(Job, job_id)


def get_job_by_idempotency_key(session: Session, *, key: str) -> Job | None:
    return session.scalar(select(Job).where(Job.idempotency_key == key))


def list_jobs(session: Session, *, status: str | None = None, limit: int = 50,
              before: tuple[datetime, str] | None = None) -> list[Job]:
    """Newest first; ``before`` = (created_at, id) of the last job of the previous page."""
    query = (select(Job).options(selectinload(Job.adapter))  # one query for the page's adapters
             .order_by(Job.created_at.desc(), Job.id.desc()).limit(limit))
    if status is not None:
        query = query.where(Job.status == status)
    if before is not None:
        created, job_id = before
        query = query.where((Job.created_at < created)
                            | ((Job.created_at == created) & (Job.id < job_id)))
    return list(session.scalars(query))


def count_jobs_by_status(session: Session) -> dict[str, int]:
    rows = session.execute(select(Job.status, func.count()).group_by(Job.status))
    return {status.value: 0 for status in JobStatus} | dict(rows.all())


def training_images(
    session: Session, *, job: Job
) -> tuple[list[str], list[tuple[bytes, int, str]]]:
    """The job's class names and its images as (bytes, label, filename), in stored order."""
    rows = session.execute(
        select(Blob.data, DatasetImage.label, DatasetImage.filename)
        .join(DatasetImage, DatasetImage.blob_sha256 == Blob.sha256)
        .where(DatasetImage.dataset_id == job.dataset_id)
        .order_by(DatasetImage.position))
    return list(job.dataset.classnames), [tuple(row) for row in rows]


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


def mark_running(session: Session, *, job_id: str) -> Job | None:
    """Claim a queued (or redelivered running) job: attempts + 1, heartbeat now.
    ``None`` when the job is gone or already finished."""
    job = session.get(Job, job_id, with_for_update=True)
    if job is None or job.status in FINISHED:
        return None
    job.status = JobStatus.running.value
    job.attempts += 1
    job.started_at = job.started_at or utcnow()
    job.heartbeat_at = utcnow()
    add_event(session, job_id=job.id, kind="running", payload={"attempt": job.attempts})
    return job


def record_progress(session: Session, *, job_id: str, progress: dict[str, Any]) -> bool:
    """Store progress and a heartbeat; return whether cancellation was requested."""
    job = session.get(Job, job_id)
    if job is None:
        return True
    job.progress = progress
    job.heartbeat_at = utcnow()
    add_event(session, job_id=job_id, kind="progress", payload=progress)
    return job.cancel_requested


def request_cancel(session: Session, *, job_id: str) -> Job | None:
    """Flag a job for cooperative cancellation; a queued job is cancelled at once."""
    job = session.get(Job, job_id, with_for_update=True)
    if job is None or job.status in FINISHED:
        return job
    job.cancel_requested = True
    if job.status == JobStatus.queued.value:
        finish_job(session, job=job, status=JobStatus.cancelled)
    else:
        add_event(session, job_id=job.id, kind="cancel_requested", payload={})
    return job


def finish_job(session: Session, *, job: Job, status: JobStatus, error: str | None = None) -> Job:
    job.status = status.value
    job.error = error
    job.finished_at = utcnow()
    add_event(session, job_id=job.id, kind=status.value,
              payload={"error": error} if error else {})
    return job


def store_adapter(
    session: Session, *, job: Job, weights: bytes, config: dict[str, Any],
    metrics: dict[str, Any], name: str | None = None,
) -> Adapter:
    """The adapter of a job, and the job marked succeeded, in the caller's transaction."""
    digest = put_blob(session, data=weights)
    adapter = Adapter(
        job_id=job.id, name=name or job.name, base_model=config["base_model"],
        base_fingerprint=config["base_fingerprint"], classnames=config["classnames"],
        templates=config["templates"], hyperparameters=config.get("hyperparameters", {}),
        metrics=metrics, config=config, trainable_count=config.get("trainable_count", 0),
        weights_sha256=digest, size_bytes=len(weights))
    session.add(adapter)
    session.flush()
    finish_job(session, job=job, status=JobStatus.succeeded)
    return adapter


def get_adapter(session: Session, *, adapter_id: str) -> Adapter | None:
    return session.get(Adapter, adapter_id)


def get_adapter_for_job(session: Session, *, job_id: str) -> Adapter | None:
    return session.scalar(select(Adapter).where(Adapter.job_id == job_id))


def list_adapters(session: Session, *, limit: int = 50,
                  before: tuple[datetime, str] | None = None) -> list[Adapter]:
    query = select(Adapter).order_by(Adapter.created_at.desc(), Adapter.id.desc()).limit(limit)
    if before is not None:
        created, adapter_id = before
        query = query.where((Adapter.created_at < created)
                            | ((Adapter.created_at == created) & (Adapter.id < adapter_id)))
    return list(session.scalars(query))


def delete_adapter(session: Session, *, adapter_id: str) -> bool:
    """Remove an adapter (its weights blob too, unless another adapter shares it)."""
    adapter = session.get(Adapter, adapter_id)
    if adapter is None:
        return False
    digest = adapter.weights_sha256
    session.delete(adapter)
    session.flush()
    shared = session.scalar(select(func.count()).select_from(Adapter)
                            .where(Adapter.weights_sha256 == digest))
    if not shared:
        session.execute(delete(Blob).where(Blob.sha256 == digest))
    return True
