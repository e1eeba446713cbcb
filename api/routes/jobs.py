"""Training jobs: submit, list, inspect, follow, cancel."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Annotated

from fastapi import APIRouter, File, Form, Header, HTTPException, Query, UploadFile
from fastapi.responses import JSONResponse, StreamingResponse
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

from clipfit_core.classify import resolve_templates
from registry import crud
from registry.db import session_factory
from registry.models import FINISHED, JobStatus

from ..deps import SessionDep, SettingsDep, not_found, page_next, page_start
from ..schemas import EventPublic, EventsPublic, JobPublic, JobsPublic
from ..uploads import UploadError, from_files, from_zip

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
STATUSES = tuple(s.value for s in JobStatus)


def enqueue(job_id: str) -> None:
    from worker.tasks import train_job

    train_job.delay(job_id)


@router.post("", status_code=202, response_model=JobPublic,
             summary="Submit a few-shot training set; answers 202 with the queued job")
async def create_job(
    session: SessionDep, settings: SettingsDep,
    images: Annotated[list[UploadFile] | None, File(description="training images")] = None,
    labels: Annotated[list[str] | None, Form(description="one class name per image")] = None,
    dataset: Annotated[UploadFile | None, File(description="zip: CLASS/FILE or manifest.csv")]
    = None,
    classes: Annotated[str | None, Form(description="comma-separated class order")] = None,
    base_model: Annotated[str | None, Form()] = None,
    template: Annotated[str, Form(description="template name or a string with {}")] = "default",
    epochs: Annotated[int, Form(ge=1)] = 10,
    lr: Annotated[float, Form(gt=0)] = 0.002,
    batch_size: Annotated[int, Form(ge=1, le=1024)] = 32,
    shots: Annotated[int, Form(ge=0)] = 16,
    lambda_: Annotated[float, Form(alias="lambda", ge=0)] = 8.0,
    seed: Annotated[int, Form()] = 0,
    val_fraction: Annotated[float, Form(ge=0, lt=1, description="held out for best-epoch "
                                        "selection and the zero-shot vs tuned metrics")] = 0.2,
    crop_min: Annotated[float, Form(gt=0, le=1, description="smallest random-crop scale "
                                    "(the paper: 0.08; raise it for tiny images)")] = 0.08,
    name: Annotated[str | None, Form(max_length=200)] = None,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
):
    if idempotency_key and (job := crud.get_job_by_idempotency_key(
            session, key=idempotency_key)) is not None:
        return JobPublic.of(job)
    problems = []
    allowed = settings.allowed_base_models
    base_model = base_model or allowed[0]
    if base_model not in allowed:
        problems.append(f"base_model {base_model!r} is not allowed; allowed: {allowed}")
    if epochs > settings.max_epochs:
        problems.append(f"epochs {epochs} exceeds the limit {settings.max_epochs}")
    try:
        templates = resolve_templates(template)
    except ValueError as e:
        problems.append(str(e))
        templates = []
    class_list = [c.strip() for c in classes.split(",") if c.strip()] if classes else None
    if dataset is not None and images:
        problems.append("send either 'images' + 'labels' or one 'dataset' zip, not both")
    zipped = await dataset.read() if dataset is not None else None
    files = [(f.filename or f"image-{i}", await f.read()) for i, f in enumerate(images or [])]
    hyperparameters = {"epochs": epochs, "lr": lr, "batch_size": batch_size, "shots": shots,
                       "lambda": lambda_, "seed": seed, "val_fraction": val_fraction,
                       "crop_min": crop_min}
    # decoding every image and writing the rows are blocking work: off the event loop
    job, created = await run_in_threadpool(
        _validate_and_store, session, settings, problems, zipped, files, labels or [],
        class_list, base_model=base_model, templates=templates,
        hyperparameters=hyperparameters, name=name, idempotency_key=idempotency_key)
    if created:
        try:
            enqueue(job.id)  # only after the commit: a worker always finds the job
        except Exception as e:
            log.exception("could not enqueue job %s; removing it", job.id)
            await run_in_threadpool(_undo, session, job.id)
            raise HTTPException(503, detail=f"the job queue is unreachable ({type(e).__name__});"
                                " nothing was stored, try again later") from e
    return JobPublic.of(job)


def _undo(session, job_id: str) -> None:
    session.rollback()
    crud.delete_job(session, job_id=job_id)
    session.commit()


def _validate_and_store(session, settings, problems, zipped, files, labels, class_list,
                        **job_fields):
    """(job, True) once stored and committed; (job, False) for an idempotent repeat."""
    try:
        if zipped is not None:
            training = from_zip(zipped, class_list, settings)
        else:
            training = from_files(files, labels, class_list, settings)
    except UploadError as e:
        problems = problems + e.problems
    if problems:
        raise HTTPException(422, detail={"message": "invalid training job", "problems": problems})
    key = job_fields["idempotency_key"]
    try:
        job = crud.create_job(session, classnames=training.classnames, images=training.images,
                              **job_fields)
        session.commit()
    except IntegrityError:  # the same idempotency key, raced in by a concurrent request
        session.rollback()
        job = crud.get_job_by_idempotency_key(session, key=key or "")
        if job is None:
            raise
        return job, False
    return job, True


@router.get("", response_model=JobsPublic)
def list_jobs(session: SessionDep, status: Annotated[str | None, Query()] = None,
              limit: Annotated[int, Query(ge=1, le=200)] = 50, cursor: str | None = None):
    if status is not None and status not in STATUSES:
        raise HTTPException(422, detail=f"status must be one of {STATUSES}, got {status!r}")
    before = page_start(cursor)
    jobs = crud.list_jobs(session, status=status, limit=limit, before=before)
    return JobsPublic(data=[JobPublic.of(j) for j in jobs],
                      next_cursor=page_next(jobs, limit))


@router.get("/{job_id}", response_model=JobPublic)
def get_job(job_id: str, session: SessionDep):
    job = crud.get_job(session, job_id=job_id)
    if job is None:
        raise not_found("job", job_id)
    return JobPublic.of(job)


@router.get("/{job_id}/events", response_model=EventsPublic,
            summary="Job events; ?stream=true streams them live as Server-Sent Events")
async def job_events(job_id: str, session: SessionDep, cursor: int = 0,
                     limit: Annotated[int, Query(ge=1, le=1000)] = 100, stream: bool = False):
    if crud.get_job(session, job_id=job_id) is None:
        raise not_found("job", job_id)
    if not stream:
        events = crud.list_events(session, job_id=job_id, after_id=cursor, limit=limit)
        nxt = str(events[-1].id) if len(events) == limit else None
        return EventsPublic(data=[EventPublic.of(e) for e in events], next_cursor=nxt)

    async def sse():
        after = cursor
        while True:
            with session_factory()() as s:
                events = crud.list_events(s, job_id=job_id, after_id=after, limit=limit)
                status = crud.get_job(s, job_id=job_id).status
            for e in events:
                after = e.id
                yield f"id: {e.id}\nevent: {e.kind}\ndata: " \
                      f"{json.dumps(EventPublic.of(e).model_dump(mode='json'))}\n\n"
            if status in FINISHED and not events:
                return
            await asyncio.sleep(0.5)

    return StreamingResponse(sse(), media_type="text/event-stream")


@router.post("/{job_id}/cancel", response_model=JobPublic,
             responses={409: {"description": "the job has already finished"}})
def cancel_job(job_id: str, session: SessionDep):
    job = crud.get_job(session, job_id=job_id)
    if job is None:
        raise not_found("job", job_id)
    if job.status in FINISHED:
        return JSONResponse(status_code=409, content={
            "detail": f"job {job_id} already finished with status {job.status!r}"})
    job = crud.request_cancel(session, job_id=job_id)
    session.commit()
    return JobPublic.of(job)
