"""Batch predictions: classify many images in a worker (a zip, a stored dataset, or stored
images), follow the progress, fetch the answers as JSON Lines or CSV.

Scopes: submitting and cancelling need ``classify`` (a batch prediction classifies; it
trains nothing), reading needs ``read``."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request, Response, UploadFile
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from service import predictions
from service.predictions import FORMATS, INVALID_PREDICTION, PredictionRequest

from ..auth import Classifier, Reader
from ..deps import ContextDep, page_next, page_start
from ..events import events_answer
from ..forms import read_form, validated, validated_json
from ..schemas import (
    CURSOR_PATTERN,
    ClassifyOptions,
    EventsPublic,
    JobStatusName,
    Timestamp,
    multipart_schema,
)

router = APIRouter(prefix="/v1/predictions", tags=["predictions"])
CONFLICT = {409: {"description": "the prediction has already finished (cancel), or has not "
                  "succeeded (results)"}}


class PredictionJSON(ClassifyOptions):
    """``application/json``: stored images, by dataset or by sha256."""

    classes: list[str] | None = Field(None, description="zero-shot classes, or other classes "
                                      "for an adapter")
    dataset_id: str | None = Field(None, max_length=32, description="classify every image of "
                                   "this stored dataset (/v1/datasets)")
    images: list[str] | None = Field(None, description="classify these stored images of the "
                                     "tenant (their sha256: in its datasets or captures)")


class PredictionForm(ClassifyOptions):
    """``multipart/form-data``: a zip of images."""

    dataset: UploadFile = Field(description="a zip of images (folders are only names); the "
                                "same limits as a training zip")
    classes: str | None = Field(None, description="comma-separated class names")

    def class_list(self) -> list[str] | None:
        return [c.strip() for c in self.classes.split(",")] if self.classes else None


class PredictionCounts(BaseModel):
    images: int = Field(description="images to classify")
    done: int = Field(description="images answered so far (recorded chunks)")
    classified: int = Field(description="when finished: images answered")
    unknown: int = Field(description="when finished: answered 'unknown' (below threshold)")
    unreadable: int = Field(description="when finished: images that could not be read")


class PredictionPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    status: JobStatusName
    adapter_id: str | None = Field(description="the adapter it classifies with (null: "
                                   "zero-shot)")
    adapter: str | None = Field(description="the adapter reference as given")
    base_model: str
    classes: list[str]
    templates: list[str]
    top_k: int
    calibrated: bool = Field(description="probabilities use the adapter's temperature")
    threshold: float | None = Field(description="the rejection threshold applied")
    source: Literal["zip", "dataset", "images"]
    dataset_id: str | None
    counts: PredictionCounts
    progress: dict[str, Any] | None
    attempts: int
    cancel_requested: bool
    error: str | None
    results: dict[str, Any] | None = Field(description="when succeeded: the files' sha256 "
                                           "and the JSON Lines file's size in bytes")
    links: dict[str, str] = Field(description="this prediction, its events, its results")
    created_at: Timestamp
    started_at: Timestamp | None
    finished_at: Timestamp | None


class PredictionsPublic(BaseModel):
    data: list[PredictionPublic]
    next_cursor: str | None


def public(view: predictions.PredictionView) -> PredictionPublic:
    base = f"/v1/predictions/{view.id}"
    links = {"self": base, "events": f"{base}/events", "cancel": f"{base}/cancel"}
    if view.results is not None:
        links |= {f"results_{fmt}": f"{base}/results?format={fmt}" for fmt in FORMATS}
    return PredictionPublic.model_validate(vars(view) | {"links": links})


async def read_prediction_request(request: Request) -> PredictionRequest:
    """Stored images as JSON, or a zip upload as multipart, with the options."""
    if request.headers.get("content-type", "").startswith("application/json"):
        body = validated_json(PredictionJSON, await request.body(), INVALID_PREDICTION)
        archive, classes, dataset_id, images = None, body.classes, body.dataset_id, body.images
        fields_json = body.model_dump_json()
    else:
        form = await read_form(request, max_files=1, max_fields=20,
                               message=INVALID_PREDICTION)
        fields = {key: form.get(key) for key in PredictionForm.model_fields}
        body = validated(PredictionForm, {k: v for k, v in fields.items()
                                          if v not in ("", None)}, INVALID_PREDICTION)
        archive, classes = await body.dataset.read(), body.class_list()
        dataset_id = images = None
        fields_json = body.model_dump_json(exclude={"dataset"})
    problems = []
    if body.adapter_id and body.adapter and body.adapter_id != body.adapter:
        problems.append("give adapter or adapter_id, not two different adapters")
    return PredictionRequest(
        adapter=body.adapter_id or body.adapter, base_model=body.base_model, classes=classes,
        template=body.template, top_k=body.top_k, calibrated=body.calibrated,
        reject_unknown=body.reject_unknown, threshold=body.threshold, archive=archive,
        dataset_id=dataset_id, images=images, fields_json=fields_json, problems=problems)


@router.post("", status_code=202, response_model=PredictionPublic,
             summary="Classify many images in a worker; answers 202 with the queued "
                     "prediction", responses=CONFLICT,
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/json": {"schema": PredictionJSON.model_json_schema()},
                 "multipart/form-data": {"schema": multipart_schema(PredictionForm)}}}})
async def create_prediction(
    request: Request, ctx: ContextDep, principal: Classifier,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=200)] = None,
):
    """A zip of images (multipart ``dataset``), or a stored ``dataset_id`` or stored
    ``images`` (JSON); an ``adapter`` (id, name@VERSION, name@alias), or ``classes`` (and
    optionally ``base_model``) for zero-shot; the options of /v1/classify. With an
    ``Idempotency-Key``, the same request sent again answers the prediction it made."""
    submission = await read_prediction_request(request)
    submission.idempotency_key = idempotency_key
    view, _ = await run_in_threadpool(predictions.submit, ctx, principal, submission)
    return public(view)


@router.get("", response_model=PredictionsPublic)
def list_predictions(ctx: ContextDep, principal: Reader,
                     status: Annotated[JobStatusName | None, Query()] = None,
                     limit: Annotated[int, Query(ge=1, le=200)] = 50,
                     cursor: Annotated[str | None, Query(pattern=CURSOR_PATTERN)] = None):
    rows = predictions.list_predictions(ctx, principal, status=status, limit=limit,
                                        before=page_start(cursor))
    return PredictionsPublic(data=[public(v) for v in rows], next_cursor=page_next(rows, limit))


@router.get("/{prediction_id}", response_model=PredictionPublic)
def get_prediction(prediction_id: str, ctx: ContextDep, principal: Reader):
    return public(predictions.get_prediction(ctx, principal, prediction_id))


@router.get("/{prediction_id}/events", response_model=EventsPublic,
            responses={200: {"content": {"text/event-stream": {
                "schema": {"type": "string", "description": "with stream=true: each "
                           "message's data is an EventPublic"}}}}},
            summary="Prediction events; ?stream=true streams them live as Server-Sent Events")
async def prediction_events(request: Request, prediction_id: str, ctx: ContextDep,
                            principal: Reader,
                            cursor: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,
                            limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                            stream: bool = False,
                            last_event_id: Annotated[int | None,
                                                     Header(ge=0, le=2**63 - 1)] = None):
    """As a training job's events: queued, running, progress (one per recorded chunk),
    resumed, requeued, cancel_requested, then succeeded, failed or cancelled."""
    return await events_answer(
        lambda caller, after: predictions.events(ctx, caller, prediction_id, after=after,
                                                 limit=limit),
        principal, cursor=cursor, limit=limit, stream=stream, last_event_id=last_event_id)


@router.post("/{prediction_id}/cancel", response_model=PredictionPublic, responses=CONFLICT)
def cancel_prediction(prediction_id: str, ctx: ContextDep, principal: Classifier):
    """A queued prediction, or a running one whose worker is gone, ends cancelled at once;
    a live one stops before its next batch of images."""
    return public(predictions.cancel(ctx, principal, prediction_id))


@router.get("/{prediction_id}/results", responses={**CONFLICT, 200: {"content": {
    "application/x-ndjson": {"schema": {"type": "string"}},
    "text/csv": {"schema": {"type": "string"}}}}})
def prediction_results(prediction_id: str, ctx: ContextDep, principal: Reader,
                       format: Annotated[Literal["jsonl", "csv"], Query()] = "jsonl"):
    """One row per image, in order: name, sha256, label, unknown, top_k (label and
    probability, as /v1/classify answers), error (an image that could not be read). 409
    until the prediction has succeeded."""
    data = predictions.results(ctx, principal, prediction_id, format)
    filename = f"prediction-{prediction_id}.{format}"
    return Response(data, media_type=FORMATS[format],
                    headers={"Content-Disposition": f'attachment; filename="{filename}"'})

