"""Datasets you can reuse: upload once, train many jobs on it (``dataset_id``), add images
later. A dataset never changes once stored: adding images makes a new version (a retrain
does too). One that a job used, or that a later version continues, cannot be deleted."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, UploadFile
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from service import datasets
from service.datasets import INVALID_DATASET, Upload
from service.errors import Invalid

from ..auth import Reader, Trainer
from ..deps import ContextDep
from ..forms import comma_list, files, read_form, read_image, texts
from ..schemas import Timestamp, multipart_schema

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])


class DatasetPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    classnames: list[str]
    counts: dict[str, int] = Field(description="images per class")
    images: int
    jobs: int = Field(description="jobs that trained (or will train) on it")
    version: int = Field(1, description="1, or its parent's version + 1")
    parent_id: str | None = Field(None, description="the version it was made from (its "
                                  "images, then the added ones)")
    children: list[str] = Field(default_factory=list, description="the versions made from "
                                "this one, oldest first")
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
    "multipart/form-data": {"schema": multipart_schema(DatasetForm)}}}}


async def read_upload(request: Request, settings) -> Upload:
    form = await read_form(request, max_files=settings.max_images + 1,
                           max_fields=settings.max_images + 10, message=INVALID_DATASET)
    zipped = form.get("dataset")
    if zipped is not None and not hasattr(zipped, "read"):
        raise Invalid(["dataset: send the zip as a file"], INVALID_DATASET)
    return Upload(archive=await zipped.read() if zipped is not None else None,
                  files=[(f.filename, await read_image(f, settings))
                         for f in files(form, "images")],
                  labels=texts(form, "labels"), classes=comma_list(form.get("classes")))


@router.post("", status_code=201, response_model=DatasetPublic, openapi_extra=_FORM,
             summary="Upload a labelled image set to train jobs on (dataset_id)")
async def create_dataset(request: Request, ctx: ContextDep, principal: Trainer):
    upload = await read_upload(request, ctx.settings)
    return await run_in_threadpool(datasets.create, ctx, principal, upload)


@router.get("", response_model=DatasetsPublic)
def list_datasets(ctx: ContextDep, principal: Reader,
                  limit: Annotated[int, Query(ge=1, le=200)] = 50):
    return DatasetsPublic(data=datasets.list_datasets(ctx, principal, limit=limit))


@router.get("/{dataset_id}", response_model=DatasetPublic)
def get_dataset(dataset_id: str, ctx: ContextDep, principal: Reader):
    return datasets.get(ctx, principal, dataset_id)


@router.post("/{dataset_id}/images", response_model=DatasetPublic, openapi_extra=_FORM,
             summary="Add images (new classes allowed): answers the new version of the "
             "dataset (its own id; parent_id: this one), which stays as it is")
async def add_images(dataset_id: str, request: Request, ctx: ContextDep, principal: Trainer):
    await run_in_threadpool(datasets.get, ctx, principal, dataset_id)  # 404 before reading
    upload = await read_upload(request, ctx.settings)
    return await run_in_threadpool(datasets.add_images, ctx, principal, dataset_id, upload)


@router.delete("/{dataset_id}", status_code=204,
               responses={409: {"description": "a job used the dataset, or a later version "
                                "continues it"}})
def delete_dataset(dataset_id: str, ctx: ContextDep, principal: Trainer):
    datasets.delete(ctx, principal, dataset_id)
    return Response(status_code=204)
