"""Batch predictions: a ``predictions`` row beside its job (kind "predict", the same id: the
status, attempts, heartbeat, cancellation and events are the job's, ``registry.jobs``), the
images it classifies, the answers of its finished chunks, and its result files.

Keyword-only arguments; ``None`` when nothing is found; the caller owns the transaction."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import func, insert, literal, select, union
from sqlalchemy.orm import Session, contains_eager

from .blobs import put_blob, put_blobs
from .db import owned as _owned
from .jobs import add_event, holds, page_of_jobs
from .models import (
    BenchmarkImage,
    Capture,
    Dataset,
    DatasetImage,
    Job,
    JobStatus,
    Prediction,
    PredictionChunk,
    PredictionImage,
    utcnow,
)


class NamedImage(NamedTuple):
    """An image to classify: its name in the results and its blob."""

    name: str
    blob_sha256: str


def create_prediction(
    session: Session, *, tenant_id: str, base_model: str, templates: Sequence[str],
    classnames: Sequence[str], top_k: int, temperature: float, threshold: float | None,
    adapter_id: str | None, adapter_ref: str | None, source: str, chunk_size: int,
    uploads: Sequence[tuple[str, bytes]] = (), stored: Sequence[NamedImage] = (),
    dataset_id: str | None = None,
) -> Job:
    """A queued prediction job and its row, of ``tenant_id``, classifying (in this order)
    the images of the stored dataset ``dataset_id`` (its blobs named, nothing copied), the
    ``uploads`` ((name, bytes), stored as blobs) and the ``stored`` images."""
    job = Job(tenant_id=tenant_id, kind="predict", base_model=base_model,
              templates=list(templates), hyperparameters={}, status=JobStatus.queued.value,
              enqueued_at=utcnow())
    session.add(job)
    session.flush()
    session.add(Prediction(job_id=job.id, adapter_id=adapter_id, adapter_ref=adapter_ref,
                           classnames=list(classnames), top_k=top_k, temperature=temperature,
                           threshold=threshold, source=source, dataset_id=dataset_id,
                           images=0, chunk_size=chunk_size))
    session.flush()
    count = 0
    if dataset_id is not None:  # positions 0, 1, ... in the dataset's order
        columns = ("job_id", "position", "blob_sha256", "filename")
        session.execute(insert(PredictionImage).from_select(columns, select(
            literal(job.id), func.row_number().over(order_by=DatasetImage.position) - 1,
            DatasetImage.blob_sha256, DatasetImage.filename)
            .where(DatasetImage.dataset_id == dataset_id)))
        count = session.scalar(select(func.count()).select_from(PredictionImage)
                               .where(PredictionImage.job_id == job.id)) or 0
    digests = put_blobs(session, data=[data for _, data in uploads])
    named = [NamedImage(name, digest) for (name, _), digest in zip(uploads, digests,
                                                                  strict=True)]
    rows = [{"job_id": job.id, "position": position, "blob_sha256": image.blob_sha256,
             "filename": image.name[:512]}
            for position, image in enumerate([*named, *stored], start=count)]
    if rows:
        session.execute(insert(PredictionImage), rows)  # one statement, executemany
    count += len(named) + len(stored)
    session.flush()
    session.get(Prediction, job.id).images = count
    add_event(session, job_id=job.id, kind="queued", payload={"images": count})
    return job


def tenant_images(session: Session, *, tenant_id: str,
                  digests: Iterable[str]) -> set[str]:
    """Those of ``digests`` that name an image of the tenant: in one of its datasets, its
    captures or its benchmark sets (another tenant's images are not among them)."""
    wanted = sorted(set(digests))
    found: set[str] = set()
    for start in range(0, len(wanted), 500):
        chunk = wanted[start:start + 500]
        query = union(
            select(DatasetImage.blob_sha256).join(Dataset).where(
                Dataset.tenant_id == tenant_id, DatasetImage.blob_sha256.in_(chunk)),
            select(Capture.blob_sha256).where(Capture.tenant_id == tenant_id,
                                              Capture.blob_sha256.in_(chunk)),
            select(BenchmarkImage.blob_sha256).where(BenchmarkImage.tenant_id == tenant_id,
                                                     BenchmarkImage.blob_sha256.in_(chunk)))
        found |= set(session.scalars(query))
    return found


def get_prediction(session: Session, *, job_id: str,
                   tenant_id: str | None = None) -> Prediction | None:
    """The prediction, if it exists and (with ``tenant_id``) belongs to that tenant."""
    prediction = session.get(Prediction, job_id)
    if prediction is None or tenant_id not in (None, prediction.job.tenant_id):
        return None
    return prediction


def list_predictions(session: Session, *, tenant_id: str | None, status: str | None = None,
                     limit: int = 50, before: tuple[datetime, str] | None = None
                     ) -> list[Prediction]:
    """Newest first; ``before`` = (created_at, id) of the last one of the previous page."""
    query = select(Prediction).join(Job).options(contains_eager(Prediction.job))  # 1 query
    return list(session.scalars(page_of_jobs(
        _owned(query, Job, tenant_id), status=status, limit=limit, before=before)))


def prediction_images(session: Session, *, job_id: str, start: int = 0,
                      stop: int | None = None) -> list[NamedImage]:
    """The images at positions ``start`` to ``stop`` (excluded), in order."""
    query = select(PredictionImage.filename, PredictionImage.blob_sha256).where(
        PredictionImage.job_id == job_id, PredictionImage.position >= start)
    if stop is not None:
        query = query.where(PredictionImage.position < stop)
    return [NamedImage(name, sha) for name, sha in
            session.execute(query.order_by(PredictionImage.position))]


def finished_chunks(session: Session, *, job_id: str) -> set[int]:
    return set(session.scalars(select(PredictionChunk.chunk)
                               .where(PredictionChunk.job_id == job_id)))


def record_chunk(session: Session, *, job_id: str, attempt: int, chunk: int,
                 rows: list[dict[str, Any]], progress: dict[str, Any]) -> bool | None:
    """Keep a finished chunk's answers, with progress and a heartbeat, when ``attempt``
    still owns the job (else None: the caller stops). Returns whether cancellation was
    asked for. A chunk recorded before (by an attempt that lost the job meanwhile) is kept
    as it was."""
    job = session.get(Job, job_id, with_for_update=True)
    if not holds(job, attempt):
        return None
    if session.get(PredictionChunk, (job_id, chunk)) is None:
        session.add(PredictionChunk(job_id=job_id, chunk=chunk, attempt=attempt, rows=rows))
    job.progress = progress
    job.heartbeat_at = utcnow()
    add_event(session, job_id=job_id, kind="progress", payload=progress)
    return job.cancel_requested


def chunk_rows(session: Session, *, job_id: str) -> list[dict[str, Any]]:
    """Every recorded answer, in image order."""
    rows: list[dict[str, Any]] = []
    for chunk in session.scalars(select(PredictionChunk).where(PredictionChunk.job_id == job_id)
                                 .order_by(PredictionChunk.chunk)):
        rows += chunk.rows
    return rows


def store_results(session: Session, *, prediction: Prediction, jsonl: bytes, csv: bytes,
                  counts: dict[str, int]) -> None:
    """The result files (blobs) and the counts (``finish_job`` then removes the images and
    the chunks' answers: the files hold them)."""
    prediction.results_jsonl_sha256 = put_blob(session, data=jsonl)
    prediction.results_csv_sha256 = put_blob(session, data=csv)
    prediction.results_bytes = len(jsonl)
    prediction.classified = counts["classified"]
    prediction.unknown = counts["unknown"]
    prediction.unreadable = counts["unreadable"]
