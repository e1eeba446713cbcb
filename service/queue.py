"""The job queue: one Celery app factory for every process that sends, inspects or runs
``clipfit.train_job``, and the sending side the use cases call. Sending imports nothing
from ``worker/`` (so none of the training stack)."""

from __future__ import annotations

from celery import Celery

from registry.queue import TRAIN_TASK, celery_config
from registry.settings import Settings


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

    def enqueue(self, job_id: str) -> None:
        """Publish the job (raises when the broker is unreachable)."""
        self.app.send_task(TRAIN_TASK, args=[job_id])

    def ping(self) -> None:
        """Raise unless the broker answers within about 2 s."""
        with self.app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)

    def depth(self) -> int | None:
        """Messages waiting in the default queue (None when the broker is unreachable).
        A queue nobody has declared yet (no worker has started) holds no messages."""
        try:
            with self.app.connection_for_write() as conn:
                channel = conn.default_channel
                try:
                    return channel.queue_declare(queue=self.app.conf.task_default_queue,
                                                 passive=True).message_count
                except conn.channel_errors:
                    return 0
        except Exception:  # noqa: BLE001 (unknown is an answer)
            return None
