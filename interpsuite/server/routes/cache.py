"""The result cache: statistics and clearing."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from ..state import ServerState
from .deps import get_state

router = APIRouter(tags=["cache"])


@router.get("/cache/stats", summary="Entries, bytes, bound, hits, misses, evictions, hit rate")
def cache_stats(state: ServerState = Depends(get_state)) -> dict:
    return state.cache.stats().to_dict()


@router.post("/cache/clear", summary="Remove every cached result")
def cache_clear(state: ServerState = Depends(get_state)) -> dict:
    removed = state.cache.clear()
    return {"removed": removed, "stats": state.cache.stats().to_dict()}
