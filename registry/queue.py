"""The job queue's contract, shared by the API (which sends) and the workers (which run):
the task's name and the Celery configuration for a settings object. Plain data: no Celery
import here, so the registry stays free of queue code."""

from __future__ import annotations

from typing import Any

from .settings import Settings

TRAIN_TASK = "clipfit.train_job"  # args: [job_id]


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings (broker, acknowledgement, timeouts) for ``settings``."""
    broker = settings.celery_broker_url
    if broker.startswith("sqla+"):  # options go to SQLAlchemy's create_engine
        transport_options: dict[str, Any] = {"connect_args": {"timeout": 30}}
    else:  # Redis, SQS: unacknowledged messages return to the queue after this long
        visibility = settings.visibility_timeout_seconds or settings.job_timeout_seconds + 3600
        transport_options = {"visibility_timeout": visibility}
    return {
        "broker_url": broker,
        "task_serializer": "json", "accept_content": ["json"], "result_backend": None,
        "task_ignore_result": True,
        "task_acks_late": True,  # a job is acknowledged only when it has finished...
        "task_reject_on_worker_lost": True,  # ...and goes back to the queue if its worker dies
        "worker_prefetch_multiplier": 1,
        "broker_transport_options": transport_options,
        "broker_connection_retry_on_startup": True,
        "task_time_limit": settings.job_timeout_seconds,
        "worker_hijack_root_logger": False,
    }
