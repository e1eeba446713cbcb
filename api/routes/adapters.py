"""The registry of trained deltas."""

from __future__ import annotations

import io
import json
import re
import shutil
import tempfile
import threading
import zipfile
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.responses import FileResponse
from sqlalchemy.exc import IntegrityError
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from clipfit_core.delta import (
    CONFIG_NAME,
    FORMAT_VERSION,
    WEIGHTS_NAME,
    Delta,
    DeltaError,
    check_compatible,
)
from clipfit_core.export import nesting, read_delta_zip, write_open_clip, zip_directory
from clipfit_core.models import WeightsUnavailableError
from clipfit_core.prompts import classname_problems, resolve_templates, shorten
from clipfit_core.report import stored_problems
from registry import crud

from ..auth import Reader, Trainer
from ..deps import InferenceDep, SessionDep, SettingsDep, not_found, page_next, page_start
from ..limits import http_error_in
from ..quotas import too_many
from ..schemas import AdapterImportForm, AdapterPublic, AdaptersPublic, EvaluationPublic

router = APIRouter(prefix="/v1/adapters", tags=["adapters"])


@router.get("", response_model=AdaptersPublic)
def list_adapters(session: SessionDep, principal: Reader, limit: Annotated[int, Query(ge=1, le=200)] = 50,
                  cursor: str | None = None):
    before = page_start(cursor)
    rows = crud.list_adapters(session, tenant_id=principal.tenant_id, limit=limit, before=before)
    return AdaptersPublic(data=rows,
                          next_cursor=page_next(rows, limit))


@router.get("/{adapter_id}", response_model=AdapterPublic)
def get_adapter(adapter_id: str, session: SessionDep, principal: Reader):
    adapter = crud.get_adapter(session, adapter_id=adapter_id, tenant_id=principal.tenant_id)
    if adapter is None:
        raise not_found("adapter", adapter_id)
    return adapter


@router.get("/{adapter_id}/evaluation", response_model=EvaluationPublic,
            summary="Zero-shot vs tuned on the held-out split, per class, and calibration")
def adapter_evaluation(adapter_id: str, session: SessionDep, principal: Reader):
    """Computed once by the worker and stored in the delta's config; 404 for an adapter
    trained without a held-out split (``val_fraction`` 0) or before reports existed."""
    adapter = crud.get_adapter(session, adapter_id=adapter_id, tenant_id=principal.tenant_id)
    if adapter is None:
        raise not_found("adapter", adapter_id)
    if not adapter.config.get("evaluation"):
        raise HTTPException(404, detail=f"adapter {adapter_id} has no evaluation report: it "
                            "kept no held-out images (val_fraction 0) or predates reports")
    return EvaluationPublic(adapter_id=adapter.id, evaluation=adapter.config["evaluation"],
                            calibration=adapter.config.get("calibration"))


EXPORTS = threading.BoundedSemaphore(1)  # a merged export holds a copy of the base: one at a time


@router.get("/{adapter_id}/download", response_class=Response,
            responses={200: {"description": "a zip: the two delta files (format=delta), or "
                             "the base with the delta merged as open_clip's files "
                             "(format=open_clip)", "content": {"application/zip": {}}}},
            summary="The adapter as a zip: the delta files, or a merged open_clip checkpoint")
def download_adapter(adapter_id: str, session: SessionDep, inference: InferenceDep,
                     principal: Reader,
                     format: Annotated[Literal["delta", "open_clip"], Query()] = "delta"):
    adapter = crud.get_adapter(session, adapter_id=adapter_id, tenant_id=principal.tenant_id)
    if adapter is None:
        raise not_found("adapter", adapter_id)
    weights = crud.get_blob(session, sha256=adapter.weights_sha256)
    config = dict(adapter.config)
    session.close()  # an export takes seconds: no connection held meanwhile
    if format == "delta":
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr(WEIGHTS_NAME, weights)
            z.writestr(CONFIG_NAME, json.dumps(config, indent=2, sort_keys=True) + "\n")
        return Response(buf.getvalue(), media_type="application/zip", headers={
            "Content-Disposition": f'attachment; filename="clipfit-adapter-{adapter_id}.zip"'})
    if not EXPORTS.acquire(blocking=False):
        raise HTTPException(503, headers={"Retry-After": "10"},
                            detail="another merged export is being written; retry shortly")
    folder = Path(tempfile.mkdtemp(prefix="clipfit-export-"))
    try:
        base = inference.base(adapter.base_model)
        write_open_clip(base, Delta.from_bytes(weights, config), folder / "model")
        target = zip_directory(folder / "model", folder / "export.zip")
        shutil.rmtree(folder / "model")  # only the zip stays on disk while it is sent
    except WeightsUnavailableError as e:
        _cleanup(folder)
        raise HTTPException(503, detail="the base model's weights are not installed on this "
                            "server; the operator's log says more") from e
    except DeltaError as e:
        _cleanup(folder)
        raise HTTPException(409, detail="this adapter does not fit the base model loaded "
                                        "here (its weights changed since it was trained)") from e
    except BaseException:
        _cleanup(folder)
        raise
    finally:
        EXPORTS.release()
    return FileResponse(target, media_type="application/zip", background=BackgroundTask(
        _cleanup, folder), filename=f"clipfit-open-clip-{adapter_id}.zip")


def _cleanup(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


@router.post("", status_code=201, response_model=AdapterPublic,
             summary="Import a delta zip (as download gives it) trained on an allowed base",
             openapi_extra={"requestBody": {"required": True, "content": {
                 "multipart/form-data": {"schema": AdapterImportForm.model_json_schema()}}}})
async def import_adapter(request: Request, session: SessionDep, settings: SettingsDep,
                         inference: InferenceDep, principal: Trainer):
    """Checked before anything is stored: the zip (two files, sizes), the method, the class
    names and templates, the stored report and calibration, the base model (allowed here),
    and the tensors' names and shapes against that base with its weights fingerprint."""
    try:
        form = await request.form(max_files=1, max_fields=2)
    except Exception as e:  # malformed multipart, too many parts
        if (http_error := http_error_in(e)) is not None:
            raise http_error from e
        raise _refused([f"body: not a readable multipart form ({type(e).__name__})"]) from e
    upload, name = form.get("file"), form.get("name")
    if not hasattr(upload, "read"):
        raise _refused(["file: send the delta zip as the multipart file 'file'"])
    if name is not None and (not isinstance(name, str) or len(name) > 200):
        raise _refused(["name: at most 200 characters"])
    data = await upload.read()
    delta = await run_in_threadpool(_checked_import, data, settings, inference)

    def store():
        if settings.max_adapters and crud.count_active_jobs(
                session, tenant_id=principal.tenant_id) + crud.count_adapters(
                session, tenant_id=principal.tenant_id) >= settings.max_adapters:
            raise too_many(f"the limit of {settings.max_adapters} stored adapters (with those "
                           "being trained) is reached: delete some", 3600)
        adapter = crud.import_adapter(session, tenant_id=principal.tenant_id,
                                      weights=delta.to_bytes(), config=delta.config_dict(),
                                      name=name)
        session.commit()
        return adapter

    return await run_in_threadpool(store)


IMPORTS = threading.BoundedSemaphore(2)  # reading and checking a zip: bounded work at once


def _checked_import(data: bytes, settings, inference) -> Delta:
    """The uploaded delta, or 422 naming every problem (503 when the base cannot load).
    Blocking work: run off the event loop."""
    if not IMPORTS.acquire(timeout=30):
        raise HTTPException(503, headers={"Retry-After": "5"},
                            detail="other imports are being checked; retry shortly")
    try:
        try:
            delta = read_delta_zip(data)
        except DeltaError as e:
            raise _refused([str(e)]) from e
        config = delta.config_dict()
        problems = _config_problems(config, settings)
        if problems:
            raise _refused(problems)
        try:  # loading the base (first use) and comparing take a while
            check_compatible(inference.base(config["base_model"]), delta)
        except WeightsUnavailableError as e:
            raise HTTPException(503, detail="the base model's weights are not installed on "
                                "this server; the operator's log says more") from e
        except DeltaError as e:
            raise _refused([str(e)]) from e
        return delta
    finally:
        IMPORTS.release()


def _config_problems(config: dict, settings) -> list[str]:
    """A delta config from elsewhere, held to what the service itself writes."""
    problems = []
    classes = config["classnames"]
    if not _strings(classes) or len(classes) < 2:
        problems.append("classnames must be a list of at least 2 strings")
    else:
        problems += classname_problems(classes, max_count=settings.max_classes)
    if not _strings(config["templates"]) or not config["templates"]:
        problems.append("templates must be a non-empty list of strings")
    else:
        try:
            resolve_templates(config["templates"])  # each one's form, and how many
        except ValueError as e:
            problems.append(str(e))
    for key in ("hyperparameters", "metrics"):
        value = config.get(key)
        if not isinstance(value, dict) or nesting(value) > 3 or len(json.dumps(value)) > 65536:
            problems.append(f"{key} must be a JSON object of at most 3 levels and 64 KB")
    fingerprint = config["base_fingerprint"]
    if not isinstance(fingerprint, str) or not re.fullmatch(r"[0-9a-f]{64}", fingerprint):
        problems.append("base_fingerprint must be 64 hexadecimal digits")
    for key in ("arch", "pretrained"):
        if not isinstance(config.get(key), str | None) or len(config.get(key) or "") > 500:
            problems.append(f"{key} must be a string of at most 500 characters")
    if not isinstance(config.get("format_version"), int) or isinstance(
            config.get("format_version"), bool) or not 1 <= config["format_version"] \
            <= FORMAT_VERSION:
        problems.append(f"format_version must be from 1 to {FORMAT_VERSION}")
    problems += stored_problems(config)
    spec = config["base_model"]
    if not isinstance(spec, str) or spec not in settings.allowed_base_models:
        problems.append(f"base_model {shorten(spec)} is not allowed here; allowed: "
                        f"{settings.allowed_base_models}")
    return problems


def _strings(values) -> bool:
    return isinstance(values, list) and all(isinstance(v, str) for v in values)


def _refused(problems: list[str]) -> HTTPException:
    return HTTPException(422, detail={"message": "invalid adapter", "problems": problems})


@router.delete("/{adapter_id}", status_code=204,
               responses={409: {"description": "an alias points at the adapter"}})
def delete_adapter(adapter_id: str, session: SessionDep, inference: InferenceDep,
                   principal: Trainer):
    pointing = crud.aliases_of(session, adapter_id=adapter_id)
    if pointing and crud.get_adapter(session, adapter_id=adapter_id,
                                     tenant_id=principal.tenant_id) is not None:
        names = ", ".join(f"{a.name}@{a.alias}" for a in pointing[:5])
        raise HTTPException(409, detail=f"{names} point(s) at this adapter: move or delete "
                            "the alias first")
    try:
        if not crud.delete_adapter(session, adapter_id=adapter_id,
                                   tenant_id=principal.tenant_id):
            raise not_found("adapter", adapter_id)
        session.commit()
    except IntegrityError as e:  # an alias was pointed at it meanwhile
        session.rollback()
        raise HTTPException(409, detail="an alias was pointed at this adapter meanwhile: move "
                            "or delete the alias first") from e
    inference.forget(adapter_id)
    return Response(status_code=204)
