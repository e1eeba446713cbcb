"""Content-addressed bytes (sha256): images and delta weights, stored once.

Keyword-only arguments; ``None`` when nothing is found; the caller owns the transaction."""

from __future__ import annotations

import hashlib

from sqlalchemy.orm import Session

from .models import (
    Blob,
)


def put_blob(session: Session, *, data: bytes) -> str:
    """Store ``data`` once (by sha256); return its digest."""
    digest = hashlib.sha256(data).hexdigest()
    if session.get(Blob, digest) is None:
        session.add(Blob(sha256=digest, size=len(data), data=data))
        session.flush()
    return digest


def get_blob(session: Session, *, sha256: str) -> bytes | None:
    blob = session.get(Blob, sha256)
    return blob.data if blob is not None else None
