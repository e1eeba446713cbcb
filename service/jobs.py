"""Training jobs: submit (validated and stored whole, or not at all, then sent to the
queue), list, inspect, follow and cancel."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from clipfit_core.config import AUTO, TrainConfig, with_auto
from clipfit_core.data import FewShotDataset, Sample
from clipfit_core.prompts import classname_problems, shorten
from registry import adapters as adapter_rows
from registry import benchmarks as benchmark_rows
from registry import datasets as dataset_rows
from registry import jobs as job_rows
from registry.models import FINISHED, Job, JobEvent, JobStatus, utcnow

from .context import Caller, Context
from .errors import Conflict, Invalid, found
from .quotas import check_room
from .uploads import from_files, from_zip

log = logging.getLogger(__name__)
INVALID_JOB = "invalid training job"
STATUSES = tuple(s.value for s in JobStatus)
T = TypeVar("T")


@dataclass
class JobRequest:
    """A job as submitted: the training spec's exposed values as sent (``auto`` allowed for
    the auto fields), what to train on (uploaded files with labels, a zip, or a stored
    dataset) and the job's own fields."""

    values: dict[str, Any]
    base_model: str | None = None
    name: str | None = None
    classes: list[str] | None = None
    dataset_id: str | None = None
    parent_adapter_id: str | None = None
    archive: bytes | None = None
    files: list[tuple[str | None, bytes]] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    idempotency_key: str | None = None
    fields_json: str = ""  # the request's non-file fields, for the idempotency digest
    problems: list[str] = field(default_factory=list)  # found while parsing the request

    def upload_bytes(self) -> int:
        return len(self.archive or b"") + sum(len(data) for _, data in self.files)

    def digest(self) -> str:
        """What the request asks for, independent of its encoding (multipart boundaries
        differ from one send to the next): the fields, then every file's name and content."""
        h = hashlib.sha256(self.fields_json.encode())
        named = ([("dataset", self.archive)] if self.archive is not None else []) + self.files
        for name, data in named:
            h.update(f"\0{name}\0".encode())
            h.update(hashlib.sha256(data).digest())
        return h.hexdigest()


def submit(ctx: Context, caller: Caller, request: JobRequest) -> tuple[Job, bool]:
    """(job, True) for a new job, stored and sent to the queue (later, by the reconciler,
    when the broker is away); (job, False) when the same
    request was sent before with the same ``Idempotency-Key``. Blocking work (decoding every
    image, database writes): call it off an event loop."""
    settings, tenant = ctx.settings, caller.tenant_id
    digest = request.digest()
    if (job := _repeat(ctx, tenant, request.idempotency_key, digest)) is not None:
        return job, False
    with ctx.reading() as s:
        check_room(s, settings, tenant, new_job=True)
    ctx.quotas.hit_upload(caller.key_id, request.upload_bytes())
    with ctx.reading() as s:
        problems, base_model, parent_id, stored = _checked_request(s, ctx, tenant, request)
        dataset = _training_set(s, ctx, request, stored, problems)
    problems += spec_problems(settings, request.values)
    if problems or dataset is None:
        raise Invalid(problems, INVALID_JOB)
    hyperparameters, templates, autos = resolved_spec(settings, request.values, dataset,
                                                      base_model=base_model)
    try:
        with ctx.transaction() as s:
            job = job_rows.create_job(
                s, tenant_id=tenant, classnames=dataset.classnames,
                images=[] if stored is not None else dataset.samples, templates=templates,
                hyperparameters=hyperparameters, auto=autos or None,
                parent_adapter_id=parent_id, base_model=base_model, name=request.name,
                dataset=dataset_rows.get_dataset(s, dataset_id=stored) if stored else None)
            job.adapter_id  # noqa: B018 (loaded while the session is open)
            if request.idempotency_key:
                job_rows.record_idempotency(s, tenant_id=tenant, key=request.idempotency_key,
                                            request_hash=digest, job_id=job.id)
    except IntegrityError as e:  # the same idempotency key, raced in by a concurrent request
        job = _repeat(ctx, tenant, request.idempotency_key, digest)
        if job is None:
            if stored is not None:  # or the stored dataset, deleted meanwhile
                raise Invalid(["dataset_id: the dataset was deleted meanwhile"],
                              INVALID_JOB) from e
            raise
        return job, False
    send(ctx, job)
    return job, True


def spec_problems(settings, values: dict[str, Any]) -> list[str]:
    """Every problem with the training spec's values (field names; ``auto`` allowed for
    AUTO_FIELDS): out of bounds, or epochs over the operator's limit."""
    problems = []
    epochs = values.get("epochs")
    if isinstance(epochs, int) and epochs > settings.max_epochs:
        problems.append(f"epochs {epochs} exceeds the limit {settings.max_epochs}")
    _spec(values, problems)
    return problems


def resolved_spec(settings, values: dict[str, Any], dataset: FewShotDataset, *,
                  base_model: str) -> tuple[dict[str, Any], list[str], list[str]]:
    """(hyperparameters, templates, the fields given as auto) of checked ``values``, the
    ``auto`` ones resolved for ``dataset`` (the images the job trains on)."""
    config, autos = with_auto(values, dataset, base_model=base_model)
    if config.epochs > settings.max_epochs:  # only an auto value can get here
        config = dataclasses.replace(config, epochs=settings.max_epochs)
    hyperparameters = config.to_dict()
    templates = hyperparameters.pop("templates")  # a column of its own
    return hyperparameters, templates, autos


def send(ctx: Context, job: Job) -> None:
    """Publish the committed job (a worker always finds it). When the broker is away the
    job stays stored and queued (the database is the truth), marked never sent, and the
    reconciler sends it on its first round once the broker answers."""
    try:
        ctx.queue.enqueue(job.id, job.kind)
    except Exception as e:  # noqa: BLE001 (kept: the reconciler sends it later)
        log.warning("job %s is stored but not sent: the job queue is unreachable (%s: %s); "
                    "the reconciler sends it when the queue answers", job.id,
                    type(e).__name__, e)
        try:
            with ctx.transaction() as s:
                job_rows.mark_unsent(s, job_ids=[job.id])
        except Exception:  # then it is sent CLIPFIT_REQUEUE_AFTER_SECONDS late
            log.warning("could not mark job %s unsent", job.id, exc_info=True)


def repeat_of(ctx: Context, tenant_id: str, key: str | None, digest: str,
              made: Callable[[Session, str], T | None], message: str) -> T | None:
    """What an ``Idempotency-Key`` made for this request (``made(session, job id)``, read
    in the same transaction): None without a key, or for a new (or expired) one;
    ``Invalid`` (titled ``message``) when the key was used for another request, or what it
    made is gone."""
    if not key:
        return None
    not_before = utcnow() - timedelta(seconds=ctx.settings.idempotency_ttl_seconds)
    with ctx.transaction() as s:  # an expired record is removed
        record = job_rows.get_idempotency(s, tenant_id=tenant_id, key=key,
                                          not_before=not_before)
        if record is None:
            return None
        if record.request_hash != digest or (answer := made(s, record.job_id)) is None:
            raise Invalid(["Idempotency-Key was already used for a different request; use a "
                           + "new key"], message)
        return answer


def _repeat(ctx: Context, tenant_id: str, key: str | None, digest: str) -> Job | None:
    return repeat_of(ctx, tenant_id, key, digest, _loaded_job, INVALID_JOB)


def _loaded_job(s: Session, job_id: str) -> Job:
    job = job_rows.get_job(s, job_id=job_id)
    job.adapter_id  # noqa: B018 (loaded while the session is open)
    return job


def _checked_request(s: Session, ctx: Context, tenant_id: str, request: JobRequest
                     ) -> tuple[list[str], str, str | None, str | None]:
    """(problems, base model, parent adapter id, stored dataset id) of a request, every
    problem listed."""
    settings, problems = ctx.settings, list(request.problems)
    parent = None
    if request.parent_adapter_id:
        parent = adapter_rows.resolve_adapter(s, tenant_id=tenant_id,
                                              reference=request.parent_adapter_id)
        if parent is None:
            problems.append(f"parent_adapter_id {shorten(request.parent_adapter_id)}: no such "
                            "adapter")
        elif request.base_model is not None and request.base_model != parent.base_model:
            problems.append(f"parent_adapter_id: that adapter was trained on "
                            f"{shorten(parent.base_model)}, not {shorten(request.base_model)}; "
                            "leave base_model out or give the same")
    allowed = settings.allowed_base_models
    base_model = request.base_model if request.base_model is not None else (
        parent.base_model if parent is not None else allowed[0])
    if base_model not in allowed:
        problems.append(f"base_model {shorten(base_model)} is not allowed; allowed: {allowed}")
    if request.classes is not None:
        problems += classname_problems(request.classes, max_count=settings.max_classes)
    if request.archive is not None and request.files:
        problems.append("send either 'images' + 'labels' or one 'dataset' zip, not both")
    stored = None
    if request.dataset_id is not None:
        if request.archive is not None or request.files or request.labels or request.classes:
            problems.append("dataset_id: the images and classes come from the stored dataset; "
                            "send no images, labels, zip or classes with it")
        if dataset_rows.get_dataset(s, dataset_id=request.dataset_id,
                                    tenant_id=tenant_id) is None:
            problems.append(f"dataset_id {shorten(request.dataset_id)}: no such dataset")
            raise Invalid(problems, INVALID_JOB)
        stored = request.dataset_id
    return problems, base_model, parent.id if parent else None, stored


def _training_set(s: Session, ctx: Context, request: JobRequest, stored: str | None,
                  problems: list[str]) -> FewShotDataset | None:
    """The images to train on; their problems join ``problems`` (None when unreadable)."""
    try:
        if stored is not None:
            return stored_dataset(s, dataset_id=stored)
        if request.archive is not None:
            return from_zip(request.archive, request.classes, ctx.settings)
        return from_files(request.files, request.labels, request.classes, ctx.settings)
    except Invalid as e:
        problems += e.problems
        return None


def stored_dataset(s: Session, *, dataset_id: str, excluding: Collection[str] = ()
                   ) -> FewShotDataset:
    """A stored dataset as the core reads it, less the images whose blob is one of
    ``excluding``."""
    dataset = dataset_rows.get_dataset(s, dataset_id=dataset_id)
    return FewShotDataset(list(dataset.classnames), [
        Sample(row.source, row.label, row.name)
        for row in dataset_rows.dataset_images(s, dataset_id=dataset_id, excluding=excluding)])


def job_dataset(s: Session, job: Job) -> tuple[FewShotDataset, int]:
    """What a job trains on (for the worker), and how many images of its dataset were left
    out: a retrain leaves out its lineage's benchmark set, as it was when the job was made
    (by blob: the same bytes elsewhere in the dataset are left out too)."""
    if not job.retrain:
        return stored_dataset(s, dataset_id=job.dataset_id), 0
    held = benchmark_rows.benchmark_digests(s, tenant_id=job.tenant_id,
                                            lineage=job.retrain["lineage"],
                                            size=job.retrain["benchmark_images"])
    dataset = stored_dataset(s, dataset_id=job.dataset_id, excluding=held)
    return dataset, dataset_rows.dataset_size(s, dataset_id=job.dataset_id) - len(dataset)


def _spec(values: dict[str, Any], problems: list[str]) -> TrainConfig | None:
    """The training spec with ``auto`` values at their defaults (resolved once the images
    are read); its bad values join ``problems``."""
    defaults = TrainConfig.__dataclass_fields__
    try:
        return TrainConfig(**{k: defaults[k].default if v == AUTO else v
                              for k, v in values.items()})
    except ValueError as e:
        problems.append(str(e))
        return None


def list_jobs(ctx: Context, caller: Caller, *, status: str | None, limit: int,
              before=None) -> list[Job]:
    if status is not None and status not in STATUSES:
        raise Invalid([f"status must be one of {STATUSES}, got {shorten(status)}"])
    with ctx.reading() as s:
        return job_rows.list_jobs(s, tenant_id=caller.tenant_id, status=status, limit=limit,
                                  before=before)


def get_job(ctx: Context, caller: Caller, job_id: str) -> Job:
    with ctx.reading() as s:
        job = found(job_rows.get_job(s, job_id=job_id, tenant_id=caller.tenant_id,
                                     kind="train"), "job", job_id)
        job.adapter_id  # noqa: B018 (loaded while the session is open)
        return job


def events(ctx: Context, caller: Caller | None, job_id: str, *, after: int, limit: int
           ) -> tuple[list[JobEvent], bool]:
    """(events after the event id ``after``, whether the job has finished); ``caller`` None:
    the job was checked before (a stream's later polls)."""
    with ctx.reading() as s:
        job = found(job_rows.get_job(s, job_id=job_id,
                                     tenant_id=caller.tenant_id if caller else None,
                                     kind="train"), "job", job_id)
        return (job_rows.list_events(s, job_id=job_id, after_id=after, limit=limit),
                job.status in FINISHED)


def cancel(ctx: Context, caller: Caller, job_id: str) -> Job:
    """A queued job, or a running one whose worker is gone (stale heartbeat), ends
    cancelled at once; a live one stops within a couple of seconds."""
    stale_before = utcnow() - timedelta(seconds=ctx.settings.stale_after_seconds)
    with ctx.transaction() as s:
        job = found(job_rows.get_job(s, job_id=job_id, tenant_id=caller.tenant_id,
                                     kind="train"), "job", job_id)
        if job.status in FINISHED:
            raise Conflict(f"job {job_id} already finished with status {job.status!r}")
        job = job_rows.request_cancel(s, job_id=job_id, stale_before=stale_before)
        job.adapter_id  # noqa: B018 (loaded while the session is open)
        return job
