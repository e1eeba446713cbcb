"""Reading request bodies: the one multipart reader (bounded parts, 413 kept, anything
unreadable one clear 422) and pydantic validation turned into a problem list."""

from __future__ import annotations

from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.datastructures import FormData

from service.errors import Invalid

from .limits import http_error_in
from .schemas import validation_problems

M = TypeVar("M", bound=BaseModel)


async def read_form(request: Request, *, max_files: int, max_fields: int,
                    message: str = "invalid request") -> FormData:
    """The multipart form, parsed within these limits."""
    try:
        return await request.form(max_files=max_files, max_fields=max_fields)
    except Exception as e:  # malformed multipart, too many parts: the client's to fix
        if (http_error := http_error_in(e)) is not None:
            raise http_error from e  # the body limit's 413
        raise Invalid([f"body: not a readable multipart form ({type(e).__name__})"],
                      message) from e


def validated(model: type[M], values: Any, message: str = "invalid request",
              problems: list[str] | None = None) -> M:
    """``values`` as ``model``; every problem (with ``problems`` found before) in one
    ``Invalid``."""
    try:
        return model.model_validate(values)
    except ValidationError as e:
        raise Invalid([*(problems or []), *validation_problems(e)], message) from e


def validated_json(model: type[M], raw: bytes, message: str = "invalid request") -> M:
    """A JSON body as ``model``; every problem in one ``Invalid``."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as e:
        raise Invalid(validation_problems(e), message) from e


def files(form: FormData, key: str) -> list:
    """The uploaded files under ``key`` (text values under that key are ignored)."""
    return [f for f in form.getlist(key) if hasattr(f, "read")]


async def read_image(upload, settings) -> bytes:
    """An uploaded image file's bytes, read no further than one byte past
    ``settings.max_image_bytes``: the use case refuses a larger one by name, and the rest of
    it is never held in memory."""
    return await upload.read(settings.max_image_bytes + 1)


def texts(form: FormData, key: str) -> list[str]:
    return [v for v in form.getlist(key) if isinstance(v, str)]


def comma_list(value: Any) -> list[str] | None:
    """A comma-separated list (each item trimmed), or None when not given."""
    return [c.strip() for c in value.split(",")] if isinstance(value, str) and value else None
