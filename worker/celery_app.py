"""The workers' Celery app, built from a settings object. Jobs are ids; the database is the
source of truth for their state."""

from __future__ import annotations

from celery import Celery

from registry.settings import Settings
from service.queue import PREDICT_TASK, TRAIN_TASK, create_celery_app


def create_worker_app(settings: Settings) -> Celery:
    """A Celery app that runs ``clipfit.train_job`` and ``clipfit.predict_job`` with
    ``settings`` (database, device, weights); standalone workers and the embedded one are
    built the same way."""
    from .predict import PredictTask, predict_job  # the model stack: only where tasks run
    from .tasks import TrainTask, train_job

    app = create_control_app(settings)
    # shared=False: registered on this app only, so each app's task has its own settings
    app.task(name=TRAIN_TASK, bind=True, base=TrainTask, settings=settings,
             shared=False)(train_job)
    app.task(name=PREDICT_TASK, bind=True, base=PredictTask, settings=settings,
             shared=False)(predict_job)
    app.set_current()  # the pools look tasks up on the (thread's) current app
    return app


def create_control_app(settings: Settings) -> Celery:
    """A Celery app on the broker without tasks: enough to send, inspect and ping
    (``celery -A worker.main inspect ping``) without importing torch."""
    return create_celery_app(settings)
