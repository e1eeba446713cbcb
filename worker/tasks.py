"""``clipfit.train_job``: train one job's ClipFit delta and store it with its metrics."""

from __future__ import annotations

import logging
import time
from functools import cached_property, lru_cache

from celery import Task
from sqlalchemy import Engine

from clipfit_core.config import TrainConfig, prepare_training_set
from clipfit_core.data import FewShotDataset, Sample
from clipfit_core.models import BaseModel, create_base_model, resolve_device
from clipfit_core.train import TrainingCancelled, train_clipfit
from registry import crud
from registry.db import get_engine, session_scope
from registry.models import JobStatus
from registry.settings import Settings

log = logging.getLogger(__name__)


class TrainTask(Task):
    """The task's per-process resources: the database engine and the base models (each
    loaded once; training changes a model in place and restores it, so a worker's copy is
    never shared with an API's inference engine, even in the embedded service)."""

    settings: Settings  # set by worker.celery_app.create_worker_app

    @cached_property
    def engine(self) -> Engine:
        return get_engine(self.settings.sqlalchemy_url)

    @cached_property
    def base_model(self):
        @lru_cache(maxsize=4)
        def load(spec: str) -> BaseModel:
            return create_base_model(spec, device=resolve_device(self.settings.device),
                                     cache_dir=self.settings.weights_dir)
        return load


def train_job(self: TrainTask, job_id: str) -> str:
    """Idempotent: a redelivered job whose adapter exists, or a finished job, does nothing."""
    with session_scope(self.engine) as s:
        if crud.get_adapter_for_job(s, job_id=job_id) is not None:
            return "exists"
        job = crud.mark_running(s, job_id=job_id)
        if job is None:
            return "finished"
        classnames, images = crud.training_images(s, job=job)
        spec, name = job.base_model, job.name
        hyperparameters, templates = job.hyperparameters, job.templates
    try:  # a stored spec this version refuses fails the job (with the reason), like any error
        config = TrainConfig.from_dict(hyperparameters, templates=templates)
        adapter_metrics, delta = _train(self, job_id, spec, config, classnames, images)
    except TrainingCancelled:
        with session_scope(self.engine) as s:
            crud.finish_job(s, job=crud.get_job(s, job_id=job_id), status=JobStatus.cancelled)
        return "cancelled"
    except Exception as e:  # the job failed; the worker lives on
        log.exception("job %s failed", job_id)
        with session_scope(self.engine) as s:
            crud.finish_job(s, job=crud.get_job(s, job_id=job_id), status=JobStatus.failed,
                            error=f"{type(e).__name__}: {e}")
        return "failed"
    with session_scope(self.engine) as s:
        job = crud.get_job(s, job_id=job_id)
        if crud.get_adapter_for_job(s, job_id=job_id) is not None:
            return "exists"
        crud.store_adapter(s, job=job, weights=delta.to_bytes(), config=delta.config_dict(),
                           metrics=adapter_metrics, name=name)
    return "succeeded"


def _train(task: TrainTask, job_id: str, spec: str, config: TrainConfig, classnames, images):
    base = task.base_model(spec)
    dataset = FewShotDataset(classnames, [Sample(data, label, name)
                                          for data, label, name in images])
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
        with session_scope(task.engine) as s:
            state["cancel"] = crud.record_progress(s, job_id=job_id, progress=progress)

    def should_cancel() -> bool:
        now = time.monotonic()
        if not state["cancel"] and now - max(state["last"], state["checked"]) >= 1.0:
            state["checked"] = now  # a cancel request reaches the loop within about 1 s
            with session_scope(task.engine) as s:
                state["cancel"] = crud.get_job(s, job_id=job_id).cancel_requested
        return state["cancel"]

    should_cancel()
    result = train_clipfit(base, dataset, config, val_set=val, on_progress=on_progress,
                           should_cancel=should_cancel)
    # the held-out accuracies (zero-shot, best epoch) come from the training run itself
    metrics = result.delta.config.metrics
    metrics |= {"train_images": len(dataset), "seconds": round(result.seconds, 2),
                "images_per_sec": round(result.images_per_sec, 2)}
    return metrics, result.delta
