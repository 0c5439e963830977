"""The progress hook in the core: analyzers' progress bars as events, and cooperative cancellation.

Every analyzer makes its progress bars through `RunContext.progress()` (and `ctx.batches()`),
so that one place turns each item into a `ProgressEvent` for whoever listens (the server's
WebSocket, a notebook), whether or not tqdm bars are shown. The pipeline adds run and
analyzer boundaries. Between items the reporter checks a `CancelToken`: cancelling is
cooperative, an analyzer stops at its next item, never in the middle of a forward pass.

A listener is someone else's code: one that raises `Cancelled` stops the run on purpose; one
that raises anything else is logged once and dropped, and the run goes on without it.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("interpsuite")

#: the kinds of events, in the order a run emits them
EVENT_KINDS = ("run_start", "analyzer_start", "progress", "analyzer_end", "run_end")

#: the status of a run (results.json `status`) stopped through a CancelToken
CANCELLED = "cancelled"


@dataclass(frozen=True)
class ProgressEvent:
    """One step of a run: a boundary (run/analyzer start and end) or one item of a progress bar."""

    kind: str  # "run_start" | "analyzer_start" | "progress" | "analyzer_end" | "run_end"
    analyzer: str | None
    desc: str = ""  # the progress bar's label
    done: int = 0
    total: int | None = None
    status: str | None = None  # analyzer_end / run_end: ok | failed | skipped | interrupted | complete | cancelled
    elapsed_s: float = 0.0  # seconds since the run started

    def to_dict(self) -> dict:
        elapsed = self.elapsed_s if math.isfinite(self.elapsed_s) else None
        return {
            "kind": self.kind,
            "analyzer": self.analyzer,
            "desc": self.desc,
            "done": self.done,
            "total": self.total,
            "status": self.status,
            "elapsed_s": elapsed,
        }


ProgressListener = Callable[[ProgressEvent], None]


class Cancelled(Exception):  # noqa: N818 - the agreed name (service_api.md)
    """Stops a run between two progress items: raised by a listener, or when a CancelToken is set.

    The pipeline records the analyzer that was running as `interrupted` (finished ones are kept)
    and the run as `cancelled`."""


class CancelToken:
    """A thread-safe flag: one thread (a server's disconnect handler) sets it, the run's thread checks it."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()


def item_count(iterable: Iterable) -> int | None:
    """len(iterable), or None for a generator."""
    try:
        return len(iterable)  # type: ignore[arg-type]
    except TypeError:
        return None


class ProgressReporter:
    """One run's event stream: the listener (dropped after an error), the cancel token, the clock,
    and which analyzer is running. Used from the run's own thread only."""

    def __init__(self, listener: ProgressListener | None = None, cancel: CancelToken | None = None):
        self.listener = listener
        self.cancel = cancel
        self.analyzer: str | None = None
        self.started = time.perf_counter()

    @property
    def active(self) -> bool:
        return self.listener is not None or self.cancel is not None

    def emit(self, kind: str, *, desc: str = "", done: int = 0, total: int | None = None, status: str | None = None):
        """Hand an event to the listener. `Cancelled` from the listener propagates (and sets the
        token, so every later check agrees); any other error drops the listener with one warning."""
        if self.listener is None:
            return
        event = ProgressEvent(kind, self.analyzer, desc, done, total, status, time.perf_counter() - self.started)
        try:
            self.listener(event)
        except Cancelled:
            if self.cancel is None:
                self.cancel = CancelToken()
            self.cancel.cancel()
            if kind != "run_end":  # nothing left to stop
                raise
        except Exception as err:
            log.warning("progress listener dropped after it raised %s: %s (the run goes on)", type(err).__name__, err)
            self.listener = None

    def check(self) -> None:
        """Raise Cancelled when the run was cancelled (called between items and between analyzers)."""
        if self.cancel is not None and self.cancel.cancelled:
            raise Cancelled(f"cancelled while {self.analyzer} ran" if self.analyzer else "cancelled")

    def track(self, iterable: Iterable, desc: str = "", total: int | None = None) -> Iterator[Any]:
        """`iterable`, with a `progress` event after each item and a cancellation check before each."""
        if total is None:
            total = item_count(iterable)
        done = 0
        for item in iterable:
            self.check()
            yield item
            done += 1
            self.emit("progress", desc=desc, done=done, total=total)
        self.check()
