"""Datasets you can reuse: upload once, train many jobs on it (``dataset_id``), add images
later. Every job's upload is a dataset too; a dataset that a job uses cannot be deleted, and
one a queued or running job uses cannot change (that job reads it while it trains)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, Response, UploadFile
from pydantic import BaseModel, Field
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

from registry import crud

from ..auth import Reader, Trainer
from ..deps import SessionDep, SettingsDep, not_found
from ..limits import http_error_in
from ..schemas import Timestamp
from ..uploads import UploadError, capped, from_files, from_zip

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])


class DatasetPublic(BaseModel):
    id: str
    classnames: list[str]
    counts: dict[str, int] = Field(description="images per class")
    images: int
    jobs: int = Field(description="jobs that trained (or will train) on it")
    created_at: Timestamp


class DatasetsPublic(BaseModel):
    data: list[DatasetPublic]


class DatasetForm(BaseModel):
    """``multipart/form-data``: images with one label each, or one zip (as for a job)."""

    images: list[UploadFile] | None = Field(None, description="image files")
    labels: list[str] | None = Field(None, description="one class name per image")
    dataset: UploadFile | None = Field(None, description="a zip: a folder per class, or "
                                       "manifest.csv")
    classes: str | None = Field(None, description="comma-separated class order")


_FORM = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": DatasetForm.model_json_schema()}}}}


def _public(session, dataset) -> DatasetPublic:
    counts = crud.dataset_counts(session, dataset_id=dataset.id)
    return DatasetPublic(
        id=dataset.id, classnames=list(dataset.classnames),
        counts={name: counts.get(i, 0) for i, name in enumerate(dataset.classnames)},
        images=sum(counts.values()), jobs=crud.count_dataset_jobs(session, dataset_id=dataset.id),
        created_at=dataset.created_at)


def _refused(problems: list[str]) -> HTTPException:
    return HTTPException(422, detail={"message": "invalid dataset",
                                      "problems": capped(problems)})


async def _read_upload(request: Request, settings, principal, *, min_classes: int = 2
                       ) -> tuple[list, list[str] | None]:
    """The uploaded images as (bytes, label, name) with their classes, by the job rules."""
    try:
        form = await request.form(max_files=settings.max_images + 1,
                                  max_fields=settings.max_images + 10)
    except Exception as e:  # malformed multipart, too many parts
        if (http_error := http_error_in(e)) is not None:
            raise http_error from e
        raise _refused([f"body: not a readable multipart form ({type(e).__name__})"]) from e
    zipped = form.get("dataset")
    files = [f for f in form.getlist("images") if hasattr(f, "read")]
    labels = [v for v in form.getlist("labels") if isinstance(v, str)]
    classes = form.get("classes")
    class_list = [c.strip() for c in classes.split(",")] if isinstance(classes, str) \
        and classes else None
    if zipped is not None and not hasattr(zipped, "read"):
        raise _refused(["dataset: send the zip as a file"])
    if zipped is not None and files:
        raise _refused(["send either 'images' + 'labels' or one 'dataset' zip, not both"])
    data = await zipped.read() if zipped is not None else None
    pairs = [(f.filename, await f.read()) for f in files]
    request.app.state.quotas.hit_upload(principal.key_id or "anonymous",
                                        len(data or b"") + sum(len(d) for _, d in pairs))

    def parse():
        if data is not None:
            return from_zip(data, class_list, settings, min_classes=min_classes)
        return from_files(pairs, labels, class_list, settings, min_classes=min_classes)

    try:
        training = await run_in_threadpool(parse)
    except UploadError as e:
        raise _refused(e.problems) from e
    return training.images, training.classnames


@router.post("", status_code=201, response_model=DatasetPublic, openapi_extra=_FORM,
             summary="Upload a labelled image set to train jobs on (dataset_id)")
async def create_dataset(request: Request, session: SessionDep, settings: SettingsDep,
                         principal: Trainer):
    images, classnames = await _read_upload(request, settings, principal)

    def store():
        dataset = crud.create_dataset(session, tenant_id=principal.tenant_id,
                                      classnames=classnames, images=images)
        session.commit()
        return _public(session, dataset)

    return await run_in_threadpool(store)


@router.get("", response_model=DatasetsPublic)
def list_datasets(session: SessionDep, principal: Reader,
                  limit: Annotated[int, Query(ge=1, le=200)] = 50):
    rows = crud.list_datasets(session, tenant_id=principal.tenant_id, limit=limit)
    return DatasetsPublic(data=[_public(session, d) for d in rows])


@router.get("/{dataset_id}", response_model=DatasetPublic)
def get_dataset(dataset_id: str, session: SessionDep, principal: Reader):
    dataset = crud.get_dataset(session, dataset_id=dataset_id, tenant_id=principal.tenant_id)
    if dataset is None:
        raise not_found("dataset", dataset_id)
    return _public(session, dataset)


@router.post("/{dataset_id}/images", response_model=DatasetPublic, openapi_extra=_FORM,
             responses={409: {"description": "a queued or running job uses the dataset"}},
             summary="Add images (new classes allowed) to a dataset")
async def add_images(dataset_id: str, request: Request, session: SessionDep,
                     settings: SettingsDep, principal: Trainer):
    dataset = await run_in_threadpool(crud.get_dataset, session, dataset_id=dataset_id,
                                      tenant_id=principal.tenant_id)
    if dataset is None:
        raise not_found("dataset", dataset_id)
    images, classnames = await _read_upload(request, settings, principal, min_classes=1)

    def store():
        if crud.count_dataset_jobs(session, dataset_id=dataset_id, unfinished=True):
            raise HTTPException(409, detail="a queued or running job trains on this dataset: "
                                "add images when it has finished")
        total = crud.dataset_size(session, dataset_id=dataset_id) + len(images)
        merged = list(dataset.classnames) + [c for c in classnames
                                             if c not in dataset.classnames]
        problems = []
        if total > settings.max_images:
            problems.append(f"the dataset would hold {total} images, the limit is "
                            f"{settings.max_images}")
        if len(merged) > settings.max_classes:
            problems.append(f"the dataset would have {len(merged)} classes, the limit is "
                            f"{settings.max_classes}")
        if problems:
            raise _refused(problems)
        crud.add_dataset_images(session, dataset=dataset, classnames=merged, images=[
            (data, merged.index(classnames[label]), name) for data, label, name in images])
        session.commit()
        return _public(session, dataset)

    return await run_in_threadpool(store)


@router.delete("/{dataset_id}", status_code=204,
               responses={409: {"description": "a job uses the dataset"}})
def delete_dataset(dataset_id: str, session: SessionDep, principal: Trainer):
    dataset = crud.get_dataset(session, dataset_id=dataset_id, tenant_id=principal.tenant_id)
    if dataset is None:
        raise not_found("dataset", dataset_id)
    used = crud.count_dataset_jobs(session, dataset_id=dataset_id)
    if used:
        raise HTTPException(409, detail=f"{used} job(s) used this dataset; it is kept with "
                            "them")
    try:
        crud.delete_dataset(session, dataset=dataset)
        session.commit()
    except IntegrityError as e:  # a job was given it meanwhile
        session.rollback()
        raise HTTPException(409, detail="a job was given this dataset meanwhile; it is kept "
                            "with it") from e
    return Response(status_code=204)
