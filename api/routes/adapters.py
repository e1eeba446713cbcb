"""The registry of trained deltas, and the retrain of a named one. Every route that names an
adapter takes its id, ``name@VERSION`` or ``name@alias``."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Body, Path, Query, Request, Response
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from service import adapters, retrain
from service.adapters import INVALID_ADAPTER
from service.errors import Invalid
from service.retrain import RetrainRequest

from ..auth import Reader, Trainer
from ..deps import ContextDep, page_next, page_start
from ..forms import files, read_form
from ..schemas import (
    CURSOR_PATTERN,
    AdapterImportForm,
    AdapterPublic,
    AdaptersPublic,
    EvaluationPublic,
    JobPublic,
    RetrainCreate,
    multipart_schema,
)

router = APIRouter(prefix="/v1/adapters", tags=["adapters"])
Reference = Annotated[str, Path(description="the adapter's id, name@VERSION or name@alias")]
ZIP = {200: {"description": "a zip: the two delta files (format=delta), or the base with the "
             "delta merged as open_clip's files (format=open_clip)",
             "content": {"application/zip": {}}}}


@router.get("", response_model=AdaptersPublic)
def list_adapters(ctx: ContextDep, principal: Reader,
                  limit: Annotated[int, Query(ge=1, le=200)] = 50,
                  cursor: Annotated[str | None, Query(pattern=CURSOR_PATTERN)] = None):
    rows = adapters.list_adapters(ctx, principal, limit=limit, before=page_start(cursor))
    return AdaptersPublic(data=rows, next_cursor=page_next(rows, limit))


@router.get("/{adapter_id}", response_model=AdapterPublic)
def get_adapter(adapter_id: Reference, ctx: ContextDep, principal: Reader):
    return adapters.get(ctx, principal, adapter_id)


@router.get("/{adapter_id}/evaluation", response_model=EvaluationPublic,
            summary="Zero-shot vs tuned on the held-out split, per class, and calibration")
def adapter_evaluation(adapter_id: Reference, ctx: ContextDep, principal: Reader):
    """Computed once by the worker and stored in the delta's config; 404 for an adapter
    trained without a held-out split (``val_fraction`` 0) or before reports existed."""
    adapter, report, calibration = adapters.evaluation(ctx, principal, adapter_id)
    return EvaluationPublic(adapter_id=adapter.id, evaluation=report, calibration=calibration)


@router.get("/{adapter_id}/download", response_class=Response, responses=ZIP,
            summary="The adapter as a zip: the delta files, or a merged open_clip checkpoint")
def download_adapter(adapter_id: Reference, ctx: ContextDep, principal: Reader,
                     format: Annotated[Literal["delta", "open_clip"], Query()] = "delta"):
    if format == "delta":
        adapter, data = adapters.delta_zip(ctx, principal, adapter_id)
        return Response(data, media_type="application/zip", headers={
            "Content-Disposition": f'attachment; filename="clipfit-adapter-{adapter.id}.zip"'})
    export = adapters.open_clip_export(ctx, principal, adapter_id)
    return FileResponse(export.path, media_type="application/zip",
                        background=BackgroundTask(export.cleanup),
                        filename=f"clipfit-open-clip-{export.adapter.id}.zip")


@router.post("", status_code=201, response_model=AdapterPublic,
             summary="Import a delta zip (as download gives it) trained on an allowed base",
             openapi_extra={"requestBody": {"required": True, "content": {
                 "multipart/form-data": {"schema": multipart_schema(AdapterImportForm)}}}})
async def import_adapter(request: Request, ctx: ContextDep, principal: Trainer):
    """Checked before anything is stored: the zip (two files, sizes), the method, the class
    names and templates, the stored report and calibration, the base model (allowed here),
    and the tensors' names and shapes against that base with its weights fingerprint."""
    form = await read_form(request, max_files=1, max_fields=2, message=INVALID_ADAPTER)
    upload, name = files(form, "file"), form.get("name")
    if not upload:
        raise Invalid(["file: send the delta zip as the multipart file 'file'"],
                      INVALID_ADAPTER)
    if name is not None and not isinstance(name, str):
        raise Invalid(["name: at most 200 characters"], INVALID_ADAPTER)
    data = await upload[0].read()
    return await run_in_threadpool(adapters.import_adapter, ctx, principal, data, name)


@router.post("/{adapter_id}/retrain", status_code=202, response_model=JobPublic,
             responses={409: {"description": "no new labelled captures; or the adapter has "
                              "no name, or was imported (no training images here)"}},
             summary="Train the next version of the adapter's name, warm-started from it, "
             "on its dataset plus the labelled captures; answers 202 with the queued job")
def retrain_adapter(adapter_id: Reference, ctx: ContextDep, principal: Trainer,
                    body: Annotated[RetrainCreate | None, Body()] = None):
    """The labelled captures of its name that no retrain took yet join a new version of its
    training dataset, except every fifth, which joins the name's benchmark set (never
    trained on; the first retrain also puts the parent's held-out images there). The job
    is ``POST /v1/jobs``'s, with ``parent_adapter_id`` this adapter, its name, base model,
    templates and hyperparameters (``auto`` ones resolved again, ``hyperparameters``
    overrides on top); ``retrain`` says what it took."""
    body = body or RetrainCreate()
    overrides = body.hyperparameters.model_dump(exclude_none=True) \
        if body.hyperparameters is not None else {}
    return retrain.retrain(ctx, principal, adapter_id, RetrainRequest(
        promote=body.promote, alias=body.alias, hyperparameters=overrides))


@router.delete("/{adapter_id}", status_code=204,
               responses={409: {"description": "an alias points at the adapter"}})
def delete_adapter(adapter_id: Reference, ctx: ContextDep, principal: Trainer):
    adapters.delete(ctx, principal, adapter_id)
    return Response(status_code=204)
