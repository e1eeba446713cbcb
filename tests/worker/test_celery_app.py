"""Each Celery app carries its own settings; the API's sending app runs no tasks."""

from registry.settings import Settings
from service.queue import TRAIN_TASK, JobQueue
from worker.celery_app import create_worker_app


def test_apps_do_not_share_tasks_or_settings(tmp_path):
    first = create_worker_app(Settings(data_dir=tmp_path / "a"))
    second = create_worker_app(Settings(data_dir=tmp_path / "b"))
    sender = JobQueue(Settings(data_dir=tmp_path / "c"))
    assert first.tasks[TRAIN_TASK].settings.data_dir == tmp_path / "a"
    assert second.tasks[TRAIN_TASK].settings.data_dir == tmp_path / "b"
    assert TRAIN_TASK not in sender.app.tasks
    assert first.conf.task_acks_late and first.conf.worker_prefetch_multiplier == 1
