"""The Celery app. Jobs are ids; the database is the source of truth for their state."""

from __future__ import annotations

from celery import Celery

from registry.settings import Settings, get_settings

TRAIN_TASK = "clipfit.train_job"


def configure(app: Celery, settings: Settings) -> Celery:
    """Apply the settings (broker, timeouts) to ``app``; before its first connection."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    visibility = settings.visibility_timeout_seconds or settings.job_timeout_seconds + 3600
    broker = settings.celery_broker_url
    if broker.startswith("sqla+"):  # options go to SQLAlchemy's create_engine
        transport_options = {"connect_args": {"timeout": 30}}
    else:  # Redis, SQS: unacknowledged messages return to the queue after this long
        transport_options = {"visibility_timeout": visibility}
    app.conf.update(
        broker_url=broker,
        task_serializer="json", accept_content=["json"], result_backend=None,
        task_ignore_result=True,
        task_acks_late=True,  # a job is acknowledged only when it has finished...
        task_reject_on_worker_lost=True,  # ...and goes back to the queue if its worker dies
        worker_prefetch_multiplier=1,
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        task_time_limit=settings.job_timeout_seconds,
        worker_hijack_root_logger=False,
    )
    return app


app = configure(Celery("clipfit", include=["worker.tasks"]), get_settings())
