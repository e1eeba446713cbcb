"""Celery app and tasks: the only place that knows about queues."""
