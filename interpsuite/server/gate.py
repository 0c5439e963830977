"""ModelGate: many readers of the loaded model at once, or one writer that changes its weights.

Why: almost everything the server does only reads the model (analyses, inference, SAE splices:
interventions never touch the weights), so they share it. A few pruning operations apply a
plan's masks to the weights in place for the length of a job (unstructured impact curves, the
export), and nothing else may run a forward pass meanwhile, or it would silently see the pruned
model. They take the gate exclusively; readers that arrive while a writer waits queue behind it
(so a steady stream of inference cannot starve a writer). A thread that already reads may read
again without waiting (a reader calling a reader never deadlocks behind a waiting writer).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class ModelGate:
    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0
        self._local = threading.local()

    @contextmanager
    def shared(self) -> Iterator[None]:
        depth = getattr(self._local, "depth", 0)
        if depth == 0:
            with self._condition:
                while self._writer or self._writers_waiting:
                    self._condition.wait()
                self._readers += 1
        self._local.depth = depth + 1
        try:
            yield
        finally:
            self._local.depth = depth
            if depth == 0:
                with self._condition:
                    self._readers -= 1
                    if self._readers == 0:
                        self._condition.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        if getattr(self._local, "depth", 0):
            raise RuntimeError("a thread that reads the model cannot also change its weights")
        with self._condition:
            self._writers_waiting += 1
            try:
                while self._writer or self._readers:
                    self._condition.wait()
            finally:
                self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._condition:
                self._writer = False
                self._condition.notify_all()

    def snapshot(self) -> dict[str, int | bool]:
        with self._condition:
            return {"readers": self._readers, "writer": self._writer, "writers_waiting": self._writers_waiting}
