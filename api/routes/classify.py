"""Classification with any adapter, or zero-shot over plain class names."""

from __future__ import annotations

import base64
import binascii

from fastapi import APIRouter, HTTPException, Request
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from clipfit_core.classify import resolve_templates
from clipfit_core.models import WeightsUnavailableError
from registry import crud

from ..deps import SessionDep, SettingsDep
from ..inference import get_engine
from ..schemas import ClassifyJSON, ClassifyPublic
from ..uploads import decode_image

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
    problems: list[str] = []
    if request.headers.get("content-type", "").startswith("application/json"):
        try:
            body = ClassifyJSON.model_validate(await request.json())
        except (ValueError, ValidationError) as e:
            raise HTTPException(422, detail={"message": "invalid classification request",
                                             "problems": [str(e)]}) from e
        images = []
        for i, text in enumerate(body.images):
            try:
                images.append((f"images[{i}]", base64.b64decode(text, validate=True)))
            except (binascii.Error, ValueError):
                problems.append(f"images[{i}]: not valid base64")
    else:
        form = await request.form()
        images = [(f.filename or f"images[{i}]", await f.read())
                  for i, f in enumerate(form.getlist("images")) if hasattr(f, "read")]
        raw = form.get("classes")
        top_k = str(form.get("top_k") or "5")
        if not top_k.strip().lstrip("-").isdigit():
            problems.append(f"top_k must be an integer, got {top_k!r}")
        body = ClassifyJSON(
            images=[], adapter_id=form.get("adapter_id") or None,
            base_model=form.get("base_model") or None, template=form.get("template") or None,
            top_k=int(top_k) if not problems else 5,
            classes=[c.strip() for c in raw.split(",") if c.strip()] if raw else None)
    if not images:
        problems.append("no images: send 'images' files (multipart) or base64 strings (JSON)")
    if len(images) > settings.max_images:
        problems.append(f"{len(images)} images, the limit is {settings.max_images}")
    if not 1 <= body.top_k <= 1000:
        problems.append(f"top_k must be between 1 and 1000, got {body.top_k}")
    delta, adapter = None, None
    engine = get_engine()
    if body.adapter_id:
        adapter = crud.get_adapter(session, adapter_id=body.adapter_id)
        if adapter is None:
            raise HTTPException(404, detail=f"adapter {body.adapter_id!r} not found")
        spec, classnames, templates = adapter.base_model, adapter.classnames, adapter.templates
        if body.classes:
            classnames = body.classes  # the paper's new-class use: tuned model, other classes
    else:
        spec, classnames, templates = body.base_model, body.classes, None
        if not spec or not classnames:
            problems.append("give adapter_id, or base_model and classes for zero-shot")
        elif spec not in settings.allowed_base_models:
            problems.append(f"base_model {spec!r} is not allowed; allowed: "
                            f"{settings.allowed_base_models}")
    if body.template:
        try:
            templates = resolve_templates(body.template)
        except ValueError as e:
            problems.append(str(e))
    # decoding is blocking work: once, off the event loop; the classifier takes the images
    decoded = await run_in_threadpool(
        lambda: [decode_image(data, name, settings) for name, data in images])
    problems += [problem for _, problem in decoded if problem]
    if problems:
        raise HTTPException(422, detail={"message": "invalid classification request",
                                         "problems": problems})
    try:
        classifier = await run_in_threadpool(engine.classifier, spec)
        if adapter is not None:
            delta = await run_in_threadpool(engine.delta, session, adapter)
    except WeightsUnavailableError as e:
        raise HTTPException(503, detail=str(e)) from e
    preds = await run_in_threadpool(
        classifier.classify, [image for image, _ in decoded], classnames, templates,
        delta=delta, top_k=body.top_k)
    return ClassifyPublic(model=spec, adapter_id=adapter.id if adapter else None,
                          predictions=[p.to_dict() for p in preds])
