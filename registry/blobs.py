"""Content-addressed bytes (sha256): images and delta weights, stored once.

Keyword-only arguments; ``None`` when nothing is found; the caller owns the transaction."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from .models import (
    Adapter,
    BenchmarkImage,
    Blob,
    Capture,
    DatasetImage,
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


def delete_unreferenced(session: Session, *, digests: Iterable[str]) -> int:
    """Delete those of ``digests`` that no dataset image, adapter, capture or benchmark image
    names (equal bytes are one blob, whoever stored them); how many went."""
    digests = set(digests)
    if not digests:
        return 0
    used = set()
    for column in (DatasetImage.blob_sha256, Adapter.weights_sha256, Capture.blob_sha256,
                   BenchmarkImage.blob_sha256):
        used |= set(session.scalars(select(column).where(column.in_(digests)).distinct()))
    unused = digests - used
    if unused:
        session.execute(delete(Blob).where(Blob.sha256.in_(unused)))
    return len(unused)
