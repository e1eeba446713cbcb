"""``clipfit.train_job``: train one job's ClipFit delta and store it with its metrics."""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta
from functools import cached_property, lru_cache
from typing import Self

from celery import Task
from sqlalchemy import Engine
from sqlalchemy.exc import InterfaceError, OperationalError

from clipfit_core.config import TrainConfig, prepare_training_set
from clipfit_core.data import FewShotDataset
from clipfit_core.delta import Delta, check_compatible
from clipfit_core.models import BaseModel, create_base_model, resolve_device
from clipfit_core.train import Checkpoint, TrainingCancelled, train_clipfit
from registry import crud
from registry.blobs import use_blob_store
from registry.blobstore import BlobStoreUnavailable
from registry.db import get_engine, session_scope
from registry.models import JobStatus, utcnow
from registry.settings import Settings
from service.jobs import job_dataset

from . import promotion
from .failures import check_finite, failure_message

log = logging.getLogger(__name__)
DATABASE_AWAY = (OperationalError, InterfaceError)
STORAGE_AWAY = (*DATABASE_AWAY, BlobStoreUnavailable)  # the database or the blob store


class ServiceTask(Task):
    """A task with the service's settings and, per process, its database engine (with the
    database's blob store)."""

    settings: Settings  # set by worker.celery_app.create_worker_app

    @cached_property
    def engine(self) -> Engine:
        use_blob_store(self.settings)  # where this database's image and delta bytes live
        return get_engine(self.settings.sqlalchemy_url)


class TrainTask(ServiceTask):
    """The task's per-process resources: the database engine and the base models (each
    loaded once; training changes a model in place and restores it, so a worker's copy is
    never shared with an API's inference engine, even in the embedded service)."""

    @cached_property
    def base_model(self):
        @lru_cache(maxsize=4)
        def load(spec: str) -> BaseModel:
            return create_base_model(spec, device=resolve_device(self.settings.device),
                                     cache_dir=self.settings.weights_dir)
        return load


def train_job(self: TrainTask, job_id: str) -> str:
    """Idempotent: a finished job, one with its adapter, or one a live attempt is running
    (a duplicate delivery) does nothing. The claim's attempt number fences every later
    write, so a worker that lost the job (stalled past the stale threshold, then woke up)
    cannot overwrite the attempt that replaced it."""
    stale_before = utcnow() - timedelta(seconds=self.settings.stale_after_seconds)
    with session_scope(self.engine) as s:
        if crud.get_adapter_for_job(s, job_id=job_id) is not None:
            return "exists"
        job = crud.mark_running(s, job_id=job_id, stale_before=stale_before)
        if job is None:
            return "finished or running elsewhere"
        attempt = job.attempts
        saved = crud.get_checkpoint(s, job_id=job_id)
        resume = (saved.epoch, saved.data) if saved is not None else None
        if resume is not None:
            crud.add_event(s, job_id=job_id, kind="resumed",
                           payload={"attempt": attempt, "from_epoch": saved.epoch})
        # a retrain leaves its lineage's benchmark set out (recorded with the adapter)
        dataset, left_out = job_dataset(s, job)
        retrain = job.retrain is not None
        spec, name = job.base_model, job.name
        hyperparameters, templates = job.hyperparameters, job.templates
        tenant_id, parent_id = job.tenant_id, job.parent_adapter_id
    with Heartbeat(self, job_id, attempt) as beat:
        try:  # a stored spec this version refuses fails the job (with the reason), like any error
            config = TrainConfig.from_dict(hyperparameters, templates=templates)
            parent = _parent_delta(self, parent_id, tenant_id, resumed=resume is not None)
            adapter_metrics, delta = _train(self, job_id, attempt, spec, config, dataset,
                                            beat, resume, parent)
            if retrain:
                adapter_metrics["benchmark_excluded"] = left_out
            check_finite(delta)
            comparison = _compare(self, job_id, spec, delta) if retrain else None
        except TrainingCancelled:
            return _end(self, job_id, attempt, JobStatus.cancelled)
        except BlobStoreUnavailable:  # not the job's fault: its heartbeat stops, and the
            raise  # reconciler runs it again (from its checkpoint) once the store is back
        except Exception as e:  # the job failed; the worker lives on
            log.exception("job %s failed", job_id)
            return _end(self, job_id, attempt, JobStatus.failed,
                        failure_message(e, base_model=spec))
    return with_retries(lambda: _store(self, job_id, attempt, delta, adapter_metrics, name,
                                       comparison),
                        f"storing the adapter of job {job_id}")


def _compare(task: TrainTask, job_id: str, spec: str, delta) -> dict:
    """The new version beside the previous one and zero-shot on the benchmark set
    (``worker.promotion``); a comparison that cannot be made is recorded as such and never
    promotes, but does not fail the job: the version is trained and stored all the same."""
    try:
        return promotion.compare(lambda: session_scope(task.engine), task.base_model(spec),
                                 job_id, delta)
    except Exception:
        log.exception("job %s: the comparison on the benchmark set failed", job_id)
        return {"error": "the comparison on the benchmark set could not be made",
                "not_worse": None}


def _store(task: TrainTask, job_id: str, attempt: int, delta, metrics, name,
           comparison: dict | None = None) -> str:
    with session_scope(task.engine) as s:
        job = crud.get_job(s, job_id=job_id)
        if crud.get_adapter_for_job(s, job_id=job_id) is not None:
            return "exists"
        if not crud.holds(job, attempt):
            return "superseded"
        adapter = crud.store_adapter(s, job=job, weights=delta.to_bytes(),
                                     config=delta.config_dict(), metrics=metrics, name=name)
        promotion.settle(s, job, adapter, comparison)  # aliases, event, webhook: one commit
    return "succeeded"


def with_retries(action, what: str, delays=(1, 2, 4, 8, 16)):
    """``action()``, retried with backoff while the database or the blob store is away
    (about 30 s). If it
    stays away, the error propagates: the job's heartbeat then goes stale and the reconciler
    runs it again, so a result that could not be recorded is never taken as done."""
    for delay in (*delays, None):
        try:
            return action()
        except STORAGE_AWAY as e:
            if delay is None:
                raise
            log.warning("%s: %s unavailable, retrying in %d s", what,
                        "blob store" if isinstance(e, BlobStoreUnavailable) else "database",
                        delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def _end(task: TrainTask, job_id: str, attempt: int, status: JobStatus,
         error: str | None = None) -> str:
    def end() -> str:
        with session_scope(task.engine) as s:
            ended = crud.finish_attempt(s, job_id=job_id, attempt=attempt, status=status,
                                        error=error)
        return status.value if ended else "superseded"

    return with_retries(end, f"ending job {job_id}")


class Heartbeat:
    """A thread that refreshes the job's heartbeat while the attempt runs (model loading and
    evaluation included, not only training steps), and notices when the attempt no longer
    owns the job or its cancellation was asked for."""

    def __init__(self, task: TrainTask, job_id: str, attempt: int):
        self.task, self.job_id, self.attempt = task, job_id, attempt
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{job_id}",
                                        daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.task.settings.heartbeat_seconds):
            try:
                with session_scope(self.task.engine) as s:
                    self.lost = not crud.heartbeat(s, job_id=self.job_id, attempt=self.attempt)
            except Exception:
                log.warning("heartbeat of job %s failed; retrying", self.job_id, exc_info=True)
            if self.lost:
                return

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)


def _parent_delta(task: TrainTask, parent_id: str | None, tenant_id: str, *,
                  resumed: bool) -> tuple[str, Delta | None] | None:
    """(id, delta) of the warm start's parent (``parent_adapter_id``), read inside the
    job's error handling (a failure fails the job). A resumed attempt needs only the id: its
    checkpoint holds the values. The delta is None when the parent was deleted."""
    if not parent_id:
        return None
    if resumed:
        return parent_id, None
    with session_scope(task.engine) as s:
        adapter = crud.get_adapter(s, adapter_id=parent_id, tenant_id=tenant_id)
        weights = crud.get_blob(s, sha256=adapter.weights_sha256) if adapter else None
        if weights is None:
            raise ValueError(f"the parent adapter {parent_id} was deleted before the job ran")
        return parent_id, Delta.from_bytes(weights, adapter.config)


def _train(task: TrainTask, job_id: str, attempt: int, spec: str, config: TrainConfig,
           dataset: FewShotDataset, beat: Heartbeat, resume: tuple[int, bytes] | None,
           parent: tuple[str, Delta | None] | None = None):
    base = task.base_model(spec)
    if parent is not None and parent[1] is not None:
        check_compatible(base, parent[1])  # same weights and tensors, else a DeltaError
    dataset, val = prepare_training_set(dataset, config)
    interval = task.settings.progress_interval_seconds
    state = {"last": 0.0, "checked": 0.0, "cancel": False}

    def on_progress(p):
        now = time.monotonic()
        if now - state["last"] < interval and p.step < p.total_steps:
            return
        state["last"] = now
        progress = {"epoch": p.epoch, "epochs": p.epochs, "step": p.step,
                    "total_steps": p.total_steps, "loss": round(p.loss, 5), "lr": p.lr,
                    "images_per_sec": round(p.images_per_sec, 2),
                    "eta_seconds": round(p.eta_seconds, 1)}
        try:
            with session_scope(task.engine) as s:
                state["cancel"] = crud.record_progress(s, job_id=job_id, progress=progress,
                                                       attempt=attempt)
        except DATABASE_AWAY:  # a blip: training goes on, the next write tries again
            log.warning("job %s: progress not recorded (database unavailable)", job_id)

    def should_cancel() -> bool:
        now = time.monotonic()
        if not state["cancel"] and now - max(state["last"], state["checked"]) >= 1.0:
            state["checked"] = now  # a cancel request reaches the loop within about 1 s
            try:
                with session_scope(task.engine) as s:
                    job = crud.get_job(s, job_id=job_id)
                    state["cancel"] = job.cancel_requested or not crud.holds(job, attempt)
            except DATABASE_AWAY:
                pass  # unknown for now: asked again in a second
        return state["cancel"] or beat.lost

    def on_checkpoint(checkpoint: Checkpoint) -> None:
        try:  # the tensors, momentum and random states: a redelivery resumes from here
            with session_scope(task.engine) as s:
                crud.save_checkpoint(s, job_id=job_id, attempt=attempt,
                                     epoch=checkpoint.epoch, data=checkpoint.to_bytes())
        except DATABASE_AWAY:  # not fatal: the previous checkpoint stays
            log.warning("job %s: checkpoint not saved (database unavailable)", job_id)

    should_cancel()
    result = train_clipfit(
        base, dataset, config, val_set=val, on_progress=on_progress,
        should_cancel=should_cancel, on_checkpoint=on_checkpoint,
        resume=Checkpoint.from_bytes(resume[1]) if resume is not None else None,
        init=parent[1].tensors if parent is not None and parent[1] is not None else None)
    if parent is not None:
        result.delta.config.hyperparameters["parent_adapter_id"] = parent[0]
    # the held-out accuracies (zero-shot, best epoch) come from the training run itself
    metrics = result.delta.config.metrics
    metrics |= {"train_images": len(dataset), "seconds": round(result.seconds, 2),
                "images_per_sec": round(result.images_per_sec, 2)}
    return metrics, result.delta
