"""Each adapter lineage's benchmark set: images held out for good, which no retrain of the
lineage trains on. Rows are only ever added, at the next positions, so "the first N images"
of a lineage's set never changes meaning.

Keyword-only arguments; the caller owns the transaction."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from .models import BenchmarkImage


class NewBenchmarkImage(NamedTuple):
    blob_sha256: str
    label: str  # the class name
    source: str  # held_out or capture
    capture_id: str | None = None


def benchmark_size(session: Session, *, tenant_id: str, lineage: str) -> int:
    return session.scalar(select(func.count()).select_from(BenchmarkImage).where(
        BenchmarkImage.tenant_id == tenant_id, BenchmarkImage.lineage == lineage)) or 0


def add_benchmark_images(session: Session, *, tenant_id: str, lineage: str,
                         images: Sequence[NewBenchmarkImage]) -> int:
    """Append ``images`` to the lineage's set; its size after. Two transactions appending
    to one lineage at once collide on the positions (an IntegrityError for the later)."""
    start = benchmark_size(session, tenant_id=tenant_id, lineage=lineage)
    for position, image in enumerate(images, start=start):
        session.add(BenchmarkImage(tenant_id=tenant_id, lineage=lineage, position=position,
                                   blob_sha256=image.blob_sha256, label=image.label[:200],
                                   source=image.source, capture_id=image.capture_id))
    session.flush()
    return start + len(images)


def benchmark_images(session: Session, *, tenant_id: str, lineage: str,
                     size: int | None = None) -> list[BenchmarkImage]:
    """The lineage's set in order; with ``size``, its first ``size`` images (the set as it
    was when it had that many)."""
    query = select(BenchmarkImage).where(BenchmarkImage.tenant_id == tenant_id,
                                         BenchmarkImage.lineage == lineage)
    if size is not None:
        query = query.where(BenchmarkImage.position < size)
    return list(session.scalars(query.order_by(BenchmarkImage.position)))


def benchmark_digests(session: Session, *, tenant_id: str, lineage: str,
                      size: int | None = None) -> set[str]:
    """The blobs of the lineage's set (its first ``size`` images, with ``size``)."""
    query = select(BenchmarkImage.blob_sha256).where(BenchmarkImage.tenant_id == tenant_id,
                                                     BenchmarkImage.lineage == lineage)
    if size is not None:
        query = query.where(BenchmarkImage.position < size)
    return set(session.scalars(query))
