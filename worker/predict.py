"""``clipfit.predict_job``: classify a batch prediction's images, a chunk at a time, and
store the answers as files.

The images go through the serving engine's model (``clipfit_core.serving.MixedAdapterModel``:
the delta's slot in its table, ``encode_images``, the cached text features, ``predict``), at
CLIPFIT_PREDICT_BATCH_SIZE (default CLIPFIT_BATCH_MAX_SIZE) images per forward pass, so an
answer is the one /v1/classify gives for the image. While a batch runs, the next one is read
and preprocessed in a thread. Each finished chunk's answers are recorded (fenced by the
attempt) before the next chunk starts: a redelivery after a worker died skips them.
Cancellation is checked between batches."""

from __future__ import annotations

import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from functools import cached_property, lru_cache

from clipfit_core.classify import predict
from clipfit_core.delta import Delta
from clipfit_core.models import create_base_model, resolve_device
from clipfit_core.serving import MixedAdapterModel
from registry import crud
from registry import predictions as prediction_rows
from registry.blobs import get_blob, get_blobs
from registry.blobstore import BlobMissing
from registry.db import session_scope
from registry.models import JobStatus, utcnow
from service.predictions import counts_of, result_files, result_row
from service.uploads import decode_image

from .failures import failure_message
from .tasks import DATABASE_AWAY, STORAGE_AWAY, Heartbeat, ServiceTask, _end, with_retries

log = logging.getLogger(__name__)


class PredictionCancelled(Exception):
    """Cancellation was asked for."""


class Superseded(Exception):
    """This attempt no longer owns the job (a newer one took over, or it ended)."""


class PredictTask(ServiceTask):
    """The task's per-process resources: the database engine and, per base model, a
    serving model of its own (``MixedAdapterModel`` takes its base over: it is never the
    one the training task changes in place)."""

    @cached_property
    def model(self):
        @lru_cache(maxsize=2)
        def load(spec: str) -> MixedAdapterModel:
            return MixedAdapterModel(create_base_model(
                spec, device=resolve_device(self.settings.device),
                cache_dir=self.settings.weights_dir))
        return load


@dataclass
class Plan:
    """What a prediction's attempt runs, read once from its rows."""

    job_id: str
    attempt: int
    tenant_id: str
    spec: str
    templates: list[str]
    classnames: list[str]
    top_k: int
    temperature: float
    threshold: float | None
    adapter_id: str | None
    images: int
    chunk_size: int
    done: set[int]

    @property
    def chunks(self) -> int:
        return math.ceil(self.images / self.chunk_size)

    def chunk_range(self, chunk: int) -> tuple[int, int]:
        start = chunk * self.chunk_size
        return start, min(self.images, start + self.chunk_size)


def predict_job(self: PredictTask, job_id: str) -> str:
    """Idempotent: a finished prediction, or one a live attempt runs (a duplicate delivery),
    does nothing; a redelivered one resumes after its recorded chunks. The claim's attempt
    fences every later write."""
    stale_before = utcnow() - timedelta(seconds=self.settings.stale_after_seconds)
    with session_scope(self.engine) as s:
        job = crud.mark_running(s, job_id=job_id, stale_before=stale_before)
        if job is None:
            return "finished or running elsewhere"
        row = prediction_rows.get_prediction(s, job_id=job_id)
        plan = Plan(job_id=job_id, attempt=job.attempts, tenant_id=job.tenant_id,
                    spec=job.base_model, templates=list(job.templates),
                    classnames=list(row.classnames), top_k=row.top_k,
                    temperature=row.temperature, threshold=row.threshold,
                    adapter_id=row.adapter_id, images=row.images, chunk_size=row.chunk_size,
                    done=prediction_rows.finished_chunks(s, job_id=job_id))
        if plan.done:
            crud.add_event(s, job_id=job_id, kind="resumed", payload={
                "attempt": plan.attempt, "chunks_done": len(plan.done), "chunks": plan.chunks})
    with Heartbeat(self, job_id, plan.attempt) as beat:
        try:
            _classify(self, plan, beat)
        except PredictionCancelled:
            return _end(self, job_id, plan.attempt, JobStatus.cancelled)
        except Superseded:
            return "superseded"
        except STORAGE_AWAY:  # the database or the blob store is away: not the
            raise  # prediction's fault; its heartbeat stops, and the reconciler runs it again
            #        (after its recorded chunks) once they are back
        except Exception as e:  # the prediction failed; the worker lives on
            log.exception("prediction %s failed", job_id)
            return _end(self, job_id, plan.attempt, JobStatus.failed,
                        failure_message(e, base_model=plan.spec))
    return with_retries(lambda: _store(self, plan), f"storing the results of {job_id}")


def _image_bytes(session, digests: list[str]) -> list[bytes | None]:
    """Each image's bytes, None for one whose bytes are missing from the store (an error
    row for that image, not a failed prediction)."""
    try:
        stored = get_blobs(session, digests=digests)
    except BlobMissing:  # one or more are gone: which, one by one
        stored = {}
        for digest in set(digests):
            try:
                stored[digest] = get_blob(session, sha256=digest)
            except BlobMissing:
                log.error("blob %s is missing from the blob store ('clipfit blobs verify')",
                          digest)
    return [stored.get(digest) for digest in digests]


def _delta(task: PredictTask, plan: Plan) -> Delta | None:
    if plan.adapter_id is None:
        return None
    with session_scope(task.engine) as s:
        adapter = crud.get_adapter(s, adapter_id=plan.adapter_id, tenant_id=plan.tenant_id)
        weights = crud.get_blob(s, sha256=adapter.weights_sha256) if adapter else None
        if weights is None:
            raise ValueError(f"the adapter {plan.adapter_id} was deleted before the "
                             "prediction ran")
        return Delta.from_bytes(weights, adapter.config)


def _classify(task: PredictTask, plan: Plan, beat: Heartbeat) -> None:
    """Every chunk not recorded yet, batch by batch, each chunk recorded when done."""
    settings = task.settings
    batch = settings.predict_batch_size or settings.batch_max_size
    work = [(chunk, lo, min(lo + batch, stop)) for chunk in range(plan.chunks)
            if chunk not in plan.done
            for start, stop in [plan.chunk_range(chunk)] for lo in range(start, stop, batch)]
    if not work:  # every chunk recorded (an attempt died storing the files): no model needed
        return
    model = task.model(plan.spec)
    delta = _delta(task, plan)
    if delta is not None:
        model.check(delta)  # the same weights and tensors, else a DeltaError
    text = model.text_features(plan.classnames, plan.templates, delta)
    done_images = sum(b - a for a, b in map(plan.chunk_range, plan.done))
    state = {"checked": time.monotonic(), "cancel": False}

    def should_stop() -> bool:
        """Asked at most once a second (a cancel reaches the loop within a batch or so)."""
        now = time.monotonic()
        if not state["cancel"] and now - state["checked"] >= 1.0:
            state["checked"] = now
            try:
                with session_scope(task.engine) as s:
                    job = crud.get_job(s, job_id=plan.job_id)
                    if not crud.holds(job, plan.attempt):
                        raise Superseded()
                    state["cancel"] = job.cancel_requested
            except DATABASE_AWAY:
                pass  # unknown for now: asked again in a second
        if beat.lost:
            raise Superseded()
        return state["cancel"]

    def load(lo: int, hi: int):
        """(images, pixels of the readable ones, the problem of each unreadable one)."""
        with session_scope(task.engine) as s:
            images = prediction_rows.prediction_images(s, job_id=plan.job_id, start=lo, stop=hi)
            data = _image_bytes(s, [image.blob_sha256 for image in images])
        decoded = [decode_image(d, image.name, settings) if d is not None
                   else (None, f"{image.name}: the image is no longer stored")
                   for image, d in zip(images, data, strict=True)]
        readable = [image for image, _ in decoded if image is not None]
        pixels = model.base.preprocess(readable) if readable else None
        return images, pixels, [problem for _, problem in decoded]

    rows: list[dict] = []
    started, classified = time.monotonic(), 0
    slot = model.table.slot_for(delta)
    with ThreadPoolExecutor(1, thread_name_prefix=f"predict-{plan.job_id[:8]}") as pool:
        pending = pool.submit(load, *work[0][1:])
        for i, (chunk, lo, hi) in enumerate(work):
            images, pixels, problems = pending.result()
            if i + 1 < len(work):
                pending = pool.submit(load, *work[i + 1][1:])
            if should_stop():
                raise PredictionCancelled()
            answers = iter([])
            if pixels is not None:
                feats = model.encode_images(pixels, [slot] * pixels.shape[0])
                answers = iter(p.to_dict() for p in predict(
                    model.logits(feats, text), plan.classnames, temperature=plan.temperature,
                    threshold=plan.threshold, top_k=plan.top_k))
            rows += [result_row(image.name, image.blob_sha256,
                                next(answers) if problem is None else None, problem)
                     for image, problem in zip(images, problems, strict=True)]
            classified += hi - lo
            if hi == plan.chunk_range(chunk)[1]:  # the chunk's last batch
                done_images += len(rows)
                _record(task, plan, chunk, rows, done_images, classified,
                        time.monotonic() - started)
                rows = []


def _record(task: PredictTask, plan: Plan, chunk: int, rows: list[dict], done_images: int,
            classified: int, seconds: float) -> None:
    rate = classified / max(seconds, 1e-6)
    progress = {"chunk": chunk, "chunks": plan.chunks, "attempt": plan.attempt,
                "images_done": done_images, "images": plan.images,
                "images_per_sec": round(rate, 2),
                "eta_seconds": round((plan.images - done_images) / rate, 1) if rate else None}

    def record():
        with session_scope(task.engine) as s:
            return prediction_rows.record_chunk(s, job_id=plan.job_id, attempt=plan.attempt,
                                                chunk=chunk, rows=rows, progress=progress)

    cancel = with_retries(record, f"recording chunk {chunk} of {plan.job_id}")
    if cancel is None:
        raise Superseded()
    if cancel:
        raise PredictionCancelled()


def _store(task: PredictTask, plan: Plan) -> str:
    """The result files from the recorded chunks, and the end of the job, in one commit."""
    with session_scope(task.engine) as s:
        job = crud.get_job(s, job_id=plan.job_id)
        if not crud.holds(job, plan.attempt):
            return "superseded"
        rows = prediction_rows.chunk_rows(s, job_id=plan.job_id)
        if len(rows) != plan.images:  # never expected: every chunk is recorded before this
            raise RuntimeError(f"prediction {plan.job_id}: {len(rows)} answers recorded for "
                               f"{plan.images} images")
        jsonl, csv = result_files(rows, plan.top_k)
        prediction_rows.store_results(s, prediction=prediction_rows.get_prediction(
            s, job_id=plan.job_id), jsonl=jsonl, csv=csv, counts=counts_of(rows))
        crud.finish_job(s, job=job, status=JobStatus.succeeded)
    return "succeeded"
