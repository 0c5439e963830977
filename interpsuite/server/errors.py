"""Every error the server gives is JSON `{"error": <code>, "message": <one line>}`, never a traceback.

- `ApiError(status, code, message)`: what routes raise on purpose (404 unknown run, 409 busy, ...).
- `ConfigError` (the CLI's one-line messages): 400 `config_error`.
- pydantic validation (the request does not fit its schema): 422 `validation_error`, one line
  naming the field (`analyzers.logit_lens.layers: Input should be a valid list`).
- Starlette's HTTP errors (unknown route, wrong method, body limit): their status, JSON body.
- Anything else: 500 `internal_error` with an id; the traceback goes to the server log only,
  under that id, so a user can report the id and an operator can find the cause.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import ConfigError

log = logging.getLogger("interpsuite.server")

#: the `error` code of each status the server answers with
CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    500: "internal_error",
    503: "busy",
    504: "timeout",
}


class ApiError(Exception):
    """An error a route answers on purpose: HTTP status, code, one-line message, extra headers."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code or CODES.get(status, "error")
        self.message = one_line(message)
        self.headers = dict(headers or {})


def one_line(message: object) -> str:
    """The first line of a message, whitespace collapsed (a message is never a multi-line dump)."""
    text = str(message).strip()
    first = text.splitlines()[0] if text else ""
    return " ".join(first.split()) or "error"


def error_body(code: str, message: str, **extra: Any) -> dict:
    return {"error": code, "message": one_line(message), **extra}


def error_response(
    status: int, message: str, code: str | None = None, headers: Mapping[str, str] | None = None, **extra: Any
) -> JSONResponse:
    return JSONResponse(error_body(code or CODES.get(status, "error"), message, **extra), status, dict(headers or {}))


def where(loc: Sequence[Any]) -> str:
    """A pydantic location as a dotted path without the leading `body` (`items[1].analyzers.x`)."""
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif not parts and item in ("body", "query", "path", "header"):
            continue
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "request"


def validation_message(
    errors: Sequence[Mapping[str, Any]], explain: Callable[[Mapping], str | None] | None = None
) -> str:
    """One line for a list of pydantic errors: the first error with its field, plus how many more.

    `explain(error)` may give a better message for an error (the CLI's message for an unknown
    analyzer or option); None keeps pydantic's."""
    if not errors:
        return "the request does not fit its schema"
    first = errors[0]
    message = explain(first) if explain else None
    if message is None:
        text = str(first.get("msg", "invalid value"))
        if first.get("type") == "json_invalid":
            reason = (first.get("ctx") or {}).get("error", "")
            message = f"body: the body is not valid JSON ({reason})" if reason else "body: the body is not valid JSON"
        elif first.get("type") == "missing":
            message = f"{where(first.get('loc', ()))}: field required"
        else:
            text = text.removeprefix("Value error, ")  # our own validators' messages
            message = f"{where(first.get('loc', ()))}: {text}"
    more = len(errors) - 1
    if more:
        message += f" (and {more} more problem{'s' if more > 1 else ''})"
    return one_line(message)


def install_error_handlers(app: FastAPI) -> None:
    """Register the JSON handlers; `app.state.explain_validation` refines validation messages."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.code, exc.headers)

    @app.exception_handler(ConfigError)
    async def _config_error(request: Request, exc: ConfigError) -> JSONResponse:
        return error_response(400, str(exc), "config_error")

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        explain = getattr(request.app.state, "explain_validation", None)
        return error_response(422, validation_message(exc.errors(), explain))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else CODES.get(exc.status_code, "error")
        if exc.status_code == 404 and message == "Not Found":
            message = f"no such endpoint: {request.method} {request.url.path} (the API is listed at /docs)"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        return error_response(exc.status_code, message, headers=exc.headers)


class ResponseTracker:
    """`send` for the app inside a middleware, remembering whether the response has started: after
    that, a middleware can no longer answer with an error of its own."""

    def __init__(self, send: Send) -> None:
        self.send = send
        self.started = False

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
        await self.send(message)


class UnexpectedErrorMiddleware:
    """Outermost guard for HTTP: an exception nobody handled becomes a 500 JSON with an id.

    Starlette's own ServerErrorMiddleware would answer with plain text (and a traceback in
    debug mode) and re-raise; this one logs the traceback under the id and answers JSON."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        tracker = ResponseTracker(send)
        try:
            await self.app(scope, receive, tracker)
        except Exception:
            error_id = uuid.uuid4().hex[:12]
            log.exception("unexpected error id=%s on %s %s", error_id, scope.get("method"), scope.get("path"))
            if tracker.started:  # the response is half sent: nothing to repair, the client sees a cut connection
                return
            response = error_response(500, internal_message(error_id), error_id=error_id)
            await response(scope, receive, send)


def internal_message(error_id: str) -> str:
    return f"unexpected server error (id {error_id}); the server log has the details"
