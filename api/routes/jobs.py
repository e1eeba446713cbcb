"""Training jobs: submit, list, inspect, follow, cancel."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from starlette.concurrency import run_in_threadpool

from service import jobs
from service.jobs import INVALID_JOB, JobRequest

from ..auth import Reader, Trainer
from ..deps import ContextDep, page_next, page_start
from ..events import events_answer
from ..forms import read_form, read_image, validated
from ..schemas import (
    CURSOR_PATTERN,
    EventsPublic,
    JobCreateForm,
    JobPublic,
    JobsPublic,
    JobStatusName,
    multipart_schema,
)

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
CONFLICT = {409: {"description": "the job has already finished"}}


@router.post("", status_code=202, response_model=JobPublic,
             summary="Submit a few-shot training set; answers 202 with the queued job",
             openapi_extra={"requestBody": {"required": True, "content": {
                 "multipart/form-data": {"schema": multipart_schema(JobCreateForm)}}}})
async def create_job(
    request: Request, ctx: ContextDep, principal: Trainer,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=200)] = None,
):
    """With an ``Idempotency-Key``, the same request sent again (within the key's lifetime)
    answers the job it made; the same key with another request is refused."""
    submission = await read_job_request(request, ctx.settings)
    submission.idempotency_key = idempotency_key
    job, _ = await run_in_threadpool(jobs.submit, ctx, principal, submission)
    return job


async def read_job_request(request: Request, settings) -> JobRequest:
    """The multipart form (one file and one label per image within the image limit),
    validated into the job form model, then into a use-case request."""
    form = await read_form(request, max_files=settings.max_images + 1,
                           max_fields=settings.max_images + 50, message=INVALID_JOB)
    fields: dict = {}
    for key in JobCreateForm.field_keys():
        values = form.getlist(key)
        fields[key] = values if key in JobCreateForm.LISTS else values[0] if values else None
    problems = []
    if fields.get("base_model") == "":
        problems.append("base_model is empty: leave it out for the default, or name one")
    fields = {k: v for k, v in fields.items() if v not in ("", None) or k == "base_model"}
    body = validated(JobCreateForm, fields, INVALID_JOB, problems)
    return JobRequest(
        values=body.train_values(), base_model=body.base_model, name=body.name,
        classes=body.class_list(), dataset_id=body.dataset_id,
        parent_adapter_id=body.parent_adapter_id, problems=problems,
        archive=await body.dataset.read() if body.dataset is not None else None,
        files=[(f.filename, await read_image(f, settings)) for f in body.images or []],
        labels=body.labels or [],
        fields_json=body.model_dump_json(exclude={"images", "dataset"}))


@router.get("", response_model=JobsPublic)
def list_jobs(ctx: ContextDep, principal: Reader,
              status: Annotated[JobStatusName | None, Query()] = None,
              limit: Annotated[int, Query(ge=1, le=200)] = 50,
              cursor: Annotated[str | None, Query(pattern=CURSOR_PATTERN)] = None):
    rows = jobs.list_jobs(ctx, principal, status=status, limit=limit, before=page_start(cursor))
    return JobsPublic(data=rows, next_cursor=page_next(rows, limit))


@router.get("/{job_id}", response_model=JobPublic)
def get_job(job_id: str, ctx: ContextDep, principal: Reader):
    return jobs.get_job(ctx, principal, job_id)


@router.get("/{job_id}/events", response_model=EventsPublic,
            responses={200: {"content": {"text/event-stream": {
                "schema": {"type": "string", "description": "with stream=true: each "
                           "message's data is an EventPublic"}}}}},
            summary="Job events; ?stream=true streams them live as Server-Sent Events")
async def job_events(request: Request, job_id: str, ctx: ContextDep, principal: Reader,
                     cursor: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,
                     limit: Annotated[int, Query(ge=1, le=1000)] = 100, stream: bool = False,
                     last_event_id: Annotated[int | None, Header(ge=0, le=2**63 - 1)] = None):
    """Events after ``cursor`` (an event id). Streamed, each SSE message carries the event's
    id, so a reconnecting client (``Last-Event-ID``) resumes where it stopped; the stream
    ends after the job's final event."""
    return await events_answer(
        lambda caller, after: jobs.events(ctx, caller, job_id, after=after, limit=limit),
        principal, cursor=cursor, limit=limit, stream=stream, last_event_id=last_event_id)


@router.post("/{job_id}/cancel", response_model=JobPublic, responses=CONFLICT)
def cancel_job(job_id: str, ctx: ContextDep, principal: Trainer):
    """A queued job, or a running one whose worker is gone (stale heartbeat), ends
    cancelled at once; a live one stops within a couple of seconds."""
    return jobs.cancel(ctx, principal, job_id)
