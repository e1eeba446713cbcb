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
