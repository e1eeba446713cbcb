"""Data-access functions shared by the api and the worker.

Keyword-only arguments; ``None`` when nothing is found; the caller owns the transaction
(``registry.db.session_scope``), so a job and its dataset are stored together or not at all.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session, selectinload

from .models import (
    FINISHED,
    Adapter,
    AdapterAlias,
    AdapterName,
    ApiKey,
    Blob,
    Dataset,
    DatasetImage,
    IdempotencyKey,
    Job,
    JobCheckpoint,
    JobEvent,
    JobStatus,
    Lease,
    Tenant,
    WebhookDelivery,
    WebhookEndpoint,
    utcnow,
)

KEY_PREFIX = "cfk_"


def _owned(query, model, tenant_id: str | None):
    """Rows of ``tenant_id`` only (None: any tenant, for the workers and admins)."""
    return query if tenant_id is None else query.where(model.tenant_id == tenant_id)


# --- tenants and keys ------------------------------------------------------------------------

def create_tenant(session: Session, *, name: str) -> Tenant:
    tenant = Tenant(name=name)
    session.add(tenant)
    session.flush()
    return tenant


def get_tenant(session: Session, *, tenant_id: str) -> Tenant | None:
    return session.get(Tenant, tenant_id)


def get_tenant_by_name(session: Session, *, name: str) -> Tenant | None:
    return session.scalar(select(Tenant).where(Tenant.name == name))


def list_tenants(session: Session) -> list[Tenant]:
    return list(session.scalars(select(Tenant).order_by(Tenant.created_at, Tenant.id)))


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(session: Session, *, tenant_id: str, scopes: Sequence[str],
               name: str | None = None) -> tuple[ApiKey, str]:
    """A new key and its secret (shown once: only the hash is stored)."""
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(tenant_id=tenant_id, scopes=list(scopes), name=name,
                 prefix=secret[:12], key_hash=hash_key(secret))
    session.add(key)
    session.flush()
    return key, secret


def get_key_by_secret(session: Session, *, secret: str) -> ApiKey | None:
    """The active (not revoked) key with this secret."""
    return session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(secret),
                                               ApiKey.revoked_at.is_(None)))


def list_keys(session: Session, *, tenant_id: str | None = None) -> list[ApiKey]:
    return list(session.scalars(_owned(select(ApiKey), ApiKey, tenant_id)
                                .order_by(ApiKey.created_at, ApiKey.id)))


def count_keys(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(ApiKey)) or 0


def revoke_key(session: Session, *, key_id: str) -> ApiKey | None:
    key = session.get(ApiKey, key_id)
    if key is not None and key.revoked_at is None:
        key.revoked_at = utcnow()
    return key


# --- idempotency -----------------------------------------------------------------------------

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
    session: Session, *, tenant_id: str, classnames: Sequence[str],
    images: Sequence[tuple[bytes, int, str]], base_model: str, templates: Sequence[str],
    hyperparameters: dict[str, Any], name: str | None = None, dataset: Dataset | None = None,
) -> Job:
    """A dataset (images as (bytes, label, filename)) and its queued job, of ``tenant_id``;
    with ``dataset``, the job trains on that stored dataset instead (``images`` unused)."""
    if dataset is None:
        dataset = create_dataset(session, tenant_id=tenant_id, classnames=classnames,
                                 images=images)
    job = Job(tenant_id=tenant_id, dataset_id=dataset.id, base_model=base_model,
              templates=list(templates), hyperparameters=dict(hyperparameters), name=name,
              status=JobStatus.queued.value, enqueued_at=utcnow())
    session.add(job)
    session.flush()
    add_event(session, job_id=job.id, kind="queued", payload={
        "images": len(images) if images else dataset_size(session, dataset_id=dataset.id)})
    return job


def create_dataset(session: Session, *, tenant_id: str, classnames: Sequence[str],
                   images: Sequence[tuple[bytes, int, str]]) -> Dataset:
    """A stored image set (images as (bytes, label, filename)), in the caller's
    transaction; equal images share one blob."""
    dataset = Dataset(tenant_id=tenant_id, classnames=list(classnames))
    session.add(dataset)
    session.flush()
    _add_images(session, dataset_id=dataset.id, start=0, images=images)
    return dataset


def _add_images(session: Session, *, dataset_id: str, start: int,
                images: Sequence[tuple[bytes, int, str]]) -> None:
    for position, (data, label, filename) in enumerate(images, start=start):
        session.add(DatasetImage(dataset_id=dataset_id, position=position, label=label,
                                 filename=filename[:512], blob_sha256=put_blob(session, data=data)))
    session.flush()


def add_dataset_images(session: Session, *, dataset: Dataset, classnames: Sequence[str],
                       images: Sequence[tuple[bytes, int, str]]) -> None:
    """More images (labels index ``classnames``: the dataset's, then any new ones)."""
    dataset.classnames = list(classnames)
    start = session.scalar(select(func.coalesce(func.max(DatasetImage.position) + 1, 0))
                           .where(DatasetImage.dataset_id == dataset.id))
    _add_images(session, dataset_id=dataset.id, start=start, images=images)


def get_dataset(session: Session, *, dataset_id: str,
                tenant_id: str | None = None) -> Dataset | None:
    dataset = session.get(Dataset, dataset_id)
    return dataset if dataset is not None and tenant_id in (None, dataset.tenant_id) else None


def list_datasets(session: Session, *, tenant_id: str, limit: int = 50) -> list[Dataset]:
    return list(session.scalars(select(Dataset).where(Dataset.tenant_id == tenant_id)
                                .order_by(Dataset.created_at.desc(), Dataset.id.desc())
                                .limit(limit)))


def dataset_counts(session: Session, *, dataset_id: str) -> dict[int, int]:
    """Images per label."""
    return dict(session.execute(select(DatasetImage.label, func.count())
                                .where(DatasetImage.dataset_id == dataset_id)
                                .group_by(DatasetImage.label)).all())


def dataset_size(session: Session, *, dataset_id: str) -> int:
    return session.scalar(select(func.count()).select_from(DatasetImage)
                          .where(DatasetImage.dataset_id == dataset_id))


def count_dataset_jobs(session: Session, *, dataset_id: str, unfinished: bool = False) -> int:
    query = select(func.count()).select_from(Job).where(Job.dataset_id == dataset_id)
    if unfinished:
        query = query.where(Job.status.not_in(FINISHED))
    return session.scalar(query)


def dataset_images(session: Session, *, dataset_id: str) -> list[tuple[bytes, int, str]]:
    """(bytes, label, filename) of every image, in stored order."""
    rows = session.execute(
        select(Blob.data, DatasetImage.label, DatasetImage.filename)
        .join(DatasetImage, DatasetImage.blob_sha256 == Blob.sha256)
        .where(DatasetImage.dataset_id == dataset_id)
        .order_by(DatasetImage.position))
    return [tuple(row) for row in rows]


def delete_dataset(session: Session, *, dataset: Dataset) -> None:
    """A dataset no job uses, with the image blobs no other dataset uses."""
    _drop_dataset(session, dataset_id=dataset.id)


def delete_job(session: Session, *, job_id: str, keep_dataset: bool = False) -> bool:
    """Remove a job that never ran, with its events and (unless ``keep_dataset``: a stored
    dataset the job was given) its dataset and the image blobs no other dataset uses (the
    API undoes a job it could not enqueue)."""
    job = session.get(Job, job_id)
    if job is None:
        return False
    dataset_id = job.dataset_id
    session.execute(delete(JobEvent).where(JobEvent.job_id == job_id))
    session.execute(delete(IdempotencyKey).where(IdempotencyKey.job_id == job_id))
    session.delete(job)
    session.flush()
    if not keep_dataset:
        _drop_dataset(session, dataset_id=dataset_id)
    return True


def _drop_dataset(session: Session, *, dataset_id: str) -> None:
    digests = set(session.scalars(select(DatasetImage.blob_sha256)
                                  .where(DatasetImage.dataset_id == dataset_id)))
    session.execute(delete(DatasetImage).where(DatasetImage.dataset_id == dataset_id))
    session.execute(delete(Dataset).where(Dataset.id == dataset_id))
    still_used = set(session.scalars(select(DatasetImage.blob_sha256)
                                     .where(DatasetImage.blob_sha256.in_(digests))))
    if digests - still_used:
        session.execute(delete(Blob).where(Blob.sha256.in_(digests - still_used)))


def get_job(session: Session, *, job_id: str, tenant_id: str | None = None) -> Job | None:
    """The job, if it exists and (with ``tenant_id``) belongs to that tenant."""
    job = session.get(Job, job_id)
    return job if job is not None and tenant_id in (None, job.tenant_id) else None


def list_jobs(session: Session, *, tenant_id: str | None, status: str | None = None,
              limit: int = 50, before: tuple[datetime, str] | None = None) -> list[Job]:
    """Newest first; ``before`` = (created_at, id) of the last job of the previous page."""
    query = (_owned(select(Job), Job, tenant_id)
             .options(selectinload(Job.adapter))  # one query for the page's adapters
             .order_by(Job.created_at.desc(), Job.id.desc()).limit(limit))
    if status is not None:
        query = query.where(Job.status == status)
    if before is not None:
        created, job_id = before
        query = query.where((Job.created_at < created)
                            | ((Job.created_at == created) & (Job.id < job_id)))
    return list(session.scalars(query))


def count_active_jobs(session: Session, *, tenant_id: str) -> int:
    """The tenant's queued and running jobs."""
    return session.scalar(select(func.count()).select_from(Job).where(
        Job.tenant_id == tenant_id,
        Job.status.in_([JobStatus.queued.value, JobStatus.running.value]))) or 0


def count_adapters(session: Session, *, tenant_id: str) -> int:
    return session.scalar(select(func.count()).select_from(Adapter)
                          .where(Adapter.tenant_id == tenant_id)) or 0


def count_jobs_by_status(session: Session) -> dict[str, int]:
    rows = session.execute(select(Job.status, func.count()).group_by(Job.status))
    return {status.value: 0 for status in JobStatus} | dict(rows.all())


def training_images(
    session: Session, *, job: Job
) -> tuple[list[str], list[tuple[bytes, int, str]]]:
    """The job's class names and its images as (bytes, label, filename), in stored order."""
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
    """End the job (its checkpoint is no longer needed), and queue the tenant's webhooks."""
    session.execute(delete(JobCheckpoint).where(JobCheckpoint.job_id == job.id))
    job.status = status.value
    job.error = error
    job.finished_at = utcnow()
    add_event(session, job_id=job.id, kind=status.value,
              payload={"error": error} if error else {})
    data = {"job_id": job.id, "status": status.value, "name": job.name,
            "base_model": job.base_model, "error": error}
    if adapter_id is not None:
        data["adapter_id"] = adapter_id
    enqueue_webhook_event(session, tenant_id=job.tenant_id, event_type=f"job.{status.value}",
                          data=data)
    return job


def store_adapter(
    session: Session, *, job: Job, weights: bytes, config: dict[str, Any],
    metrics: dict[str, Any], name: str | None = None,
) -> Adapter:
    """The adapter of a job, and the job marked succeeded, in the caller's transaction."""
    digest = put_blob(session, data=weights)
    name = name or job.name
    adapter = Adapter(
        tenant_id=job.tenant_id, job_id=job.id, name=name,
        version=next_version(session, tenant_id=job.tenant_id, name=name),
        base_model=config["base_model"],
        base_fingerprint=config["base_fingerprint"], classnames=config["classnames"],
        templates=config["templates"], hyperparameters=config.get("hyperparameters", {}),
        metrics=metrics, config=config, trainable_count=config.get("trainable_count", 0),
        weights_sha256=digest, size_bytes=len(weights))
    session.add(adapter)
    session.flush()
    finish_job(session, job=job, status=JobStatus.succeeded, adapter_id=adapter.id)
    return adapter


def next_version(session: Session, *, tenant_id: str, name: str | None) -> int | None:
    """The next version number of ``name`` in the tenant (None for an unnamed adapter). The
    tenant's row is locked first, so concurrent stores of one name number one after the
    other (PostgreSQL; SQLite has one writer at a time anyway)."""
    if name is None:
        return None
    # FOR NO KEY UPDATE: serializes numbering per tenant without blocking the inserts that
    # merely reference the tenant (they take FOR KEY SHARE)
    session.execute(select(Tenant.id).where(Tenant.id == tenant_id)
                    .with_for_update(key_share=True))
    counter = AdapterName.tenant_id == tenant_id, AdapterName.name == name
    # the write comes first, so SQLite takes its write lock before anything is read
    bumped = session.execute(update(AdapterName).where(*counter)
                             .values(last_version=AdapterName.last_version + 1))
    if bumped.rowcount == 0:
        session.add(AdapterName(tenant_id=tenant_id, name=name, last_version=1))
        session.flush()
        return 1
    return session.scalar(select(AdapterName.last_version).where(*counter))


def resolve_adapter(session: Session, *, tenant_id: str, reference: str) -> Adapter | None:
    """An adapter by id, ``name@VERSION`` or ``name@alias`` (split at the last ``@``)."""
    if "@" not in reference:
        return get_adapter(session, adapter_id=reference, tenant_id=tenant_id)
    name, tag = reference.rsplit("@", 1)
    if re.fullmatch(r"[0-9]{1,9}", tag):  # ASCII digits only; aliases start with a letter
        return session.scalar(select(Adapter).where(
            Adapter.tenant_id == tenant_id, Adapter.name == name, Adapter.version == int(tag)))
    alias = get_alias(session, tenant_id=tenant_id, name=name, alias=tag)
    return session.get(Adapter, alias.adapter_id) if alias is not None else None


def get_alias(session: Session, *, tenant_id: str, name: str, alias: str) -> AdapterAlias | None:
    return session.scalar(select(AdapterAlias).where(
        AdapterAlias.tenant_id == tenant_id, AdapterAlias.name == name,
        AdapterAlias.alias == alias))


def set_alias(session: Session, *, tenant_id: str, name: str, alias: str,
              adapter: Adapter) -> AdapterAlias:
    """Point ``name@alias`` at ``adapter`` (created, or moved), in the caller's transaction."""
    row = session.scalar(select(AdapterAlias).where(
        AdapterAlias.tenant_id == tenant_id, AdapterAlias.name == name,
        AdapterAlias.alias == alias).with_for_update())
    if row is None:
        row = AdapterAlias(tenant_id=tenant_id, name=name, alias=alias, adapter_id=adapter.id)
        session.add(row)
    else:
        row.adapter_id, row.updated_at = adapter.id, utcnow()
    session.flush()
    return row


def list_aliases(session: Session, *, tenant_id: str, name: str | None = None
                 ) -> list[AdapterAlias]:
    query = select(AdapterAlias).where(AdapterAlias.tenant_id == tenant_id)
    if name is not None:
        query = query.where(AdapterAlias.name == name)
    return list(session.scalars(query.order_by(AdapterAlias.name, AdapterAlias.alias)))


def delete_alias(session: Session, *, tenant_id: str, name: str, alias: str) -> bool:
    row = get_alias(session, tenant_id=tenant_id, name=name, alias=alias)
    if row is None:
        return False
    session.delete(row)
    session.flush()
    return True


def aliases_of(session: Session, *, adapter_id: str) -> list[AdapterAlias]:
    return list(session.scalars(select(AdapterAlias).where(
        AdapterAlias.adapter_id == adapter_id)))


def import_adapter(session: Session, *, tenant_id: str, weights: bytes, config: dict[str, Any],
                   name: str | None = None) -> Adapter:
    """An adapter trained elsewhere (no job), in the caller's transaction."""
    digest = put_blob(session, data=weights)
    adapter = Adapter(
        tenant_id=tenant_id, job_id=None, name=name,
        version=next_version(session, tenant_id=tenant_id, name=name),
        base_model=config["base_model"],
        base_fingerprint=config["base_fingerprint"], classnames=config["classnames"],
        templates=config["templates"], hyperparameters=config.get("hyperparameters", {}),
        metrics=config.get("metrics", {}), config=config,
        trainable_count=config.get("trainable_count", 0), weights_sha256=digest,
        size_bytes=len(weights))
    session.add(adapter)
    session.flush()
    return adapter


def get_adapter(session: Session, *, adapter_id: str,
                tenant_id: str | None = None) -> Adapter | None:
    """The adapter, if it exists and (with ``tenant_id``) belongs to that tenant."""
    adapter = session.get(Adapter, adapter_id)
    return adapter if adapter is not None and tenant_id in (None, adapter.tenant_id) else None


def get_adapter_for_job(session: Session, *, job_id: str) -> Adapter | None:
    return session.scalar(select(Adapter).where(Adapter.job_id == job_id))


def list_adapters(session: Session, *, tenant_id: str | None, limit: int = 50,
                  before: tuple[datetime, str] | None = None) -> list[Adapter]:
    query = (_owned(select(Adapter), Adapter, tenant_id)
             .order_by(Adapter.created_at.desc(), Adapter.id.desc()).limit(limit))
    if before is not None:
        created, adapter_id = before
        query = query.where((Adapter.created_at < created)
                            | ((Adapter.created_at == created) & (Adapter.id < adapter_id)))
    return list(session.scalars(query))


def delete_adapter(session: Session, *, adapter_id: str, tenant_id: str | None = None) -> bool:
    """Remove an adapter (its weights blob too, unless another adapter shares it)."""
    adapter = get_adapter(session, adapter_id=adapter_id, tenant_id=tenant_id)
    if adapter is None:
        return False
    digest = adapter.weights_sha256
    enqueue_webhook_event(session, tenant_id=adapter.tenant_id, event_type="adapter.deleted",
                          data={"adapter_id": adapter.id, "name": adapter.name,
                                "base_model": adapter.base_model})
    session.delete(adapter)
    session.flush()
    shared = session.scalar(select(func.count()).select_from(Adapter)
                            .where(Adapter.weights_sha256 == digest))
    if not shared:
        session.execute(delete(Blob).where(Blob.sha256 == digest))
    return True


# --- webhooks ------------------------------------------------------------------------------

def create_webhook(session: Session, *, tenant_id: str, url: str, events: list[str],
                   description: str | None = None) -> WebhookEndpoint:
    """A new endpoint with a fresh signing secret (``whsec_`` + 24 random bytes, base64)."""
    import base64

    secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    endpoint = WebhookEndpoint(tenant_id=tenant_id, url=url, secret=secret, events=events,
                               description=description)
    session.add(endpoint)
    session.flush()
    return endpoint


def list_webhooks(session: Session, *, tenant_id: str) -> Sequence[WebhookEndpoint]:
    return session.scalars(select(WebhookEndpoint).where(WebhookEndpoint.tenant_id == tenant_id)
                           .order_by(WebhookEndpoint.created_at, WebhookEndpoint.id)).all()


def get_webhook(session: Session, *, webhook_id: str,
                tenant_id: str | None = None) -> WebhookEndpoint | None:
    query = _owned(select(WebhookEndpoint).where(WebhookEndpoint.id == webhook_id),
                   WebhookEndpoint, tenant_id)
    return session.scalar(query)


def delete_webhook(session: Session, *, webhook_id: str, tenant_id: str) -> bool:
    endpoint = get_webhook(session, webhook_id=webhook_id, tenant_id=tenant_id)
    if endpoint is None:
        return False
    session.execute(delete(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint.id))
    session.delete(endpoint)
    return True


def enqueue_webhook_event(session: Session, *, tenant_id: str, event_type: str,
                          data: dict[str, Any]) -> list[WebhookDelivery]:
    """One delivery per endpoint of the tenant subscribed to ``event_type``, in the caller's
    transaction: the event and its deliveries are stored together or not at all."""
    endpoints = session.scalars(select(WebhookEndpoint)
                                .where(WebhookEndpoint.tenant_id == tenant_id)).all()
    now = utcnow()
    body = {"type": event_type, "timestamp": now.isoformat() + "Z", "data": data}
    out = []
    for endpoint in endpoints:
        if event_type in endpoint.events:
            delivery = WebhookDelivery(endpoint_id=endpoint.id, event_type=event_type,
                                       payload=body, next_attempt_at=now)
            session.add(delivery)
            out.append(delivery)
    return out


def due_deliveries(session: Session, *, now: datetime, limit: int = 50,
                   lock: bool = False) -> Sequence[WebhookDelivery]:
    """Pending deliveries whose next attempt is due; with ``lock``, rows another
    transaction holds are skipped (``FOR UPDATE SKIP LOCKED``; SQLite has one writer)."""
    query = (select(WebhookDelivery)
             .where(WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= now)
             .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id).limit(limit))
    if lock:
        query = query.with_for_update(skip_locked=True)
    return session.scalars(query).all()


def list_deliveries(session: Session, *, endpoint_id: str, limit: int = 100,
                    before: datetime | None = None) -> Sequence[WebhookDelivery]:
    query = select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint_id)
    if before is not None:
        query = query.where(WebhookDelivery.created_at < before)
    return session.scalars(query.order_by(WebhookDelivery.created_at.desc(),
                                          WebhookDelivery.id.desc()).limit(limit)).all()


def redeliver(session: Session, *, endpoint_id: str, delivery_id: str) -> WebhookDelivery | None:
    """Send a delivery again, as soon as possible: the same message (same webhook-id), its
    attempts and last answer start over."""
    delivery = session.get(WebhookDelivery, delivery_id)
    if delivery is None or delivery.endpoint_id != endpoint_id:
        return None
    delivery.status, delivery.attempts, delivery.next_attempt_at = "pending", 0, utcnow()
    delivery.delivered_at = delivery.last_status_code = delivery.last_error = None
    return delivery
