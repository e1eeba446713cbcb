"""The workers' Celery app, built from a settings object. Jobs are ids; the database is the
source of truth for their state."""

from __future__ import annotations

from celery import Celery

from registry.queue import TRAIN_TASK, celery_config
from registry.settings import Settings

from .tasks import TrainTask, train_job


def create_worker_app(settings: Settings) -> Celery:
    """A Celery app that runs ``clipfit.train_job`` with ``settings`` (database, device,
    weights); standalone workers and the embedded one are built the same way."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)  # the SQLite broker's home
    app = Celery("clipfit", set_as_current=False)
    app.conf.update(celery_config(settings))
    app.task(name=TRAIN_TASK, bind=True, base=TrainTask, settings=settings)(train_job)
    return app
