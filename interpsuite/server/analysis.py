"""Running analyses for the HTTP routes and the WebSocket: limits, queueing, time budget, JSON.

Both front ends go through the same four steps, in this order, so each refuses the same things
the same way: `check_limits` (413, before anything else), `service.check` (ConfigError, the CLI's
one-line messages, before any forward pass), `submit` (503 with Retry-After when the pool is
full) and `wait` (504 after the time budget, the analysis cancelled through its CancelToken).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

from ..errors import ConfigError
from ..progress import CancelToken
from .errors import ApiError
from .jobs import Job, PoolClosed, QueueFull
from .settings import ServerSettings
from .state import Loaded, ServerState


def check_limits(settings: ServerSettings, text_lists: Sequence[Sequence[str]]) -> None:
    """413 for too many texts (all items together) or a text over the character limit."""
    count = sum(len(texts) for texts in text_lists)
    if count > settings.max_texts:
        raise ApiError(413, f"{count} texts in one request; the server's limit is {settings.max_texts}")
    for i, texts in enumerate(text_lists):
        for j, text in enumerate(texts):
            if len(text) > settings.max_text_chars:
                where = f"items[{i}].texts[{j}]" if len(text_lists) > 1 else f"texts[{j}]"
                raise ApiError(
                    413, f"{where} has {len(text)} characters; the server's limit is {settings.max_text_chars}"
                )


def check_request(service: Any, texts: Sequence[str], analyzers: Mapping[str, Any], where: str = "") -> None:
    """`service.check` with the item's place in front of its message (for batches)."""
    try:
        service.check(texts, analyzers)
    except ConfigError as err:
        if where:
            raise ConfigError(f"{where}: {err}") from None
        raise


def submit(
    state: ServerState, work: Callable[[Loaded, CancelToken], Any], description: str = "", *, exclusive: bool = False
) -> Job:
    """Queue the work; 503 + Retry-After when full, 409 while the model is being switched.
    `exclusive`: the work changes the model's weights in place (see `gate.ModelGate`)."""
    try:
        return state.submit(work, description, exclusive=exclusive)
    except QueueFull as err:
        raise ApiError(503, str(err), headers={"Retry-After": str(state.settings.retry_after_s)}) from None
    except PoolClosed as err:
        raise ApiError(503, str(err), headers={"Retry-After": str(state.settings.retry_after_s)}) from None
    except RuntimeError as err:
        raise ApiError(409, str(err)) from None


async def run_cached(
    service: Any, texts: Sequence[str], analyzers: Mapping[str, Any], settings: ServerSettings, until: float
) -> Any:
    """A fully cached request, answered on the thread pool of cheap requests (not the analysis queue)."""
    from starlette.concurrency import run_in_threadpool

    token = CancelToken()
    try:
        return await asyncio.wait_for(
            run_in_threadpool(service.analyze, texts, analyzers, cancel=token), max(0.0, until - time.monotonic())
        )
    except asyncio.TimeoutError:
        token.cancel()
        raise ApiError(504, f"the cached answer took longer than the {settings.request_timeout_s:g} s budget") from None


def deadline(settings: ServerSettings) -> float:
    return time.monotonic() + settings.request_timeout_s


async def wait(job: Job, settings: ServerSettings, until: float) -> Any:
    """The job's result, or 504 (and the job cancelled) once the request's time budget is spent."""
    future = watched(job)
    try:
        return await asyncio.wait_for(asyncio.shield(future), max(0.0, until - time.monotonic()))
    except asyncio.TimeoutError:
        cancel(job)
        raise ApiError(
            504,
            f"the analysis did not finish within the server's {settings.request_timeout_s:g} s budget "
            "and was cancelled; analyse fewer texts or ask the operator for a larger budget",
        ) from None
    except asyncio.CancelledError:  # the client went away: stop the work, never leak it
        cancel(job)
        raise


def watched(job: Job) -> asyncio.Future:
    """The job's future on this event loop; its outcome is always retrieved, so a job that ends
    after its request gave up (504, disconnect) leaves no 'exception was never retrieved' noise."""
    future = asyncio.wrap_future(job.future)
    future.add_done_callback(lambda f: f.cancelled() or f.exception())
    return future


def cancel(job: Job) -> None:
    job.cancel.cancel()
    job.future.cancel()  # succeeds only while it waits: then it never starts


def file_url(run_id: str, path: str) -> str:
    return f"/runs/{quote(run_id, safe='')}/files/{quote(path)}"


def _urls(value: Any, run_id: str) -> Any:
    if isinstance(value, str):
        return file_url(run_id, value)
    if isinstance(value, list):
        return [_urls(v, run_id) for v in value]
    if isinstance(value, dict):
        return {k: _urls(v, run_id) for k, v in value.items()}
    return value


#: the keys of an outcome entry that hold paths relative to the run directory
FILE_KEYS = ("figures", "figure_files", "table_files", "artifacts")


def outcome_json(outcome: Any) -> dict:
    """`AnalysisOutcome.to_dict()` with every file path (figures, table CSVs, artifacts) turned into
    a /runs/{id}/files/... URL; tables stay JSON rows."""
    data = outcome.to_dict()
    run_id = str(data.get("run_id", ""))
    data.pop("run_dir", None)  # a server-side absolute path: the URL is what a client uses
    for entry in (data.get("analyzers") or {}).values():
        if isinstance(entry, dict):
            for key in FILE_KEYS:
                if entry.get(key):
                    entry[key] = _urls(entry[key], run_id)
    data["url"] = f"/runs/{quote(run_id, safe='')}"
    return data
