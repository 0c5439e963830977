"""GET /health: liveness, the loaded model, uptime, version and the analysis queue (never waits)."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from ... import __version__
from ..state import ServerState
from .deps import get_state

router = APIRouter(tags=["server"])


@router.get("/health", summary="Liveness, model, uptime, version, queue")
async def health(state: ServerState = Depends(get_state)) -> dict:
    """Public even when a token is set (for load balancers); answered on the event loop, so it
    is never stuck behind a running analysis."""
    return {
        "status": "switching" if state.switching else "ok",
        "model": state.current().name,
        "uptime_s": round(state.uptime_s, 3),
        "version": __version__,
        "queue": state.pool.snapshot(),
    }
