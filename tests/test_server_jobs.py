"""The bounded worker pool behind POST /analyze (`interpsuite.server.jobs.JobPool`)."""

from __future__ import annotations

import threading

import pytest

from interpsuite.progress import Cancelled
from interpsuite.server.jobs import JobPool, PoolClosed, QueueFull


def blocker(started: threading.Event, release: threading.Event, value: object):
    def work(cancel):
        started.set()
        while not release.wait(0.01):
            if cancel.cancelled:
                raise Cancelled("cancelled")
        return value

    return work


def test_capacity_running_waiting_and_results():
    pool = JobPool(workers=1, capacity=1)
    started, release = threading.Event(), threading.Event()
    first = pool.submit(blocker(started, release, "a"))
    assert started.wait(30)
    second = pool.submit(lambda cancel: "b")
    assert pool.snapshot() == {"running": 1, "waiting": 1, "workers": 1, "capacity": 1}
    with pytest.raises(QueueFull, match="1 workers are busy and 1 analyses are waiting"):
        pool.submit(lambda cancel: "c")
    release.set()
    assert first.future.result(30) == "a" and second.future.result(30) == "b"
    assert pool.wait_idle(30) and pool.snapshot()["running"] == 0
    assert pool.submit(lambda cancel: 1 + 1).future.result(30) == 2
    pool.shutdown()


def test_errors_reach_the_caller_and_the_worker_survives():
    pool = JobPool(workers=1, capacity=0)

    def broken(cancel):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        pool.submit(broken).future.result(30)
    assert pool.submit(lambda cancel: "alive").future.result(30) == "alive"
    pool.shutdown()


def test_cancel_waiting_and_running_jobs():
    pool = JobPool(workers=1, capacity=2)
    started, release = threading.Event(), threading.Event()
    running = pool.submit(blocker(started, release, "never"))
    assert started.wait(30)
    waiting = pool.submit(lambda cancel: "never either")
    assert waiting.future.cancel(), "a waiting job can be withdrawn"
    running.cancel.cancel()
    with pytest.raises(Cancelled):
        running.future.result(30)
    assert pool.wait_idle(30)
    assert not release.is_set()
    pool.shutdown()


def test_shutdown_cancels_and_refuses():
    pool = JobPool(workers=1, capacity=1)
    started, release = threading.Event(), threading.Event()
    running = pool.submit(blocker(started, release, "x"))
    assert started.wait(30)
    waiting = pool.submit(lambda cancel: "y")
    pool.shutdown(timeout=30)
    assert waiting.future.cancelled()
    with pytest.raises(Cancelled):
        running.future.result(0)
    with pytest.raises(PoolClosed):
        pool.submit(lambda cancel: None)
