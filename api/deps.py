"""Request dependencies: a database session per request, the settings."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException
from sqlalchemy.orm import Session

from registry.db import session_factory
from registry.settings import Settings, get_settings


def get_db() -> Iterator[Session]:
    with session_factory()() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_db)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


def not_found(what: str, ident: str) -> HTTPException:
    return HTTPException(404, detail=f"{what} {ident!r} not found")


def page_start(cursor: str | None):
    """The (created_at, id) a cursor points after; 422 when it is not one of ours."""
    from .schemas import decode_cursor

    try:
        return decode_cursor(cursor) if cursor else None
    except ValueError as e:
        raise HTTPException(422, detail=f"invalid cursor {cursor!r}") from e


def page_next(rows: list, limit: int) -> str | None:
    """The cursor of the next page, or None on the last one."""
    from .schemas import encode_cursor

    return encode_cursor(rows[-1].created_at, rows[-1].id) if len(rows) == limit else None
