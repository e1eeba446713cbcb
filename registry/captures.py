"""Captured classify images kept for review, and the capture settings of each adapter lineage
(an adapter's name, or the id of an unnamed one).

Keyword-only arguments; ``None`` when nothing is found; the caller owns the transaction."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, func, not_, or_, select
from sqlalchemy.orm import Session

from .blobs import get_blob, put_blob, release_blobs
from .models import Capture, CaptureSetting, utcnow


def get_capture_settings(session: Session, *, tenant_id: str, lineage: str,
                         lock: bool = False) -> CaptureSetting | None:
    """The lineage's settings; with ``lock``, the row is locked until the transaction ends
    (writes of one lineage then take turns, so its caps hold across API processes)."""
    query = select(CaptureSetting).where(CaptureSetting.tenant_id == tenant_id,
                                         CaptureSetting.lineage == lineage)
    return session.scalar(query.with_for_update() if lock else query)


def put_capture_settings(session: Session, *, tenant_id: str, lineage: str,
                         values: dict[str, Any]) -> CaptureSetting:
    """Create or replace the lineage's settings with ``values`` (the columns' names)."""
    row = get_capture_settings(session, tenant_id=tenant_id, lineage=lineage, lock=True)
    if row is None:
        row = CaptureSetting(tenant_id=tenant_id, lineage=lineage)
        session.add(row)
    for key, value in values.items():
        setattr(row, key, value)
    row.updated_at = utcnow()
    session.flush()
    return row


def delete_capture_settings(session: Session, *, tenant_id: str, lineage: str) -> bool:
    deleted = session.execute(delete(CaptureSetting).where(
        CaptureSetting.tenant_id == tenant_id, CaptureSetting.lineage == lineage))
    return bool(deleted.rowcount)


def count_captures_since(session: Session, *, tenant_id: str, lineage: str,
                         since: datetime) -> int:
    return session.scalar(select(func.count()).select_from(Capture).where(
        Capture.tenant_id == tenant_id, Capture.lineage == lineage,
        Capture.created_at >= since)) or 0


def capture_bytes(session: Session, *, tenant_id: str) -> int:
    """Bytes of the images the tenant's captures keep (an image captured twice counts once)."""
    images = select(Capture.blob_sha256, Capture.size_bytes).where(
        Capture.tenant_id == tenant_id).distinct().subquery()
    return session.scalar(select(func.coalesce(func.sum(images.c.size_bytes), 0))) or 0


def holds_capture_image(session: Session, *, tenant_id: str, sha256: str) -> bool:
    return session.scalar(select(Capture.id).where(
        Capture.tenant_id == tenant_id, Capture.blob_sha256 == sha256).limit(1)) is not None


def add_capture(session: Session, *, data: bytes, **values: Any) -> Capture:
    """A capture of ``data`` (stored once by sha256) with the columns in ``values``."""
    capture = Capture(blob_sha256=put_blob(session, data=data), size_bytes=len(data), **values)
    session.add(capture)
    session.flush()
    return capture


def waiting():
    """A labelled capture no retrain has taken yet (into a dataset version or the benchmark
    set): it waits for the next retrain, and does not expire meanwhile."""
    return and_(Capture.state == "labelled", Capture.dataset_id.is_(None),
                Capture.benchmark.is_(False))


def _kept(now: datetime):
    """Not expired, or waiting for a retrain."""
    return or_(Capture.expires_at > now, waiting())


def waiting_captures(session: Session, *, tenant_id: str, lineage: str,
                     lock: bool = False) -> list[Capture]:
    """The lineage's labelled captures that wait for a retrain, in the order they were
    labelled (then taken, then by id: deterministic)."""
    query = (select(Capture).where(Capture.tenant_id == tenant_id, Capture.lineage == lineage,
                                   waiting())
             .order_by(Capture.labelled_at, Capture.created_at, Capture.id))
    return list(session.scalars(query.with_for_update() if lock else query))


def count_waiting(session: Session, *, tenant_id: str, lineage: str) -> int:
    return session.scalar(select(func.count()).select_from(Capture).where(
        Capture.tenant_id == tenant_id, Capture.lineage == lineage, waiting())) or 0


@dataclass(frozen=True)
class CaptureFilter:
    rule: str | None = None
    predicted: str | None = None
    min_confidence: float | None = None
    max_confidence: float | None = None
    state: str | None = None


def list_captures(session: Session, *, tenant_id: str, lineage: str, now: datetime,
                  where: CaptureFilter = CaptureFilter(), limit: int = 50,
                  before: tuple[datetime, str] | None = None) -> list[Capture]:
    """The lineage's unexpired (or waiting) captures that match ``where``, newest first,
    after the (created_at, id) ``before``."""
    query = select(Capture).where(Capture.tenant_id == tenant_id, Capture.lineage == lineage,
                                  _kept(now))
    for column, value in ((Capture.rule, where.rule), (Capture.predicted, where.predicted),
                          (Capture.state, where.state)):
        if value is not None:
            query = query.where(column == value)
    if where.min_confidence is not None:
        query = query.where(Capture.confidence >= where.min_confidence)
    if where.max_confidence is not None:
        query = query.where(Capture.confidence <= where.max_confidence)
    if before is not None:
        created, ident = before
        query = query.where((Capture.created_at < created)
                            | ((Capture.created_at == created) & (Capture.id < ident)))
    return list(session.scalars(query.order_by(Capture.created_at.desc(), Capture.id.desc())
                                .limit(limit)))


def get_captures(session: Session, *, tenant_id: str, lineage: str, ids: list[str],
                 now: datetime, lock: bool = False) -> dict[str, Capture]:
    """The lineage's unexpired (or waiting) captures among ``ids``, by id (another tenant's
    or lineage's are left out)."""
    query = select(Capture).where(Capture.tenant_id == tenant_id, Capture.lineage == lineage,
                                  Capture.id.in_(set(ids)), _kept(now))
    return {c.id: c for c in session.scalars(query.with_for_update() if lock else query)}


def capture_image(session: Session, *, capture: Capture) -> bytes | None:
    return get_blob(session, sha256=capture.blob_sha256)


def delete_expired_captures(session: Session, *, now: datetime, limit: int = 1000) -> int:
    """Up to ``limit`` captures whose retention ended, with the images nothing else holds;
    how many went. A labelled capture waiting for a retrain is kept (one a retrain took may
    go: its dataset version or the benchmark set keeps the image)."""
    rows = session.execute(select(Capture.id, Capture.blob_sha256)
                           .where(Capture.expires_at <= now, not_(waiting()))
                           .limit(limit)).all()
    if not rows:
        return 0
    session.execute(delete(Capture).where(Capture.id.in_([ident for ident, _ in rows])))
    release_blobs(session, digests={digest for _, digest in rows})
    return len(rows)


def delete_lineage_captures(session: Session, *, tenant_id: str, lineage: str) -> None:
    """A lineage's settings and captures (an unnamed adapter deleted: nothing continues it)."""
    digests = set(session.scalars(select(Capture.blob_sha256).where(
        Capture.tenant_id == tenant_id, Capture.lineage == lineage)))
    session.execute(delete(Capture).where(Capture.tenant_id == tenant_id,
                                          Capture.lineage == lineage))
    delete_capture_settings(session, tenant_id=tenant_id, lineage=lineage)
    release_blobs(session, digests=digests)
