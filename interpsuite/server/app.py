"""`create_app(settings)`: the FastAPI app of `interpsuite serve`.

Middleware, outermost first: unexpected errors -> 500 JSON with an id; CORS (only when origins
are given: closed by default); the bearer token (when set; everything but GET /health); the body
limit (413). The model loads in the lifespan unless one is passed in (tests share a tiny model;
`interpsuite serve` loads it before binding, so a wrong name fails in one line, not in uvicorn).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from .. import __version__
from .docs import install_offline_docs
from .errors import UnexpectedErrorMiddleware, install_error_handlers
from .routes import analyze, cache, dashboard, health, models, pruning, runs, sae_training, safety, workbench, ws
from .schemas import RequestSchemas
from .security import BodyLimitMiddleware, TokenAuthMiddleware
from .settings import ServerSettings
from .state import ServerState

log = logging.getLogger("interpsuite.server")

DESCRIPTION = """REST and WebSocket API over interpsuite's analyzers.

Every analyzer takes the options of its config (the same keys as in YAML); errors are JSON
`{"error": code, "message": one line}`. See docs/server.md."""


def create_app(settings: ServerSettings | None = None, *, registry: Any = None, model: Any = None) -> FastAPI:
    """The app. `registry`: analyzers to expose (default: the installed plugins); `model`: an
    already loaded HookedModel for `settings.model` (default: loaded at startup)."""
    settings = (settings or ServerSettings()).check()
    if registry is None:
        from ..plugins import get_registry

        registry = get_registry()
    schemas = RequestSchemas(registry)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = await run_in_threadpool(ServerState, settings, registry, model, schemas)
        app.state.server = state
        log.info("serving model %s (workers %d, queue %d)", settings.model, settings.workers, settings.queue)
        try:
            yield
        finally:
            await run_in_threadpool(state.close)

    app = FastAPI(
        title="interpsuite",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # FastAPI's default /docs loads Swagger UI from a CDN: served offline below
        redoc_url=None,
    )
    install_offline_docs(app)
    app.state.settings = settings
    app.state.explain_validation = schemas.explain
    install_error_handlers(app)
    for router in (
        health.router,
        models.router,
        analyze.build_router(schemas),
        cache.router,
        runs.router,
        safety.router,
        pruning.router,
        workbench.router,
        sae_training.router,
        ws.build_router(),
        dashboard.router,  # last: it serves `/` and the static files
    ):
        app.include_router(router)

    # add_middleware wraps what is there: the last added is the outermost
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    if settings.token is not None:
        app.add_middleware(TokenAuthMiddleware, token=settings.token)
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(UnexpectedErrorMiddleware)
    return app
