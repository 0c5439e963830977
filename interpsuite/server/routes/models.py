"""The model endpoints: list, info, memory, and switching the loaded model.

Switching answers 409 while analyses run or wait (the choice documented in docs/server.md):
waiting for them would hold the request open for as long as the longest analysis, and a
client can poll /health for an empty queue. While the new model loads, new analyses get 409.
"""

from __future__ import annotations

import os
import resource
import sys

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from ..errors import ApiError
from ..state import ServerState
from .deps import get_state

router = APIRouter(tags=["models"])


class SwitchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    model: str = Field(description="an embedded model name (GET /models lists them)", min_length=1)


@router.get("/models", summary="Models this server can load, and which one is loaded")
def list_models(state: ServerState = Depends(get_state)) -> dict:
    from ...models.sources import EMBEDDED

    loaded = state.current().name
    models = []
    for name in state.allowed_models():
        description = EMBEDDED[name].description if name in EMBEDDED else "configured at startup"
        models.append({"name": name, "description": description, "loaded": name == loaded})
    return {"loaded": loaded, "switching": state.switching, "models": models}


@router.get("/model/info", summary="The loaded model's ModelInfo")
def model_info(state: ServerState = Depends(get_state)) -> dict:
    current = state.current()
    info = current.model.info
    names = list(info.hook_points())
    return {"model": current.name, **info.to_dict(), "hook_points": len(names), "hook_names": names}


def process_rss_bytes() -> int:
    """Resident memory of this process now (/proc on Linux; peak RSS elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if sys.platform == "darwin" else peak * 1024)


@router.get("/models/memory", summary="Process RSS, parameter bytes and device of the loaded model")
def model_memory(state: ServerState = Depends(get_state)) -> dict:
    current = state.current()
    module = current.model.hf_model
    parameters = list(module.parameters())
    buffers = list(module.buffers())
    dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in parameters})
    return {
        "model": current.name,
        "process_rss_bytes": process_rss_bytes(),
        "parameter_bytes": sum(p.numel() * p.element_size() for p in parameters),
        "buffer_bytes": sum(b.numel() * b.element_size() for b in buffers),
        "n_parameters": sum(p.numel() for p in parameters),
        "device": str(current.model.device),
        "dtypes": dtypes,
    }


@router.post(
    "/models/switch",
    summary="Load another model (409 while analyses run or wait)",
    responses={400: {"description": "unknown model"}, 409: {"description": "analyses running or a switch underway"}},
)
async def switch_model(body: SwitchRequest, state: ServerState = Depends(get_state)) -> dict:
    previous = state.current().name
    if body.model == previous and state.switching is None:
        return {"model": previous, "previous": previous, "switched": False}
    try:
        state.begin_switch(body.model)  # ConfigError (400) for an unknown name
    except RuntimeError as err:
        raise ApiError(409, str(err)) from None
    loaded = await run_in_threadpool(state.finish_switch, body.model)
    return {"model": loaded.name, "previous": previous, "switched": True}
