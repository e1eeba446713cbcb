"""Response models (XPublic / XsPublic) and cursor encoding."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any

from pydantic import BaseModel

from registry.models import Adapter, Job, JobEvent


class JobPublic(BaseModel):
    id: str
    name: str | None
    status: str
    base_model: str
    templates: list[str]
    hyperparameters: dict[str, Any]
    attempts: int
    cancel_requested: bool
    progress: dict[str, Any] | None
    error: str | None
    adapter_id: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    model_config = {"json_schema_extra": {"examples": [{
        "id": "3fc4e2c00c7b42dd9066b0cdadbfc31c", "name": "pets v1", "status": "running",
        "base_model": "ViT-B-16:openai", "templates": ["a photo of a {}, a type of pet."],
        "hyperparameters": {"epochs": 10, "lr": 0.002, "batch_size": 32, "shots": 16,
                            "lambda": 8.0, "seed": 0, "val_fraction": 0.2, "crop_min": 0.08},
        "attempts": 1, "cancel_requested": False,
        "progress": {"epoch": 3, "epochs": 10, "step": 12, "total_steps": 40, "loss": 0.8123,
                     "lr": 0.0018, "images_per_sec": 95.2, "eta_seconds": 9.4},
        "error": None, "adapter_id": None, "created_at": "2026-11-29T06:52:18",
        "started_at": "2026-11-29T06:52:19", "finished_at": None}]}}

    @classmethod
    def of(cls, job: Job) -> JobPublic:
        return cls(id=job.id, name=job.name, status=job.status, base_model=job.base_model,
                   templates=job.templates, hyperparameters=job.hyperparameters,
                   attempts=job.attempts, cancel_requested=job.cancel_requested,
                   progress=job.progress, error=job.error,
                   adapter_id=job.adapter.id if job.adapter else None,
                   created_at=job.created_at, started_at=job.started_at,
                   finished_at=job.finished_at)


class JobsPublic(BaseModel):
    data: list[JobPublic]
    next_cursor: str | None


class EventPublic(BaseModel):
    id: int
    kind: str
    payload: dict[str, Any]
    created_at: datetime

    @classmethod
    def of(cls, e: JobEvent) -> EventPublic:
        return cls(id=e.id, kind=e.kind, payload=e.payload, created_at=e.created_at)


class EventsPublic(BaseModel):
    data: list[EventPublic]
    next_cursor: str | None


class AdapterPublic(BaseModel):
    id: str
    name: str | None
    job_id: str | None
    base_model: str
    base_fingerprint: str
    classnames: list[str]
    templates: list[str]
    hyperparameters: dict[str, Any]
    metrics: dict[str, Any]
    trainable_count: int
    size_bytes: int
    sha256: str
    created_at: datetime

    @classmethod
    def of(cls, a: Adapter) -> AdapterPublic:
        return cls(id=a.id, name=a.name, job_id=a.job_id, base_model=a.base_model,
                   base_fingerprint=a.base_fingerprint, classnames=a.classnames,
                   templates=a.templates, hyperparameters=a.hyperparameters, metrics=a.metrics,
                   trainable_count=a.trainable_count, size_bytes=a.size_bytes,
                   sha256=a.weights_sha256, created_at=a.created_at)


class AdaptersPublic(BaseModel):
    data: list[AdapterPublic]
    next_cursor: str | None


class ClassifyJSON(BaseModel):
    images: list[str]  # base64-encoded image files
    adapter_id: str | None = None
    base_model: str | None = None
    classes: list[str] | None = None
    template: str | None = None
    top_k: int = 5

    model_config = {"json_schema_extra": {"examples": [{
        "images": ["iVBORw0KGgo..."], "base_model": "clipfit-mini",
        "classes": ["sneaker", "sandal", "bag"], "top_k": 2}]}}


class Label(BaseModel):
    label: str
    prob: float


class ImagePrediction(BaseModel):
    label: str
    top_k: list[Label]


class ClassifyPublic(BaseModel):
    model: str
    adapter_id: str | None
    predictions: list[ImagePrediction]

    model_config = {"json_schema_extra": {"examples": [{
        "model": "ViT-B-16:openai", "adapter_id": "0bc3808806804f52b55dcd6310eed587",
        "predictions": [{"label": "sneaker", "top_k": [{"label": "sneaker", "prob": 0.91},
                                                       {"label": "sandal", "prob": 0.06}]}]}]}}


def encode_cursor(created_at: datetime, ident: str) -> str:
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{ident}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    created, ident = base64.urlsafe_b64decode(cursor.encode()).decode().split("|", 1)
    return datetime.fromisoformat(created), ident
