"""Stored image sets: their classes and images (each image a blob). A dataset never changes
once stored: more images make a new version (``create_version``) whose images are its
parent's, naming the same blobs, plus the new ones.

Keyword-only arguments; ``None`` when nothing is found; the caller owns the transaction."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import NamedTuple, Protocol

from sqlalchemy import delete, func, insert, literal, select
from sqlalchemy.orm import Session

from .blobs import get_blobs, put_blobs, release_blobs
from .models import (
    FINISHED,
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
    digests = put_blobs(session, data=[image.source for image in images])
    session.add_all(DatasetImage(dataset_id=dataset_id, position=position, label=image.label,
                                 filename=image.name[:512], blob_sha256=digest)
                    for position, (image, digest) in enumerate(zip(images, digests,
                                                                   strict=True), start=start))
    session.flush()


class StoredImage(NamedTuple):
    """An image already stored as a blob (a capture's), by its digest."""

    blob_sha256: str
    label: int
    name: str


def create_version(session: Session, *, parent: Dataset, classnames: Sequence[str],
                   images: Sequence[ImageRecord] = (),
                   stored: Sequence[StoredImage] = ()) -> Dataset:
    """The next version of ``parent``: its images (the same blobs, nothing copied), then
    ``images`` (bytes, stored once) and ``stored`` (blobs already there). Labels index
    ``classnames``: the parent's, then any new ones."""
    if list(classnames[:len(parent.classnames)]) != list(parent.classnames):
        raise ValueError("a version keeps its parent's classes, in order, and adds to them")
    dataset = Dataset(tenant_id=parent.tenant_id, classnames=list(classnames),
                      parent_id=parent.id, version=parent.version + 1)
    session.add(dataset)
    session.flush()
    columns = ("dataset_id", "position", "blob_sha256", "label", "filename")
    session.execute(insert(DatasetImage).from_select(columns, select(
        literal(dataset.id), DatasetImage.position, DatasetImage.blob_sha256,
        DatasetImage.label, DatasetImage.filename).where(DatasetImage.dataset_id == parent.id)))
    start = session.scalar(select(func.coalesce(func.max(DatasetImage.position) + 1, 0))
                           .where(DatasetImage.dataset_id == dataset.id))
    _add_images(session, dataset_id=dataset.id, start=start, images=images)
    for position, image in enumerate(stored, start=start + len(images)):
        session.add(DatasetImage(dataset_id=dataset.id, position=position,
                                 blob_sha256=image.blob_sha256, label=image.label,
                                 filename=image.name[:512]))
    session.flush()
    return dataset


def child_versions(session: Session, *, dataset_id: str) -> list[str]:
    """The ids of the versions made from this dataset, oldest first."""
    return list(session.scalars(select(Dataset.id).where(Dataset.parent_id == dataset_id)
                                .order_by(Dataset.created_at, Dataset.id)))


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


class DatasetImageRecord(NamedTuple):
    source: bytes
    label: int
    name: str


def dataset_images(session: Session, *, dataset_id: str,
                   excluding: Collection[str] = ()) -> list[DatasetImageRecord]:
    """Every image (``source`` bytes, ``label``, ``name``), in stored order, less those
    whose blob is one of ``excluding``."""
    query = (select(DatasetImage.blob_sha256, DatasetImage.label, DatasetImage.filename)
             .where(DatasetImage.dataset_id == dataset_id)
             .order_by(DatasetImage.position))
    if excluding:
        query = query.where(DatasetImage.blob_sha256.not_in(list(excluding)))
    rows = session.execute(query).all()
    sources = get_blobs(session, digests=[digest for digest, _, _ in rows])
    return [DatasetImageRecord(sources[digest], label, name) for digest, label, name in rows]


def dataset_blobs(session: Session, *, dataset_id: str) -> list[StoredImage]:
    """Every image by its blob (no bytes read), in stored order."""
    rows = session.execute(select(DatasetImage.blob_sha256, DatasetImage.label,
                                  DatasetImage.filename)
                           .where(DatasetImage.dataset_id == dataset_id)
                           .order_by(DatasetImage.position))
    return [StoredImage(*row) for row in rows]


def delete_dataset(session: Session, *, dataset: Dataset) -> None:
    """A dataset no job uses and no version continues, with the image blobs nothing else
    names."""
    _drop_dataset(session, dataset_id=dataset.id)


def _drop_dataset(session: Session, *, dataset_id: str) -> None:
    digests = set(session.scalars(select(DatasetImage.blob_sha256)
                                  .where(DatasetImage.dataset_id == dataset_id)))
    session.execute(delete(DatasetImage).where(DatasetImage.dataset_id == dataset_id))
    session.execute(delete(Dataset).where(Dataset.id == dataset_id))
    release_blobs(session, digests=digests)  # a capture may hold the same bytes
