"""The dependency every route uses: the app's ServerState."""

from __future__ import annotations

from starlette.requests import HTTPConnection

from ..state import ServerState


def get_state(connection: HTTPConnection) -> ServerState:
    return connection.app.state.server
