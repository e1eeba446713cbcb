"""Classification with any adapter, or zero-shot over plain class names."""

from __future__ import annotations

import base64
import binascii
import math

from fastapi import APIRouter, HTTPException, Request, Response
from pydantic import ValidationError
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.concurrency import run_in_threadpool

from clipfit_core.delta import Delta, DeltaError
from clipfit_core.models import WeightsUnavailableError
from clipfit_core.prompts import classname_problems, resolve_templates, shorten
from clipfit_core.serving import Overloaded, ServerClosed
from registry import crud

from ..auth import Classifier
from ..deps import InferenceDep, SessionDep, SettingsDep, not_found
from ..inference import AdapterInfo, ClientGone
from ..limits import http_error_in
from ..schemas import ClassifyForm, ClassifyJSON, ClassifyPublic, validation_problems
from ..uploads import capped, clean_filename, decode_image

router = APIRouter(prefix="/v1", tags=["classify"])
_FORM_LISTS = ("images",)


def _invalid(problems: list[str]) -> HTTPException:
    return HTTPException(422, detail={"message": "invalid classification request",
                                      "problems": capped(problems)})


async def _read_request(request: Request, settings) -> tuple[ClassifyJSON | ClassifyForm,
                                                   list[tuple[str, bytes]], list[str]]:
    """(options, images as (name, bytes), problems) from either content type."""
    problems: list[str] = []
    try:
        if request.headers.get("content-type", "").startswith("application/json"):
            body = ClassifyJSON.model_validate_json(await request.body())
            if len(body.images) > settings.max_images:  # before decoding any of them
                count = len(body.images)
                raise _invalid([f"{count} images, the limit is {settings.max_images}"])
            images = []
            for i, text in enumerate(body.images):
                try:
                    images.append((f"images[{i}]", base64.b64decode(text, validate=True)))
                except (binascii.Error, ValueError):
                    problems.append(f"images[{i}]: not valid base64")
            return body, images, problems
        try:
            form = await request.form(max_files=settings.max_images, max_fields=20)
        except Exception as e:  # malformed multipart, too many parts
            if (http_error := http_error_in(e)) is not None:
                raise http_error from e
            raise _invalid([f"body: not a readable multipart form ({type(e).__name__})"]) from e
        fields = {key: form.getlist(key) if key in _FORM_LISTS else form.get(key)
                  for key in ClassifyForm.model_fields}
        fields["images"] = [f for f in fields["images"] if hasattr(f, "read")]
        # an empty form field means "not given", as in an HTML form
        body = ClassifyForm.model_validate({k: v for k, v in fields.items() if v not in ("", None)})
    except ValidationError as e:
        raise _invalid(validation_problems(e)) from e
    images = [(clean_filename(f.filename, f"images[{i}]"), await f.read())
              for i, f in enumerate(body.images)]
    return body, images, problems


class ImageProblems(Exception):
    def __init__(self, problems: list[str]):
        self.problems = problems


def _adapter_and_delta(session, engine, adapter_id: str, tenant_id: str
                       ) -> tuple[AdapterInfo | None, Delta | None]:
    """The tenant's adapter and its delta: recently looked up ones from memory (no database
    round trip per request); when the database is away, a resident one. A reference
    (``name@alias``, ``name@3``) is resolved in the database on every request, so moving an
    alias takes effect at once."""
    try:
        if "@" in adapter_id:
            row = crud.resolve_adapter(session, tenant_id=tenant_id, reference=adapter_id)
            if row is None:
                return None, None
            adapter_id = row.id
        adapter = engine.recent_adapter(adapter_id, tenant_id)
        if adapter is None:
            row = crud.get_adapter(session, adapter_id=adapter_id, tenant_id=tenant_id)
            if row is None:
                return None, None
            adapter = engine.remember_adapter(AdapterInfo.of(row))
        return adapter, engine.delta(session, adapter)
    except (OperationalError, InterfaceError):
        adapter = engine.cached_adapter(adapter_id, tenant_id)
        if adapter is None:
            raise
        return adapter, engine.delta(session, adapter)
    finally:
        session.close()


@router.post("/classify", response_model=ClassifyPublic, openapi_extra={"requestBody": {
    "required": True, "content": {
        "application/json": {"schema": ClassifyJSON.model_json_schema()},
        "multipart/form-data": {"schema": ClassifyForm.model_json_schema()}}}})
async def classify(request: Request, session: SessionDep, settings: SettingsDep,
                   engine: InferenceDep, principal: Classifier):
    """Images as multipart files or JSON base64; ``adapter_id``, or ``base_model`` plus
    ``classes`` for zero-shot; answers the top-k labels with probabilities per image."""
    body, images, problems = await _read_request(request, settings)
    requested = body.classes if isinstance(body, ClassifyJSON) else body.class_list()
    if requested is not None:
        problems += classname_problems(requested, max_count=settings.max_classes)
    if not images:
        problems.append("no images: send 'images' files (multipart) or base64 strings (JSON)")
    if len(images) > settings.max_images:
        problems.append(f"{len(images)} images, the limit is {settings.max_images}")
    delta, adapter = None, None
    reference = body.adapter_id or body.adapter
    if body.adapter_id and body.adapter and body.adapter_id != body.adapter:
        raise _invalid(["give adapter or adapter_id, not two different adapters"])
    if reference:
        # off the event loop (a pool wait must not stall other requests); the session is
        # closed right after, so no connection is held while the request waits for the model
        adapter, delta = await run_in_threadpool(
            _adapter_and_delta, session, engine, reference, principal.tenant_id)
        if adapter is None:
            raise not_found("adapter", reference)
        spec, classnames, templates = adapter.base_model, adapter.classnames, adapter.templates
        if requested:
            classnames = requested  # the paper's new-class use: tuned model, other classes
    else:
        spec, classnames, templates = body.base_model, requested, None
        if not spec or not classnames:
            problems.append("give adapter_id, or base_model and classes for zero-shot")
        elif spec not in settings.allowed_base_models:
            problems.append(f"base_model {shorten(spec)} is not allowed; allowed: "
                            f"{settings.allowed_base_models}")
    if body.template:
        try:
            templates = resolve_templates(body.template)
        except ValueError as e:
            problems.append(str(e))
    temperature, threshold = _calibration(body, adapter, requested, templates, problems)

    def decode_all() -> list[tuple]:
        return [decode_image(data, name, settings) for name, data in images]

    if problems:  # decoding only to name the images' problems too
        decoded = await run_in_threadpool(decode_all)
        raise _invalid(problems + [problem for _, problem in decoded if problem])

    def load_images() -> list:
        """Run by the engine off the event loop, with preprocessing, in one hop."""
        decoded = decode_all()
        if bad := [problem for _, problem in decoded if problem]:
            raise ImageProblems(bad)
        return [image for image, _ in decoded]

    templates = resolve_templates(templates)
    try:
        preds = await engine.classify(spec, load_images, list(classnames), templates, delta,
                                      body.top_k, request.is_disconnected,
                                      temperature=temperature, threshold=threshold)
    except ImageProblems as e:
        raise _invalid(e.problems) from e
    except WeightsUnavailableError as e:
        raise HTTPException(503, detail=str(e)) from e
    except Overloaded as e:
        raise HTTPException(503, headers={"Retry-After": str(math.ceil(e.retry_after))},
                            detail=f"the classifier is busy ({e.queued} images waiting); "
                                   "retry shortly") from e
    except ServerClosed as e:  # the process is shutting down
        raise HTTPException(503, headers={"Retry-After": "5"},
                            detail="the classifier is stopping; retry shortly") from e
    except DeltaError as e:
        raise HTTPException(409, detail="this adapter does not fit the base model loaded "
                                        "here (its weights changed since it was trained)") from e
    except ClientGone:
        return Response(status_code=499)  # nginx's "client closed request"; nobody reads it
    return ClassifyPublic(model=spec, adapter_id=adapter.id if adapter else None,
                          predictions=[p.to_dict() for p in preds],
                          calibrated=temperature != 1.0, threshold=threshold)


def _calibration(body, adapter: AdapterInfo | None, requested: list[str] | None,
                 templates, problems: list[str]) -> tuple[float, float | None]:
    """(temperature, threshold) for this request. The adapter's temperature and threshold
    were fitted on its held-out split for its own classes and templates, so they apply to
    those only."""
    fitted = (adapter.config.get("calibration") or {}) if adapter is not None else {}
    own_classes = adapter is not None and (not requested or requested == adapter.classnames) \
        and (not body.template or templates == adapter.templates)
    temperature = 1.0
    if body.calibrated and own_classes and fitted.get("temperature"):
        temperature = float(fitted["temperature"])
    threshold = body.threshold
    if body.reject_unknown and threshold is None:
        if adapter is None:
            problems.append("reject_unknown uses an adapter's threshold; for zero-shot give "
                            "a threshold")
        elif not own_classes:
            problems.append("reject_unknown uses the threshold fitted for the adapter's own "
                            "classes and templates; with others give a threshold")
        elif fitted.get("threshold") is None:
            problems.append("this adapter has no rejection threshold (it kept no held-out "
                            "images, or was trained before thresholds); give a threshold")
        elif not body.calibrated:
            problems.append("the adapter's threshold is on calibrated probabilities: leave "
                            "calibrated on, or give a threshold")
        else:
            threshold = float(fitted["threshold"])
    return temperature, threshold
