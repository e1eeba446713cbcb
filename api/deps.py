"""Request dependencies: the app's settings, the use cases' context (database, queue,
quotas, inference engine; built once by ``api.app.create_app``), a database session for the
few routes that read directly, and cursor paging."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from clipfit_core.prompts import shorten
from registry.settings import Settings
from service.context import Context
from service.errors import Invalid

from .inference import InferenceEngine
from .schemas import decode_cursor, encode_cursor


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_context(request: Request) -> Context:
    return request.app.state.context


def get_db(request: Request) -> Iterator[Session]:
    with request.app.state.context.sessions() as session:
        yield session


def get_inference(request: Request) -> InferenceEngine:
    return request.app.state.inference


SessionDep = Annotated[Session, Depends(get_db)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
ContextDep = Annotated[Context, Depends(get_context)]
InferenceDep = Annotated[InferenceEngine, Depends(get_inference)]


def page_start(cursor: str | None):
    """The (created_at, id) a cursor points after; ``Invalid`` when it is not one of ours."""
    try:
        return decode_cursor(cursor) if cursor else None
    except ValueError as e:
        raise Invalid([f"invalid cursor {shorten(cursor)}"]) from e


def page_next(rows: list, limit: int) -> str | None:
    """The cursor of the next page, or None on the last one."""
    return encode_cursor(rows[-1].created_at, rows[-1].id) if len(rows) == limit else None
