"""Datasets you can reuse: upload once, train many jobs on it, add images later. Every
job's upload is a dataset too. A dataset never changes once stored (so every adapter says
exactly which images trained it): adding images makes a new version. A dataset that a job
used, or that a later version continues, cannot be deleted."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from clipfit_core.data import FewShotDataset, Sample
from registry import datasets as dataset_rows
from registry.models import Dataset

from .context import Caller, Context
from .errors import Conflict, Invalid, found
from .uploads import from_files, from_zip

INVALID_DATASET = "invalid dataset"


@dataclass
class Upload:
    """Images sent one by one with a label each, or one zip (as for a job)."""

    archive: bytes | None = None
    files: list[tuple[str | None, bytes]] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    classes: list[str] | None = None

    def size(self) -> int:
        return len(self.archive or b"") + sum(len(data) for _, data in self.files)


@dataclass
class DatasetSummary:
    id: str
    classnames: list[str]
    counts: dict[str, int]
    images: int
    jobs: int
    created_at: datetime
    version: int = 1
    parent_id: str | None = None
    children: list[str] = field(default_factory=list)


def version_limit_problems(settings, *, images: int, classes: int) -> list[str]:
    """What a new dataset version of ``images`` images over ``classes`` classes breaks of
    CLIPFIT_MAX_IMAGES and CLIPFIT_MAX_CLASSES (added images, or a retrain's captures)."""
    problems = []
    if images > settings.max_images:
        problems.append(f"the dataset would hold {images} images, the limit is "
                        f"{settings.max_images}")
    if classes > settings.max_classes:
        problems.append(f"the dataset would have {classes} classes, the limit is "
                        f"{settings.max_classes}")
    return problems


def _read(ctx: Context, caller: Caller, upload: Upload, *, min_classes: int) -> FewShotDataset:
    """The upload by the job rules (the key's upload quota counted first)."""
    if upload.archive is not None and upload.files:
        raise Invalid(["send either 'images' + 'labels' or one 'dataset' zip, not both"],
                      INVALID_DATASET)
    ctx.quotas.hit_upload(caller.key_id, upload.size())
    try:
        if upload.archive is not None:
            return from_zip(upload.archive, upload.classes, ctx.settings,
                            min_classes=min_classes)
        return from_files(upload.files, upload.labels, upload.classes, ctx.settings,
                          min_classes=min_classes)
    except Invalid as e:
        raise Invalid(e.problems, INVALID_DATASET) from e


def _summary(s, dataset: Dataset) -> DatasetSummary:
    counts = dataset_rows.dataset_counts(s, dataset_id=dataset.id)
    return DatasetSummary(
        id=dataset.id, classnames=list(dataset.classnames),
        counts={name: counts.get(i, 0) for i, name in enumerate(dataset.classnames)},
        images=sum(counts.values()),
        jobs=dataset_rows.count_dataset_jobs(s, dataset_id=dataset.id),
        created_at=dataset.created_at, version=dataset.version, parent_id=dataset.parent_id,
        children=dataset_rows.child_versions(s, dataset_id=dataset.id))


def _owned(s, caller: Caller, dataset_id: str) -> Dataset:
    return found(dataset_rows.get_dataset(s, dataset_id=dataset_id, tenant_id=caller.tenant_id),
                 "dataset", dataset_id)


def create(ctx: Context, caller: Caller, upload: Upload) -> DatasetSummary:
    dataset = _read(ctx, caller, upload, min_classes=2)
    with ctx.transaction() as s:
        row = dataset_rows.create_dataset(s, tenant_id=caller.tenant_id,
                                          classnames=dataset.classnames, images=dataset.samples)
        return _summary(s, row)


def list_datasets(ctx: Context, caller: Caller, *, limit: int) -> list[DatasetSummary]:
    with ctx.reading() as s:
        return [_summary(s, d) for d in
                dataset_rows.list_datasets(s, tenant_id=caller.tenant_id, limit=limit)]


def get(ctx: Context, caller: Caller, dataset_id: str) -> DatasetSummary:
    with ctx.reading() as s:
        return _summary(s, _owned(s, caller, dataset_id))


def add_images(ctx: Context, caller: Caller, dataset_id: str, upload: Upload
               ) -> DatasetSummary:
    """A new version of the dataset: its images plus these (new classes allowed); the
    dataset itself stays as it is (jobs that trained on it keep saying what they used)."""
    with ctx.reading() as s:
        _owned(s, caller, dataset_id)
    added = _read(ctx, caller, upload, min_classes=1)
    with ctx.transaction() as s:
        dataset = _owned(s, caller, dataset_id)
        total = dataset_rows.dataset_size(s, dataset_id=dataset_id) + len(added)
        merged = list(dataset.classnames) + [c for c in added.classnames
                                             if c not in dataset.classnames]
        problems = version_limit_problems(ctx.settings, images=total, classes=len(merged))
        if problems:
            raise Invalid(problems, INVALID_DATASET)
        version = dataset_rows.create_version(s, parent=dataset, classnames=merged, images=[
            Sample(x.source, merged.index(added.classnames[x.label]), x.name)
            for x in added.samples])
        return _summary(s, version)


def delete(ctx: Context, caller: Caller, dataset_id: str) -> None:
    """Only a dataset no job used (it is kept with them) and no later version continues (a
    version keeps its parent)."""
    with ctx.transaction(conflict="a job or a new version was given this dataset meanwhile; "
                         "it is kept with it") as s:
        dataset = _owned(s, caller, dataset_id)
        used = dataset_rows.count_dataset_jobs(s, dataset_id=dataset_id)
        if used:
            raise Conflict(f"{used} job(s) used this dataset; it is kept with them")
        children = dataset_rows.child_versions(s, dataset_id=dataset_id)
        if children:
            raise Conflict(f"dataset {dataset_id} is the parent of version(s) "
                           f"{', '.join(children[:5])}"
                           + (f" and {len(children) - 5} more" if len(children) > 5 else "")
                           + ": delete those first (a version keeps its parent)")
        dataset_rows.delete_dataset(s, dataset=dataset)
