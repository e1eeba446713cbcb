"""Request dependencies: the app's settings, a database session per request, the job
queue and the inference engine (all built once by ``api.app.create_app``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from sqlalchemy.orm import Session

from clipfit_core.prompts import shorten
from registry.settings import Settings

from .inference import InferenceEngine
from .queue import JobQueue
from .schemas import decode_cursor, encode_cursor


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_db(request: Request) -> Iterator[Session]:
    with request.app.state.sessions() as session:
        yield session


def get_queue(request: Request) -> JobQueue:
    return request.app.state.queue


def get_inference(request: Request) -> InferenceEngine:
    return request.app.state.inference


SessionDep = Annotated[Session, Depends(get_db)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
QueueDep = Annotated[JobQueue, Depends(get_queue)]
InferenceDep = Annotated[InferenceEngine, Depends(get_inference)]


def not_found(what: str, ident: str) -> HTTPException:
    return HTTPException(404, detail=f"{what} {shorten(ident)} not found")


def page_start(cursor: str | None):
    """The (created_at, id) a cursor points after; 422 when it is not one of ours."""
    try:
        return decode_cursor(cursor) if cursor else None
    except ValueError as e:
        raise HTTPException(422, detail=f"invalid cursor {shorten(cursor)}") from e


def page_next(rows: list, limit: int) -> str | None:
    """The cursor of the next page, or None on the last one."""
    return encode_cursor(rows[-1].created_at, rows[-1].id) if len(rows) == limit else None
