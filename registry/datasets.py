"""Stored image sets: their classes and images (each image a blob).

Keyword-only arguments; ``None`` when nothing is found; the caller owns the transaction."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from .blobs import delete_unreferenced, put_blob
from .models import (
    FINISHED,
    Blob,
    Dataset,
    DatasetImage,
    Job,
)


class ImageRecord(Protocol):
    """One image of a dataset: ``clipfit_core.data.Sample`` fits, so do the rows that
    ``dataset_images`` returns."""

    source: bytes
    label: int
    name: str


def create_dataset(session: Session, *, tenant_id: str, classnames: Sequence[str],
                   images: Sequence[ImageRecord]) -> Dataset:
    """A stored image set (images with ``source`` bytes, ``label``, ``name``), in the caller's
    transaction; equal images share one blob."""
    dataset = Dataset(tenant_id=tenant_id, classnames=list(classnames))
    session.add(dataset)
    session.flush()
    _add_images(session, dataset_id=dataset.id, start=0, images=images)
    return dataset


def _add_images(session: Session, *, dataset_id: str, start: int,
                images: Sequence[ImageRecord]) -> None:
    for position, image in enumerate(images, start=start):
        session.add(DatasetImage(dataset_id=dataset_id, position=position, label=image.label,
                                 filename=image.name[:512],
                                 blob_sha256=put_blob(session, data=image.source)))
    session.flush()


def add_dataset_images(session: Session, *, dataset: Dataset, classnames: Sequence[str],
                       images: Sequence[ImageRecord]) -> None:
    """More images (labels index ``classnames``: the dataset's, then any new ones)."""
    dataset.classnames = list(classnames)
    start = session.scalar(select(func.coalesce(func.max(DatasetImage.position) + 1, 0))
                           .where(DatasetImage.dataset_id == dataset.id))
    _add_images(session, dataset_id=dataset.id, start=start, images=images)


def get_dataset(session: Session, *, dataset_id: str,
                tenant_id: str | None = None) -> Dataset | None:
    dataset = session.get(Dataset, dataset_id)
    return dataset if dataset is not None and tenant_id in (None, dataset.tenant_id) else None


def list_datasets(session: Session, *, tenant_id: str, limit: int = 50) -> list[Dataset]:
    return list(session.scalars(select(Dataset).where(Dataset.tenant_id == tenant_id)
                                .order_by(Dataset.created_at.desc(), Dataset.id.desc())
                                .limit(limit)))


def dataset_counts(session: Session, *, dataset_id: str) -> dict[int, int]:
    """Images per label."""
    return dict(session.execute(select(DatasetImage.label, func.count())
                                .where(DatasetImage.dataset_id == dataset_id)
                                .group_by(DatasetImage.label)).all())


def dataset_size(session: Session, *, dataset_id: str) -> int:
    return session.scalar(select(func.count()).select_from(DatasetImage)
                          .where(DatasetImage.dataset_id == dataset_id))


def count_dataset_jobs(session: Session, *, dataset_id: str, unfinished: bool = False) -> int:
    query = select(func.count()).select_from(Job).where(Job.dataset_id == dataset_id)
    if unfinished:
        query = query.where(Job.status.not_in(FINISHED))
    return session.scalar(query)


def dataset_images(session: Session, *, dataset_id: str) -> list[ImageRecord]:
    """Every image (``source`` bytes, ``label``, ``name``), in stored order."""
    rows = session.execute(
        select(Blob.data.label("source"), DatasetImage.label,
               DatasetImage.filename.label("name"))
        .join(DatasetImage, DatasetImage.blob_sha256 == Blob.sha256)
        .where(DatasetImage.dataset_id == dataset_id)
        .order_by(DatasetImage.position))
    return list(rows)


def delete_dataset(session: Session, *, dataset: Dataset) -> None:
    """A dataset no job uses, with the image blobs no other dataset uses."""
    _drop_dataset(session, dataset_id=dataset.id)


def _drop_dataset(session: Session, *, dataset_id: str) -> None:
    digests = set(session.scalars(select(DatasetImage.blob_sha256)
                                  .where(DatasetImage.dataset_id == dataset_id)))
    session.execute(delete(DatasetImage).where(DatasetImage.dataset_id == dataset_id))
    session.execute(delete(Dataset).where(Dataset.id == dataset_id))
    delete_unreferenced(session, digests=digests)  # a capture may hold the same bytes
