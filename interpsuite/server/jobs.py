"""A bounded worker pool for analyses: N worker threads, at most Q jobs waiting, the rest refused.

Why not `ThreadPoolExecutor`: its queue is unbounded (a burst of requests would queue hours of
work nobody waits for), and it cannot say how many jobs run and how many wait, which /health
reports. Each job carries a `CancelToken` that the analysis checks between progress items, so a
timed-out request or a closed WebSocket stops its analysis at the next item and frees the worker.
Cheap requests never come here: they are answered on the event loop or its thread pool.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from ..progress import Cancelled, CancelToken

log = logging.getLogger("interpsuite.server")


class QueueFull(Exception):  # noqa: N818 - reads as a state, like queue.Full
    """Every worker is busy and every waiting place is taken: answer 503 with Retry-After."""


class PoolClosed(Exception):  # noqa: N818
    """The server is shutting down; no new job is accepted."""


@dataclass(eq=False)  # identity: jobs live in a set while they run
class Job:
    """One submitted call: the function, its future, and the token that cancels it."""

    fn: Callable[[CancelToken], Any]
    future: Future = field(default_factory=Future)
    cancel: CancelToken = field(default_factory=CancelToken)
    description: str = ""


class JobPool:
    """`submit(fn)` runs `fn(cancel_token)` on one of `workers` threads; `capacity` jobs may wait."""

    def __init__(self, workers: int = 1, capacity: int = 8, name: str = "interpsuite-job"):
        if workers < 1 or capacity < 0:
            raise ValueError(f"JobPool needs workers >= 1 and capacity >= 0, got {workers} and {capacity}")
        self.workers = workers
        self.capacity = capacity
        self._waiting: deque[Job] = deque()
        self._running: set[Job] = set()
        self._cond = threading.Condition()
        self._closed = False
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(workers)]
        for thread in self._threads:
            thread.start()

    # --- what /health shows -------------------------------------------------------------
    @property
    def running(self) -> int:
        with self._cond:
            return len(self._running)

    @property
    def waiting(self) -> int:
        with self._cond:
            return len(self._waiting)

    @property
    def busy(self) -> bool:
        with self._cond:
            return bool(self._running or self._waiting)

    def snapshot(self) -> dict:
        with self._cond:
            return {
                "running": len(self._running),
                "waiting": len(self._waiting),
                "workers": self.workers,
                "capacity": self.capacity,
            }

    # --- submitting ---------------------------------------------------------------------
    def submit(self, fn: Callable[[CancelToken], Any], description: str = "") -> Job:
        """Queue `fn`; raises QueueFull when all workers run and `capacity` jobs already wait."""
        job = Job(fn, description=description)
        with self._cond:
            if self._closed:
                raise PoolClosed("the server is shutting down")
            if len(self._running) + len(self._waiting) >= self.workers + self.capacity:
                raise QueueFull(
                    f"all {self.workers} workers are busy and {len(self._waiting)} analyses are waiting "
                    f"(capacity {self.capacity}); retry later"
                )
            self._waiting.append(job)
            self._cond.notify()
        return job

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._closed:
                    self._cond.wait()
                if not self._waiting:  # closed and drained
                    return
                job = self._waiting.popleft()
                if not job.future.set_running_or_notify_cancel():
                    continue  # the caller gave up while it waited
                self._running.add(job)
            try:
                if job.cancel.cancelled:
                    raise Cancelled("cancelled before it started")
                result = job.fn(job.cancel)
            except BaseException as err:  # handed to whoever waits on the future
                job.future.set_exception(err)
            else:
                job.future.set_result(result)
            finally:
                with self._cond:
                    self._running.discard(job)
                    self._cond.notify_all()

    # --- stopping -----------------------------------------------------------------------
    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until nothing runs or waits (True), or `timeout` seconds pass (False)."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._running and not self._waiting, timeout)

    def shutdown(self, timeout: float | None = 30.0) -> None:
        """Refuse new jobs, cancel waiting ones, ask running ones to stop, and join the workers."""
        with self._cond:
            self._closed = True
            waiting, self._waiting = list(self._waiting), deque()
            for job in self._running:
                job.cancel.cancel()
            self._cond.notify_all()
        for job in waiting:
            job.cancel.cancel()
            job.future.cancel()
        for thread in self._threads:
            thread.join(timeout)
            if thread.is_alive():
                log.warning("worker %s still running after %.0f s at shutdown", thread.name, timeout or 0)
