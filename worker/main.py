"""The Celery app for the ``celery`` command line's inspect and control commands (the
compose healthcheck runs ``celery -A worker.main inspect ping``): configured from the
environment when imported, with no tasks, so it does not load the training stack. Workers
run ``clipfit worker``, which builds its app with ``worker.celery_app.create_worker_app``."""

from registry.settings import Settings
from worker.celery_app import create_control_app

app = create_control_app(Settings())
