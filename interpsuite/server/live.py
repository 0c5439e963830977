"""Live workbench state of one server: the loaded SAE workbench and the WebSocket connections
that watch a prompt.

Why here and not on the routes: the REST routes and the WebSocket both change the patches, and
every change must reach every connection that has a live prompt (the last `inference` it sent),
whichever front end made it. One `LiveHub` per server, hung lazily off `ServerState`
(`hub(state)`), holds the workbench (None until POST /load-sae) and those connections; `push`
recomputes each live prompt with the current patches and sends it as a `logits` message.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool

log = logging.getLogger("interpsuite.server")

_CREATE = threading.Lock()


@dataclass(frozen=True)
class LivePrompt:
    text: str
    k: int


class LiveHub:
    """The workbench and the connections with a live prompt (both under one lock)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._workbench: Any = None  # interpsuite_plugins.sae.workbench.Workbench
        self._live: dict[Any, LivePrompt] = {}  # connection -> its live prompt

    def workbench(self, model: Any = None) -> Any:
        """The loaded workbench; None when none is loaded, or when it was built on another model
        than `model` (the server switched models: the SAE no longer applies and is dropped)."""
        with self.lock:
            wb = self._workbench
            if wb is not None and model is not None and wb.model is not model:
                self._workbench = None
                wb.close()
                return None
            return wb

    def replace(self, workbench: Any) -> None:
        with self.lock:
            old, self._workbench = self._workbench, workbench
        if old is not None and old is not workbench:
            old.close()

    def watch(self, connection: Any, text: str, k: int) -> None:
        with self.lock:
            self._live[connection] = LivePrompt(text, k)

    def forget(self, connection: Any) -> None:
        with self.lock:
            self._live.pop(connection, None)

    def live(self) -> list[tuple[Any, LivePrompt]]:
        with self.lock:
            return list(self._live.items())

    def close(self) -> None:
        self.replace(None)
        with self.lock:
            self._live.clear()


def hub(state: Any) -> LiveHub:
    """The server's hub, created on first use."""
    found = getattr(state, "live_hub", None)
    if found is None:
        with _CREATE:
            found = getattr(state, "live_hub", None)
            if found is None:
                found = state.live_hub = LiveHub()
    return found


async def push(state: Any, reason: str, answer: Any) -> int:
    """Send `{"type": "logits", "id": None, "reason", ...}` for each live prompt, computed by
    `answer(state, text, k)` (a blocking function, run on the thread pool). A connection that
    fails (gone, or its prompt now errors) is skipped; the others still get theirs. Returns how
    many were sent."""
    sent = 0
    for connection, prompt in hub(state).live():
        try:
            body = await run_in_threadpool(answer, state, prompt.text, prompt.k)
            await connection.send({"type": "logits", "id": None, "reason": reason, **body})
            sent += 1
        except Exception as err:  # one bad connection never breaks the change that triggered the push
            log.debug("live push to a connection failed: %s", err)
            with contextlib.suppress(Exception):
                await connection.error(None, "push_failed", f"the live prompt could not be recomputed: {err}")
    return sent
