"""The job queue's contract: the tasks' names and the Celery configuration, one Celery app
factory for every process that sends, inspects or runs ``clipfit.train_job`` and
``clipfit.predict_job``, and the sending side the use cases call. Sending imports nothing
from ``worker/`` (so none of the training stack)."""

from __future__ import annotations

from typing import Any

from celery import Celery

from registry.settings import Settings

TRAIN_TASK = "clipfit.train_job"  # args: [job_id]
PREDICT_TASK = "clipfit.predict_job"  # args: [job_id] (a job of kind "predict")
TASKS = {"train": TRAIN_TASK, "predict": PREDICT_TASK}  # by jobs.kind


def task_for(kind: str) -> str:
    """The task that runs a job of ``kind`` (jobs.kind)."""
    return TASKS[kind]


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings (broker, acknowledgement, timeouts) for ``settings``."""
    broker = settings.celery_broker_url
    if broker.startswith("sqla+"):  # options go to SQLAlchemy's create_engine
        transport_options: dict[str, Any] = {"connect_args": {"timeout": 30}}
    else:  # Redis, SQS: unacknowledged messages return to the queue after this long
        visibility = settings.visibility_timeout_seconds or settings.job_timeout_seconds + 3600
        transport_options = {"visibility_timeout": visibility,
                             # a broker host that drops packets costs a request 5 s, not
                             # the operating system's connect timeout (minutes)
                             "socket_connect_timeout": 5, "socket_keepalive": True}
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


def create_celery_app(settings: Settings, name: str = "clipfit") -> Celery:
    """A Celery app on the configured broker, without tasks: enough to send, inspect and
    ping. Workers register ``clipfit.train_job`` on it (``worker.celery_app``)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)  # the SQLite broker's home
    app = Celery(name, set_as_current=False)
    app.conf.update(celery_config(settings))
    return app


class JobQueue:
    def __init__(self, settings: Settings):
        self.app = create_celery_app(settings, "clipfit-api")

    def enqueue(self, job_id: str, kind: str = "train") -> None:
        """Publish the job (raises when the broker is unreachable)."""
        self.app.send_task(task_for(kind), args=[job_id])

    def ping(self) -> None:
        """Raise unless the broker answers within about 2 s."""
        with self.app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)

    def depth(self) -> int | None:
        """Messages waiting in the default queue (None when the broker is unreachable).
        A queue nobody has declared yet (no worker has started) holds no messages."""
        try:
            with self.app.connection_for_write() as conn:
                # one quick try (the channel's own would retry for about 6 s)
                conn.ensure_connection(max_retries=1, interval_start=0, timeout=2)
                channel = conn.default_channel
                try:
                    return channel.queue_declare(queue=self.app.conf.task_default_queue,
                                                 passive=True).message_count
                except conn.channel_errors:
                    return 0
        except Exception:  # noqa: BLE001 (unknown is an answer)
            return None
