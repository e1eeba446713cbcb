"""Classification with any adapter, or zero-shot over plain class names."""

from __future__ import annotations

import base64
import binascii

from fastapi import APIRouter, Request, Response

from service import classify as use_case
from service.classify import INVALID_CLASSIFY, ClassifyRequest
from service.errors import Invalid
from service.uploads import clean_filename

from ..auth import Classifier
from ..deps import ContextDep
from ..forms import files, read_form, read_image, validated, validated_json
from ..inference import ClientGone
from ..schemas import ClassifyForm, ClassifyJSON, ClassifyPublic, multipart_schema

router = APIRouter(prefix="/v1", tags=["classify"])


async def read_classify_request(request: Request, settings) -> ClassifyRequest:
    """Images as JSON base64 strings or as multipart files, with the options."""
    problems: list[str] = []
    if request.headers.get("content-type", "").startswith("application/json"):
        body = validated_json(ClassifyJSON, await request.body(), INVALID_CLASSIFY)
        if len(body.images) > settings.max_images:  # before decoding any of them
            raise Invalid([f"{len(body.images)} images, the limit is {settings.max_images}"],
                          INVALID_CLASSIFY)
        images = []
        for i, text in enumerate(body.images):
            try:
                images.append((f"images[{i}]", base64.b64decode(text, validate=True)))
            except (binascii.Error, ValueError):
                problems.append(f"images[{i}]: not valid base64")
        classes = body.classes
    else:
        form = await read_form(request, max_files=settings.max_images, max_fields=20,
                               message=INVALID_CLASSIFY)
        fields = {key: form.get(key) for key in ClassifyForm.model_fields} | {
            "images": files(form, "images")}
        # an empty form field means "not given", as in an HTML form
        body = validated(ClassifyForm, {k: v for k, v in fields.items()
                                        if v not in ("", None)}, INVALID_CLASSIFY)
        images = [(clean_filename(f.filename, f"images[{i}]"), await read_image(f, settings))
                  for i, f in enumerate(body.images)]
        classes = body.class_list()
    if body.adapter_id and body.adapter and body.adapter_id != body.adapter:
        raise Invalid(["give adapter or adapter_id, not two different adapters"],
                      INVALID_CLASSIFY)
    return ClassifyRequest(
        images=images, adapter=body.adapter_id or body.adapter, base_model=body.base_model,
        classes=classes, template=body.template, top_k=body.top_k, calibrated=body.calibrated,
        reject_unknown=body.reject_unknown, threshold=body.threshold, problems=problems)


@router.post("/classify", response_model=ClassifyPublic, openapi_extra={"requestBody": {
    "required": True, "content": {
        "application/json": {"schema": ClassifyJSON.model_json_schema()},
        "multipart/form-data": {"schema": multipart_schema(ClassifyForm)}}}})
async def classify(request: Request, ctx: ContextDep, principal: Classifier):
    """Images as multipart files or JSON base64; ``adapter_id``, or ``base_model`` plus
    ``classes`` for zero-shot; answers the top-k labels with probabilities per image."""
    body = await read_classify_request(request, ctx.settings)
    try:
        result = await use_case.classify(ctx, principal, body, request.is_disconnected)
    except ClientGone:
        return Response(status_code=499)  # nginx's "client closed request"; nobody reads it
    return ClassifyPublic(**vars(result))
