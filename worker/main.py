"""The Celery app for the `celery` command line (``celery -A worker.main ...``): configured from
the environment when imported. Programs build theirs with ``worker.celery_app.create_worker_app``."""

from registry.settings import Settings
from worker.celery_app import create_worker_app

app = create_worker_app(Settings())
