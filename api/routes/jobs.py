"""Training jobs: submit, list, inspect, follow, cancel."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool

from clipfit_core.config import AUTO, TrainConfig, with_auto
from clipfit_core.data import FewShotDataset, Sample
from clipfit_core.prompts import classname_problems, shorten
from registry import crud
from registry.models import FINISHED, JobStatus, utcnow

from ..auth import Reader, Trainer
from ..deps import QueueDep, SessionDep, SettingsDep, not_found, page_next, page_start
from ..limits import http_error_in
from ..quotas import too_many
from ..schemas import (
    EventPublic,
    EventsPublic,
    JobCreateForm,
    JobPublic,
    JobsPublic,
    validation_problems,
)
from ..uploads import TrainingSet, UploadError, capped, from_files, from_zip

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
STATUSES = tuple(s.value for s in JobStatus)


@router.post("", status_code=202, response_model=JobPublic,
             summary="Submit a few-shot training set; answers 202 with the queued job",
             openapi_extra={"requestBody": {"required": True, "content": {
                 "multipart/form-data": {"schema": JobCreateForm.model_json_schema()}}}})
async def create_job(
    request: Request, session: SessionDep, settings: SettingsDep, queue: QueueDep,
    principal: Trainer,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=200)] = None,
):
    """With an ``Idempotency-Key``, the same request sent again (within the key's lifetime)
    answers the job it made; the same key with another request is refused."""
    form, problems = await read_job_form(request, settings)
    zipped = await form.dataset.read() if form.dataset is not None else None
    files = [(f.filename, await f.read()) for f in form.images or []]
    # hashing the upload and the database look-ups block: off the event loop
    digest = await run_in_threadpool(request_digest, form, zipped, files)
    if idempotency_key and (job := await run_in_threadpool(
            _idempotent_job, session, settings, principal.tenant_id, idempotency_key,
            digest)) is not None:
        return job
    await run_in_threadpool(check_job_quotas, request, session, settings, principal,
                            len(zipped or b"") + sum(len(data) for _, data in files))
    allowed = settings.allowed_base_models
    parent = None
    if form.parent_adapter_id:
        parent = await run_in_threadpool(crud.resolve_adapter, session,
                                         tenant_id=principal.tenant_id,
                                         reference=form.parent_adapter_id)
        if parent is None:
            problems.append(f"parent_adapter_id {shorten(form.parent_adapter_id)}: no such "
                            "adapter")
        elif form.base_model is not None and form.base_model != parent.base_model:
            problems.append(f"parent_adapter_id: that adapter was trained on "
                            f"{shorten(parent.base_model)}, not {shorten(form.base_model)}; "
                            "leave base_model out or give the same")
    base_model = (parent.base_model if parent is not None else allowed[0]) \
        if form.base_model is None else form.base_model
    if base_model not in allowed:
        problems.append(f"base_model {shorten(base_model)} is not allowed; allowed: {allowed}")
    if form.epochs != AUTO and form.epochs > settings.max_epochs:
        problems.append(f"epochs {form.epochs} exceeds the limit {settings.max_epochs}")
    config = None
    try:
        config = form.train_config()
    except ValueError as e:
        problems.append(str(e))
    class_list = form.class_list()
    if class_list is not None:
        problems += classname_problems(class_list, max_count=settings.max_classes)
    if form.dataset is not None and form.images:
        problems.append("send either 'images' + 'labels' or one 'dataset' zip, not both")
    stored = None
    if form.dataset_id is not None:
        if form.dataset is not None or form.images or form.labels or form.classes:
            problems.append("dataset_id: the images and classes come from the stored dataset; "
                            "send no images, labels, zip or classes with it")
        stored = await run_in_threadpool(crud.get_dataset, session, dataset_id=form.dataset_id,
                                         tenant_id=principal.tenant_id)
        if stored is None:
            problems.append(f"dataset_id {shorten(form.dataset_id)}: no such dataset")
            raise invalid_job(problems)
    # decoding every image and writing the rows are blocking work: off the event loop
    job, created = await run_in_threadpool(
        _validate_and_store, session, settings, problems, stored, zipped, files,
        form.labels or [],
        class_list, config, form.train_values() | (
            {"parent_adapter_id": parent.id} if parent is not None else {}),
        (idempotency_key, digest), tenant_id=principal.tenant_id,
        base_model=base_model, name=form.name)
    if created:
        try:
            queue.enqueue(job.id)  # only after the commit: a worker always finds the job
        except Exception as e:
            log.exception("could not enqueue job %s; removing it", job.id)
            await run_in_threadpool(_undo, session, job.id, stored is not None)
            raise HTTPException(503, detail=f"the job queue is unreachable ({type(e).__name__});"
                                " nothing was stored, try again later",
                                headers={"Retry-After": "5"}) from e
    return job


async def read_job_form(request: Request, settings) -> tuple[JobCreateForm, list[str]]:
    """The multipart form, parsed with limits that fit the image limit (one file and one
    label per image), then validated into the job form model."""
    try:
        form = await request.form(max_files=settings.max_images + 1,
                                  max_fields=settings.max_images + 50)
    except Exception as e:  # malformed multipart, too many parts: the client's to fix
        if (http_error := http_error_in(e)) is not None:
            raise http_error from e
        raise invalid_job([f"body: not a readable multipart form ({type(e).__name__})"]) from e
    fields: dict = {}
    for key in JobCreateForm.field_keys():
        values = form.getlist(key)
        if key in JobCreateForm.LISTS:
            fields[key] = values
        elif values:
            fields[key] = values[0]
    problems = []
    if fields.get("base_model", None) == "":
        problems.append("base_model is empty: leave it out for the default, or name one")
    fields = {k: v for k, v in fields.items() if v != "" or k == "base_model"}
    try:
        return JobCreateForm.model_validate(fields), problems
    except ValidationError as e:
        raise invalid_job(problems + validation_problems(e)) from e


def check_job_quotas(request: Request, session, settings, principal, upload_bytes: int) -> None:
    """429 when the tenant has too many jobs in flight or adapters, or the key's upload
    quota for the day is spent (the upload counts only when the other two allow it)."""
    tenant = principal.tenant_id
    active = crud.count_active_jobs(session, tenant_id=tenant)
    if settings.max_active_jobs and active >= settings.max_active_jobs:
        raise too_many(f"{active} jobs are queued or running, the limit is "
                       f"{settings.max_active_jobs}: wait for one to finish", 30)
    if settings.max_adapters and active + crud.count_adapters(
            session, tenant_id=tenant) >= settings.max_adapters:
        raise too_many(f"the limit of {settings.max_adapters} stored adapters (with those "
                       "being trained) is reached: delete some", 3600)
    request.app.state.quotas.hit_upload(principal.key_id or "anonymous", upload_bytes)


def request_digest(form: JobCreateForm, zipped: bytes | None,
                   files: list[tuple[str | None, bytes]]) -> str:
    """What a request asks for, independent of its multipart encoding (boundaries differ
    from one send to the next): the fields, then every file's name and content."""
    h = hashlib.sha256(form.model_dump_json(exclude={"images", "dataset"}).encode())
    for name, data in ([("dataset", zipped)] if zipped is not None else []) + files:
        h.update(f"\0{name}\0".encode())
        h.update(hashlib.sha256(data).digest())
    return h.hexdigest()


def _idempotent_job(session, settings, tenant_id: str, key: str, digest: str):
    """The job this key made for this request; None for a new (or expired) key; 422 when
    the key was used for another request."""
    not_before = utcnow() - timedelta(seconds=settings.idempotency_ttl_seconds)
    record = crud.get_idempotency(session, tenant_id=tenant_id, key=key, not_before=not_before)
    session.commit()  # an expired record is gone
    if record is None:
        return None
    if record.request_hash != digest:
        raise HTTPException(422, detail={"message": "invalid training job", "problems": [
            "Idempotency-Key was already used for a different request; use a new key"]})
    return crud.get_job(session, job_id=record.job_id)


def invalid_job(problems: list[str]) -> HTTPException:
    return HTTPException(422, detail={"message": "invalid training job",
                                      "problems": capped(problems)})


def _undo(session, job_id: str, keep_dataset: bool = False) -> None:
    session.rollback()
    crud.delete_job(session, job_id=job_id, keep_dataset=keep_dataset)
    session.commit()


def _validate_and_store(session, settings, problems, stored, zipped, files, labels, class_list,
                        config: TrainConfig | None, values: dict,
                        idempotency: tuple[str | None, str], **job_fields):
    """(job, True) once stored and committed; (job, False) for an idempotent repeat."""
    try:
        if stored is not None:
            training = TrainingSet(list(stored.classnames),
                                   crud.dataset_images(session, dataset_id=stored.id))
        elif zipped is not None:
            training = from_zip(zipped, class_list, settings)
        else:
            training = from_files(files, labels, class_list, settings)
    except UploadError as e:
        problems = problems + e.problems
    if problems or config is None:
        raise invalid_job(problems)
    parent_id = values.pop("parent_adapter_id", None)
    config, autos = with_auto(values, FewShotDataset(training.classnames, [
        Sample(data, label, name) for data, label, name in training.images]),
        base_model=job_fields["base_model"])
    if config.epochs > settings.max_epochs:  # only an auto value can get here
        config = dataclasses.replace(config, epochs=settings.max_epochs)
    hyperparameters = config.to_dict() | ({"auto": autos} if autos else {}) | (
        {"parent_adapter_id": parent_id} if parent_id else {})
    templates = hyperparameters.pop("templates")  # a column of its own
    key, digest = idempotency
    tenant_id = job_fields["tenant_id"]
    try:
        job = crud.create_job(session, classnames=training.classnames,
                              images=[] if stored is not None else training.images,
                              templates=templates, hyperparameters=hyperparameters,
                              dataset=stored, **job_fields)
        if key:
            crud.record_idempotency(session, tenant_id=tenant_id, key=key,
                                    request_hash=digest, job_id=job.id)
        session.commit()
    except IntegrityError as e:  # the same idempotency key, raced in by a concurrent request
        session.rollback()
        job = _idempotent_job(session, settings, tenant_id, key, digest) if key else None
        if job is None:
            if stored is not None:  # or the stored dataset, deleted meanwhile
                raise invalid_job(["dataset_id: the dataset was deleted meanwhile"]) from e
            raise
        return job, False
    return job, True


@router.get("", response_model=JobsPublic)
def list_jobs(session: SessionDep, principal: Reader,
              status: Annotated[str | None, Query()] = None,
              limit: Annotated[int, Query(ge=1, le=200)] = 50, cursor: str | None = None):
    if status is not None and status not in STATUSES:
        raise HTTPException(422, detail=f"status must be one of {STATUSES}, got {shorten(status)}")
    before = page_start(cursor)
    jobs = crud.list_jobs(session, tenant_id=principal.tenant_id, status=status, limit=limit,
                          before=before)
    return JobsPublic(data=jobs, next_cursor=page_next(jobs, limit))


@router.get("/{job_id}", response_model=JobPublic)
def get_job(job_id: str, session: SessionDep, principal: Reader):
    job = crud.get_job(session, job_id=job_id, tenant_id=principal.tenant_id)
    if job is None:
        raise not_found("job", job_id)
    return job


@router.get("/{job_id}/events", response_model=EventsPublic,
            responses={200: {"content": {"text/event-stream": {
                "schema": {"type": "string", "description": "with stream=true: each "
                           "message's data is an EventPublic"}}}}},
            summary="Job events; ?stream=true streams them live as Server-Sent Events")
async def job_events(request: Request, job_id: str, session: SessionDep, principal: Reader,
                     cursor: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,
                     limit: Annotated[int, Query(ge=1, le=1000)] = 100, stream: bool = False,
                     last_event_id: Annotated[int | None, Header(ge=0, le=2**63 - 1)] = None):
    """Events after ``cursor`` (an event id). Streamed, each SSE message carries the event's
    id, so a reconnecting client (``Last-Event-ID``) resumes where it stopped; the stream
    ends after the job's final event."""
    if crud.get_job(session, job_id=job_id, tenant_id=principal.tenant_id) is None:
        raise not_found("job", job_id)
    if not stream:
        events = crud.list_events(session, job_id=job_id, after_id=cursor, limit=limit)
        nxt = str(events[-1].id) if len(events) == limit else None
        return EventsPublic(data=events, next_cursor=nxt)
    sessions = request.app.state.sessions
    session.close()  # the stream outlives this request's session

    def poll(after: int):
        with sessions() as s:
            events = crud.list_events(s, job_id=job_id, after_id=after, limit=limit)
            return [EventPublic.model_validate(e) for e in events], \
                crud.get_job(s, job_id=job_id).status

    async def messages():
        after = max(cursor, last_event_id or 0)
        while True:
            events, status = await run_in_threadpool(poll, after)
            for e in events:
                after = e.id
                yield ServerSentEvent(data=e.model_dump_json(), event=e.kind, id=str(e.id))
            if status in FINISHED and not events:
                return
            await asyncio.sleep(0.5)

    return EventSourceResponse(messages(), ping=15)


@router.post("/{job_id}/cancel", response_model=JobPublic,
             responses={409: {"description": "the job has already finished"}})
def cancel_job(job_id: str, session: SessionDep, settings: SettingsDep, principal: Trainer):
    """A queued job, or a running one whose worker is gone (stale heartbeat), ends
    cancelled at once; a live one stops within a couple of seconds."""
    job = crud.get_job(session, job_id=job_id, tenant_id=principal.tenant_id)
    if job is None:
        raise not_found("job", job_id)
    if job.status in FINISHED:
        return JSONResponse(status_code=409, content={
            "detail": f"job {job_id} already finished with status {job.status!r}"})
    stale_before = utcnow() - timedelta(seconds=settings.stale_after_seconds)
    job = crud.request_cancel(session, job_id=job_id, stale_before=stale_before)
    session.commit()
    return job
