"""A per-process daemon thread owned by an object: started once, on first need, and stopped
by ``close``. The capture writer and the served-counts flusher are two; each gives the
thread's name and its loop (``_run``), which waits on ``self._lock`` (a Condition) for work
or for ``self._closing``."""

from __future__ import annotations

import threading


class BackgroundThread:
    THREAD_NAME = "clipfit-background"

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closing = False

    def _run(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        """Start the thread (once; never after ``close``)."""
        with self._lock:
            if self._thread is not None or self._closing:
                return
            self._thread = threading.Thread(target=self._run, name=self.THREAD_NAME,
                                            daemon=True)
        self._thread.start()

    def _stop(self, timeout: float) -> bool:
        """Tell the loop to end and wait up to ``timeout`` s for it; whether it had started."""
        with self._lock:
            self._closing = True
            self._lock.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return thread is not None
