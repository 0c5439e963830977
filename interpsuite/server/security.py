"""Security defaults: bearer token (constant-time compare), request body limit, the token file.

Both middlewares are plain ASGI (no BaseHTTPMiddleware): they answer before the app runs, so a
request without the token or with an oversized body never reaches a route, a model or a parser.
"""

from __future__ import annotations

import hmac
from pathlib import Path

from starlette.datastructures import Headers, QueryParams
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import ConfigError
from .errors import ResponseTracker, error_response

#: (method, path) reachable without the token: a load balancer's liveness probe
PUBLIC = frozenset({("GET", "/health"), ("HEAD", "/health")})
#: GET paths (prefixes) reachable without the token: the dashboard's shell and the API docs page.
#: They hold no data and run nothing; everything they fetch afterwards sends the token. A browser
#: cannot add a header to the page it opens, so these must load before the user gives the token.
PUBLIC_PAGES = ("/", "/static/", "/docs", "/docs/", "/docs-static/", "/openapi.json")


def is_public(method: str, path: str) -> bool:
    if (method, path) in PUBLIC:
        return True
    if method not in ("GET", "HEAD"):
        return False
    return any(path == page or (page.endswith("/") and page != "/" and path.startswith(page)) for page in PUBLIC_PAGES)


def read_token_file(path: str | Path) -> str:
    """The token in `path` (surrounding whitespace stripped); ConfigError when missing, unreadable or empty."""
    file = Path(path).expanduser()
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"--token-file {path}: no such file; write a long random secret into it") from None
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else type(err).__name__
        raise ConfigError(f"--token-file {path}: cannot read it ({reason}); check the path and permissions") from None
    token = text.strip()
    if not token:
        raise ConfigError(f"--token-file {path}: the file is empty; write a long random secret into it")
    if any(c.isspace() for c in token):
        raise ConfigError(f"--token-file {path}: the token contains whitespace; use one line without spaces")
    return token


def token_matches(header: str | None, token: str) -> bool:
    """`Authorization: Bearer <token>`, compared in constant time (no early exit on the first wrong byte)."""
    if not header:
        return False
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode("utf-8"), token.encode("utf-8"))


class TokenAuthMiddleware:
    """Every HTTP request and WebSocket needs the bearer token, except GET /health."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        method = scope.get("method", "GET") if scope["type"] == "http" else "WEBSOCKET"
        if is_public(method, scope.get("path", "")) or self._authorised(scope):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":  # closing before accept: the handshake is refused (HTTP 403)
            await send({"type": "websocket.close", "code": 1008, "reason": "missing or wrong bearer token"})
            return
        response = error_response(
            401,
            "missing or wrong bearer token; send the header Authorization: Bearer <the token from --token-file>",
            headers={"WWW-Authenticate": "Bearer"},
        )
        await response(scope, receive, send)


    def _authorised(self, scope: Scope) -> bool:
        if token_matches(Headers(scope=scope).get("authorization"), self.token):
            return True
        if scope["type"] != "websocket":
            return False
        # a browser's WebSocket cannot send headers: it gives the token as ?token= on the /ws URL
        given = QueryParams(scope.get("query_string", b"").decode("latin-1")).get("token")
        return given is not None and hmac.compare_digest(given.encode("utf-8"), self.token.encode("utf-8"))


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than the server's limit of {limit} bytes")


class BodyLimitMiddleware:
    """413 JSON for bodies over `max_bytes`: refused on Content-Length before any byte is read, and
    counted on the streamed body (chunked uploads, lying Content-Length) as it arrives."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                declared = None
            if declared is None or declared < 0:
                await error_response(400, f"Content-Length {length!r} is not a byte count")(scope, receive, send)
                return
            if declared > self.max_bytes:
                await error_response(413, BodyTooLarge(self.max_bytes).detail)(scope, receive, send)
                return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)  # FastAPI re-raises HTTPExceptions from the body read
            return message

        tracker = ResponseTracker(send)
        try:
            await self.app(scope, counting_receive, tracker)
        except BodyTooLarge as err:  # read outside FastAPI's body parsing: answer here
            if tracker.started:
                raise
            await error_response(413, err.detail)(scope, receive, send)
