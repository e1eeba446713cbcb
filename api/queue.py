"""The API's side of the job queue: a thin Celery app that sends ``clipfit.train_job`` by
name. It imports nothing from ``worker/`` (and so none of the training stack)."""

from __future__ import annotations

from celery import Celery

from registry.queue import TRAIN_TASK, celery_config
from registry.settings import Settings


class JobQueue:
    def __init__(self, settings: Settings):
        settings.data_dir.mkdir(parents=True, exist_ok=True)  # the SQLite broker's home
        self.app = Celery("clipfit-api", set_as_current=False)
        self.app.conf.update(celery_config(settings))

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
