"""Classification with any adapter, or zero-shot over plain class names."""

from __future__ import annotations

import base64
import binascii

from fastapi import APIRouter, HTTPException, Request
from starlette.concurrency import run_in_threadpool

from clipfit_core.classify import resolve_templates
from clipfit_core.models import WeightsUnavailableError
from registry import crud

from ..deps import SessionDep, SettingsDep
from ..inference import get_engine
from ..schemas import ClassifyJSON, ClassifyPublic
from ..uploads import check_image

router = APIRouter(prefix="/v1", tags=["classify"])


@router.post("/classify", response_model=ClassifyPublic, openapi_extra={"requestBody": {
    "content": {"application/json": {"schema": ClassifyJSON.model_json_schema()},
                "multipart/form-data": {"schema": {"type": "object", "properties": {
                    "images": {"type": "array", "items": {"type": "string", "format": "binary"}},
                    "adapter_id": {"type": "string"}, "base_model": {"type": "string"},
                    "classes": {"type": "string", "description": "comma-separated"},
                    "template": {"type": "string"}, "top_k": {"type": "integer"}}}}}}})
async def classify(request: Request, session: SessionDep, settings: SettingsDep):
    """Images as multipart files or JSON base64; ``adapter_id``, or ``base_model`` plus
    ``classes`` for zero-shot; answers the top-k labels with probabilities per image."""
    if request.headers.get("content-type", "").startswith("application/json"):
        body = ClassifyJSON.model_validate(await request.json())
        problems, images = [], []
        for i, text in enumerate(body.images):
            try:
                images.append((f"images[{i}]", base64.b64decode(text, validate=True)))
            except (binascii.Error, ValueError):
                problems.append(f"images[{i}]: not valid base64")
        classes = body.classes
    else:
        form = await request.form()
        images = [(f.filename or f"images[{i}]", await f.read())
                  for i, f in enumerate(form.getlist("images")) if hasattr(f, "read")]
        raw = form.get("classes")
        classes = [c.strip() for c in raw.split(",") if c.strip()] if raw else None
        body = ClassifyJSON(images=[], adapter_id=form.get("adapter_id"),
                            base_model=form.get("base_model"), template=form.get("template"),
                            top_k=int(form.get("top_k") or 5), classes=classes)
        problems = []
    if not images:
        problems.append("no images")
    if len(images) > settings.max_images:
        problems.append(f"{len(images)} images, the limit is {settings.max_images}")
    problems += [p for name, data in images if (p := check_image(data, name, settings))]
    if not 1 <= body.top_k <= 1000:
        problems.append(f"top_k must be between 1 and 1000, got {body.top_k}")
    delta, adapter = None, None
    engine = get_engine()
    if body.adapter_id:
        adapter = crud.get_adapter(session, adapter_id=body.adapter_id)
        if adapter is None:
            raise HTTPException(404, detail=f"adapter {body.adapter_id!r} not found")
        spec, classnames = adapter.base_model, adapter.classnames
        templates = adapter.templates
        delta = engine.delta(session, adapter)
    else:
        spec, classnames = body.base_model, classes
        if not spec or not classnames:
            problems.append("give adapter_id, or base_model and classes for zero-shot")
        elif spec not in settings.allowed_base_models:
            problems.append(f"base_model {spec!r} is not allowed; allowed: "
                            f"{settings.allowed_base_models}")
        templates = None
    if body.template:
        try:
            templates = resolve_templates(body.template)
        except ValueError as e:
            problems.append(str(e))
    if problems:
        raise HTTPException(422, detail={"message": "invalid classification request",
                                         "problems": problems})
    try:
        classifier = await run_in_threadpool(engine.classifier, spec)
    except WeightsUnavailableError as e:
        raise HTTPException(503, detail=str(e)) from e
    preds = await run_in_threadpool(
        classifier.classify, [data for _, data in images], classnames, templates,
        delta=delta, top_k=body.top_k)
    return ClassifyPublic(model=spec, adapter_id=adapter.id if adapter else None,
                          predictions=[p.to_dict() for p in preds])
