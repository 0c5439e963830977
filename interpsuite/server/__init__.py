"""The REST/WebSocket server over the analyzers (`interpsuite serve`, docs/server.md).

    from interpsuite.server import ServerSettings, create_app
    app = create_app(ServerSettings(model="tiny_llama"))

Modules, one job each: `settings` (ServerSettings, validated before anything loads), `app`
(create_app: middleware, routes, lifespan), `security` (bearer token, body limit, token file),
`errors` (every error as one-line JSON), `jobs` (the bounded worker pool), `schemas` (request
models generated from the analyzers' config dataclasses), `state` (the loaded model, service,
cache and pool), `analysis` (limits, queueing and time budget shared by HTTP and WebSocket),
`routes/` (one module per topic). Names are imported on first use: fastapi loads only when the
server is used.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"ServerSettings": "settings", "create_app": "app"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
