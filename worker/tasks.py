"""``clipfit.train_job``: train one job's ClipFit delta and store it with its metrics."""

from __future__ import annotations

import logging
import time
from functools import lru_cache

from clipfit_core.data import FewShotDataset, Sample, sample_few_shot, split_train_val
from clipfit_core.models import BaseModel, create_base_model, resolve_device
from clipfit_core.train import TrainConfig, TrainingCancelled, train_clipfit
from registry import crud
from registry.db import session_scope
from registry.models import JobStatus
from registry.settings import get_settings

from .celery_app import TRAIN_TASK, app

log = logging.getLogger(__name__)


@lru_cache(maxsize=4)
def get_base_model(spec: str) -> BaseModel:
    """Loaded once per worker process; training changes it in place (and restores it), so
    it is never shared with the API's inference engine, even in the embedded service."""
    settings = get_settings()
    return create_base_model(spec, device=resolve_device(settings.device),
                             cache_dir=settings.weights_dir)


@app.task(name=TRAIN_TASK, bind=True)
def train_job(self, job_id: str) -> str:
    """Idempotent: a redelivered job whose adapter exists, or a finished job, does nothing."""
    with session_scope() as s:
        if crud.get_adapter_for_job(s, job_id=job_id) is not None:
            return "exists"
        job = crud.mark_running(s, job_id=job_id)
        if job is None:
            return "finished"
        classnames, images = crud.training_images(s, job=job)
        spec, templates, hp, name = job.base_model, job.templates, job.hyperparameters, job.name
    try:
        adapter_metrics, delta = _train(job_id, spec, templates, hp, classnames, images)
    except TrainingCancelled:
        with session_scope() as s:
            crud.finish_job(s, job=crud.get_job(s, job_id=job_id), status=JobStatus.cancelled)
        return "cancelled"
    except Exception as e:  # the job failed; the worker lives on
        log.exception("job %s failed", job_id)
        with session_scope() as s:
            crud.finish_job(s, job=crud.get_job(s, job_id=job_id), status=JobStatus.failed,
                            error=f"{type(e).__name__}: {e}")
        return "failed"
    with session_scope() as s:
        job = crud.get_job(s, job_id=job_id)
        if crud.get_adapter_for_job(s, job_id=job_id) is not None:
            return "exists"
        crud.store_adapter(s, job=job, weights=delta.to_bytes(), config=delta.config_dict(),
                           metrics=adapter_metrics, name=name)
    return "succeeded"


def _train(job_id, spec, templates, hp, classnames, images):
    settings = get_settings()
    base = get_base_model(spec)
    dataset = FewShotDataset(classnames, [Sample(data, label) for data, label in images])
    val = None
    if hp.get("val_fraction", 0) > 0:
        dataset, val = split_train_val(dataset, hp["val_fraction"], seed=hp.get("seed", 0))
        val = val if len(val) else None
    if hp.get("shots"):
        dataset = sample_few_shot(dataset, hp["shots"], seed=hp.get("seed", 0))
    config = TrainConfig(epochs=hp.get("epochs", 10), lr=hp.get("lr", 0.002),
                         batch_size=hp.get("batch_size", 32), lambda_kd=hp.get("lambda", 8.0),
                         seed=hp.get("seed", 0), templates=templates,
                         crop_scale=(hp.get("crop_min", 0.08), 1.0))
    state = {"last": 0.0, "checked": 0.0, "cancel": False}

    def on_progress(p):
        now = time.monotonic()
        if now - state["last"] < settings.progress_interval_seconds and p.step < p.total_steps:
            return
        state["last"] = now
        progress = {"epoch": p.epoch, "epochs": p.epochs, "step": p.step,
                    "total_steps": p.total_steps, "loss": round(p.loss, 5), "lr": p.lr,
                    "images_per_sec": round(p.images_per_sec, 2),
                    "eta_seconds": round(p.eta_seconds, 1)}
        with session_scope() as s:
            state["cancel"] = crud.record_progress(s, job_id=job_id, progress=progress)

    def should_cancel() -> bool:
        now = time.monotonic()
        if not state["cancel"] and now - max(state["last"], state["checked"]) >= 1.0:
            state["checked"] = now  # a cancel request reaches the loop within about 1 s
            with session_scope() as s:
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
