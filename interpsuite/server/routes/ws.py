"""WebSocket /ws: an analysis that streams its progress events, then its result.

Messages in (JSON text frames):
- `{"type": "analyze", "id": ..., "text" | "texts": ..., "analyzers": {...}}`: validated like
  POST /analyze; answered by `{"type": "accepted", "id"}`, then `{"type": "progress", "id", ...event}`
  for each progress event, then `{"type": "result", "id", ...outcome}`.
- `{"type": "cancel", "id": ...}`: cancel that analysis (answered by its result, status cancelled).
- `{"type": "ping"}`: `{"type": "pong"}`.
- `{"type": "inference" | "patch", ...}`: the SAE workbench (routes/workbench.py `ws_message`); an
  inference also makes its prompt this connection's live prompt, re-sent after every patch change.
Anything else (not JSON, not an object, unknown type, invalid request) answers
`{"type": "error", "id", "error", "message"}` and the connection stays open. Several analyses
may run on one connection; a disconnect cancels every analysis it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from typing import Any

from fastapi import APIRouter, WebSocket
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.websockets import WebSocketDisconnect, WebSocketState

from ...errors import ConfigError
from ...progress import ProgressEvent
from ..analysis import cancel, check_limits, check_request, deadline, outcome_json, submit, watched
from ..errors import ApiError, error_body, internal_message, validation_message
from ..jobs import Job
from ..state import Loaded, ServerState
from . import workbench

log = logging.getLogger("interpsuite.server")


class Connection:
    """One WebSocket: a send lock (several analyses write to it), and the jobs it started."""

    def __init__(self, websocket: WebSocket, state: ServerState):
        self.websocket = websocket
        self.state = state
        self.send_lock = asyncio.Lock()
        self.jobs: dict[Any, Job] = {}
        self.tasks: set[asyncio.Task] = set()

    async def send(self, message: dict) -> None:
        if self.websocket.client_state != WebSocketState.CONNECTED:
            return
        async with self.send_lock:
            await self.websocket.send_json(message)

    async def error(self, message_id: Any, code: str, message: str) -> None:
        await self.send({"type": "error", "id": message_id, **error_body(code, message)})

    async def handle(self, raw: str) -> None:
        try:
            message = json.loads(raw)
        except json.JSONDecodeError as err:
            await self.error(None, "bad_message", f"the message is not JSON ({err.msg} at character {err.pos})")
            return
        if not isinstance(message, dict):
            await self.error(None, "bad_message", f"a message is a JSON object, not {type(message).__name__}")
            return
        kind, message_id = message.get("type"), message.get("id")
        if kind == "analyze":
            task = asyncio.create_task(self.analyze(message))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        elif kind == "cancel":
            job = self.jobs.get(message_id)
            if job is None:
                await self.error(message_id, "not_found", f"no running analysis with id {message_id!r}")
            else:
                cancel(job)
        elif kind == "ping":
            await self.send({"type": "pong", "id": message_id})
        elif kind in ("inference", "patch"):
            task = asyncio.create_task(workbench.ws_message(self, message))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        else:
            known = "analyze, cancel, inference, patch or ping"
            await self.error(message_id, "bad_message", f"unknown message type {kind!r}; send {known}")

    async def analyze(self, message: dict) -> None:
        message_id = message.get("id")
        try:
            await self._analyze(message)
        except ApiError as err:
            await self.error(message_id, err.code, err.message)
        except ConfigError as err:
            await self.error(message_id, "config_error", str(err))
        except ValidationError as err:
            explain = self.state.schemas.explain
            await self.error(message_id, "validation_error", validation_message(err.errors(), explain))
        except (WebSocketDisconnect, asyncio.CancelledError):
            raise
        except Exception:
            error_id = uuid.uuid4().hex[:12]
            log.exception("unexpected error id=%s in a WebSocket analysis", error_id)
            with contextlib.suppress(Exception):
                await self.error(message_id, "internal_error", internal_message(error_id))

    async def _analyze(self, message: dict) -> None:
        state = self.state
        request = state.schemas.WebSocketAnalyze.model_validate(message)
        message_id = request.id if request.id is not None else uuid.uuid4().hex[:8]
        if message_id in self.jobs:
            raise ApiError(409, f"an analysis with id {message_id!r} is already running on this connection")
        texts, analyzers = request.text_list(), request.analyzer_options()
        until = deadline(state.settings)
        check_limits(state.settings, [texts])
        await run_in_threadpool(check_request, state.current().service, texts, analyzers)

        loop = asyncio.get_running_loop()
        events: asyncio.Queue[ProgressEvent] = asyncio.Queue()

        def listener(event: ProgressEvent) -> None:  # on the worker thread: hand over, never block
            loop.call_soon_threadsafe(events.put_nowait, event)

        def work(loaded: Loaded, token: Any) -> Any:
            return loaded.service.analyze(texts, analyzers, listener=listener, cancel=token)

        job = submit(state, work, f"ws analyze {message_id}")
        self.jobs[message_id] = job
        try:
            await self.send({"type": "accepted", "id": message_id, "queue": state.pool.snapshot()})
            outcome = await self._stream(job, events, message_id, until)
        finally:
            self.jobs.pop(message_id, None)
        await self.send({"type": "result", "id": message_id, **outcome_json(outcome)})

    async def _stream(self, job: Job, events: asyncio.Queue, message_id: Any, until: float) -> Any:
        future = watched(job)
        try:
            while not future.done():
                remaining = until - time.monotonic()
                if remaining <= 0:
                    cancel(job)
                    raise ApiError(
                        504,
                        f"the analysis did not finish within the server's {self.state.settings.request_timeout_s:g} s "
                        "budget and was cancelled",
                    )
                getter = asyncio.ensure_future(events.get())
                done, _ = await asyncio.wait({getter, future}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    await self.send({"type": "progress", "id": message_id, **getter.result().to_dict()})
                else:
                    getter.cancel()
            while not events.empty():  # events queued before the future resolved come first
                await self.send({"type": "progress", "id": message_id, **events.get_nowait().to_dict()})
            return future.result()
        except BaseException:
            cancel(job)
            raise

    def close(self) -> None:
        """The client left: cancel every analysis it started (each stops at its next progress item)."""
        workbench.forget(self)
        for job in self.jobs.values():
            cancel(job)
        for task in self.tasks:
            task.cancel()


def build_router() -> APIRouter:
    router = APIRouter()

    @router.websocket("/ws")
    async def websocket_endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        connection = Connection(websocket, websocket.app.state.server)
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                raw = message.get("text")
                if raw is None:
                    try:
                        raw = (message.get("bytes") or b"").decode("utf-8")
                    except UnicodeDecodeError:
                        await connection.error(None, "bad_message", "binary frames must hold UTF-8 JSON")
                        continue
                limit = connection.state.settings.max_body_bytes
                if len(raw.encode("utf-8")) > limit:
                    await connection.error(None, "payload_too_large", f"the message is larger than {limit} bytes")
                    continue
                try:
                    await connection.handle(raw)
                except Exception:  # a message nobody foresaw: answer it, keep the connection
                    error_id = uuid.uuid4().hex[:12]
                    log.exception("unexpected error id=%s on a WebSocket message", error_id)
                    await connection.error(None, "internal_error", internal_message(error_id))
        except WebSocketDisconnect:
            pass
        finally:
            connection.close()

    return router
