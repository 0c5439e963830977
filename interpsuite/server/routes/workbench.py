"""The SAE workbench over HTTP and WebSocket: load an SAE, browse features, patch them, see logits.

One workbench per server (one SAE at a time, one patch list shared by every client); the engine
is `interpsuite_plugins.sae.workbench.Workbench` (plain Python), held by the server's `LiveHub`
(`interpsuite.server.live`). Loading an SAE and exporting go through the analysis pool (they
read a corpus or write files); inference and patch edits are cheap and run on the thread pool
directly, never queued behind analyses. Every patch change, REST or WebSocket, pushes new logits
to each WebSocket connection that has a live prompt.

Errors: a feature id out of range or an unknown patch id is 404, no SAE loaded is 409, a bad
SAE or patch file is 400 (one line each, like everywhere else).
"""

from __future__ import annotations

import contextlib
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from ...errors import ConfigError
from ..analysis import check_limits, deadline, submit, wait
from ..errors import ApiError
from ..live import hub, push
from ..paths import export_target, inside, relative_parts, resolve_artifact
from ..state import Loaded, ServerState
from .deps import get_state

router = APIRouter(tags=["workbench"])

Kind = Literal["set", "scale", "add"]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoadSAERequest(_Body):
    path: str = Field(description="SAE folder relative to the runs directory or an artifact directory")
    corpus: list[str] | None = Field(default=None, description="texts for the feature statistics (null: built-in)")
    max_corpus_tokens: int = Field(default=4096, ge=1, le=200_000)  # one pass, not cancellable midway


class PatchRequest(_Body):
    feature: int
    kind: Kind
    value: float = Field(allow_inf_nan=False)
    enabled: bool = True


class PatchUpdate(_Body):
    value: float | None = Field(default=None, allow_inf_nan=False)
    kind: Kind | None = None
    enabled: bool | None = None


class ToggleRequest(_Body):
    enabled: bool | None = None


class InferenceRequest(_Body):
    text: str
    k: int = Field(default=10, ge=1, le=100)


class ExportRequest(_Body):
    name: str
    format: Literal["patches", "lora", "saelens"] = "patches"
    overwrite: bool = False


class ImportRequest(_Body):
    path: str


class WsInference(InferenceRequest):
    model_config = ConfigDict(extra="ignore")


class WsPatch(_Body):
    model_config = ConfigDict(extra="ignore")
    patch_id: str | None = None
    feature: int | None = None
    kind: Kind | None = None
    value: float | None = Field(default=None, allow_inf_nan=False)
    enabled: bool | None = None


# --- the engine, with server errors ---------------------------------------------------------------


def _engine() -> Any:
    from interpsuite_plugins.sae import workbench

    return workbench


def workbench_of(state: ServerState) -> Any:
    """The loaded workbench (409 when none, or when the model it was built on was switched away)."""
    wb = hub(state).workbench(state.current().model)
    if wb is None:
        raise ApiError(409, 'no SAE is loaded; POST /load-sae {"path": ...} first')
    return wb


def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """`fn(...)` with the engine's unknown-feature / unknown-patch errors as 404."""
    engine = _engine()
    try:
        return fn(*args, **kwargs)
    except (engine.UnknownFeatureError, engine.UnknownPatchError) as err:
        raise ApiError(404, str(err)) from None


def answer(state: ServerState, text: str, k: int) -> dict[str, Any]:
    """The inference body for `text` (blocking): the workbench's, or the plain model's without an SAE."""
    if not text.strip():
        raise ConfigError("the text is empty; give a prompt to run")
    check_limits(state.settings, [[text]])
    model = state.current().model
    wb = hub(state).workbench(model)
    with state.gate.shared():  # never a forward pass while a pruning job has the weights masked
        if wb is None:
            return _engine().plain_inference(model, text, k)
        return wb.inference(text, k)


def _patch_json(patch: Any) -> dict[str, Any]:
    return patch.to_json()


async def _changed(state: ServerState, reason: str = "patch") -> None:
    await push(state, reason, answer)


# --- REST -----------------------------------------------------------------------------------------


@router.post("/load-sae", summary="Load an SAE and compute its feature statistics (clears the patches)")
async def load_sae(body: LoadSAERequest, state: ServerState = Depends(get_state)) -> dict:
    folder = resolve_artifact(state.settings, body.path, "load-sae")
    if body.corpus is not None:
        if not body.corpus:
            raise ConfigError("corpus is an empty list; give texts, or null for the built-in corpus")
        check_limits(state.settings, [body.corpus])
    until = deadline(state.settings)
    corpus, max_tokens, shown = body.corpus, body.max_corpus_tokens, body.path

    def work(loaded: Loaded, cancel: Any) -> Any:
        from interpsuite_plugins.sae.files import load_sae as read

        from ...artifacts import ModelFingerprint

        sae = read(folder, device=getattr(loaded.model, "device", None))
        expected = getattr(sae, "fingerprint", None)
        if expected is not None:
            reason = expected.mismatch(ModelFingerprint.of(loaded.model))
            if reason is not None:
                raise ConfigError(f"SAE {shown}: {reason}; load an SAE trained on this model")
        return _engine().Workbench(loaded.model, sae, shown, corpus=corpus, max_corpus_tokens=max_tokens)

    job = submit(state, work, f"load-sae {shown}")
    wb = await wait(job, state.settings, until)
    hub(state).replace(wb)
    await _changed(state, "sae")
    return wb.info()


@router.get("/sae", summary="The loaded SAE (404 when none)")
def get_sae(state: ServerState = Depends(get_state)) -> dict:
    wb = hub(state).workbench(state.current().model)
    if wb is None:
        raise ApiError(404, "no SAE is loaded; POST /load-sae first")
    return wb.info()


@router.get("/features", summary="A page of the SAE's features with their statistics")
def list_features(
    offset: int = Query(0, ge=0),
    limit: int = Query(50, ge=1, le=1000),
    sort: Literal["density", "max", "index"] = "density",
    q: str | None = Query(None, max_length=200, description="substring of a top token"),
    state: ServerState = Depends(get_state),
) -> dict:
    return workbench_of(state).features(offset, limit, sort, q)


@router.get("/feature/{feature}/details", summary="One feature: contexts, logit effects, histogram")
def feature_details(feature: int, state: ServerState = Depends(get_state)) -> dict:
    wb = workbench_of(state)
    return _call(wb.feature_details, feature)


@router.post("/patch", status_code=201, summary="Patch a feature (replaces the feature's earlier patch)")
async def create_patch(body: PatchRequest, state: ServerState = Depends(get_state)) -> dict:
    wb = workbench_of(state)
    patch = _call(wb.add_patch, body.feature, body.kind, body.value, body.enabled)
    await _changed(state)
    return _patch_json(patch)


@router.patch("/patch/{patch_id}", summary="Change a patch's value, kind or state")
async def update_patch(patch_id: str, body: PatchUpdate, state: ServerState = Depends(get_state)) -> dict:
    wb = workbench_of(state)
    patch = _call(wb.update, patch_id, value=body.value, enabled=body.enabled, kind=body.kind)
    await _changed(state)
    return _patch_json(patch)


@router.post("/patch/{patch_id}/toggle", summary="Switch a patch on or off (no body or null: flip)")
async def toggle_patch(
    patch_id: str, body: ToggleRequest | None = None, state: ServerState = Depends(get_state)
) -> dict:
    wb = workbench_of(state)
    patch = _call(wb.toggle, patch_id, body.enabled if body is not None else None)
    await _changed(state)
    return _patch_json(patch)


@router.delete("/patch/{patch_id}", summary="Remove a patch")
async def delete_patch(patch_id: str, state: ServerState = Depends(get_state)) -> dict:
    wb = workbench_of(state)
    _call(wb.remove, patch_id)
    await _changed(state)
    return {"deleted": patch_id}


@router.get("/patches", summary="Every patch, in creation order")
def list_patches(state: ServerState = Depends(get_state)) -> dict:
    return {"patches": [_patch_json(p) for p in workbench_of(state).patches()]}


@router.post("/patches/clear", summary="Remove every patch")
async def clear_patches(state: ServerState = Depends(get_state)) -> dict:
    workbench_of(state).clear()
    await _changed(state)
    return {"patches": []}


@router.post("/inference", summary="Top next tokens with and without the patches")
async def inference(body: InferenceRequest, state: ServerState = Depends(get_state)) -> dict:
    return await run_in_threadpool(answer, state, body.text, body.k)


@router.post("/export-sae", summary="Write the patches, a PEFT LoRA adapter or the SAE (SAELens) to exports")
async def export_sae(body: ExportRequest, state: ServerState = Depends(get_state)) -> dict:
    wb = workbench_of(state)
    target = export_target(state.settings, body.name, "export-sae", body.overwrite)
    until = deadline(state.settings)
    fmt = body.format

    def work(loaded: Loaded, cancel: Any) -> list[str]:
        from interpsuite_plugins.sae.patch_files import export

        return export(wb, target, fmt)

    files = await wait(submit(state, work, f"export-sae {fmt}"), state.settings, until)
    return {"path": str(target), "format": fmt, "files": files}


def _import_folder(state: ServerState, path: str) -> Any:
    """The patch folder: runs_dir / artifact dirs first, then exports_dir (404 when none holds it)."""
    try:
        return resolve_artifact(state.settings, path, "import-patches")
    except ApiError as err:
        if err.status != 404:
            raise
        found = inside(state.settings.exports_dir, relative_parts(path, "import-patches"))
        if found is None:
            raise ApiError(404, f"{err.message.removesuffix(')')} or the exports directory)") from None
        return found


@router.post("/import-patches", summary="Replace the patches by those of a patches export")
async def import_patches(body: ImportRequest, state: ServerState = Depends(get_state)) -> dict:
    wb = workbench_of(state)
    folder = _import_folder(state, body.path)

    def run() -> list:
        from interpsuite_plugins.sae.patch_files import import_patches as read

        return _call(read, wb, folder)

    patches = await run_in_threadpool(run)
    await _changed(state)
    return {"patches": [_patch_json(p) for p in patches]}


# --- WebSocket messages (called by routes/ws.py Connection.handle) ------------------------------------


async def ws_message(connection: Any, message: dict) -> None:
    """Answer one `inference` or `patch` message; errors answer `{"type": "error"}`, the
    connection stays up."""
    message_id = message.get("id")
    state = connection.state
    try:
        if message.get("type") == "inference":
            request = WsInference.model_validate(message)
            body = await run_in_threadpool(answer, state, request.text, request.k)
            hub(state).watch(connection, request.text, request.k)
            await connection.send({"type": "logits", "id": message_id, **body})
            return
        request = WsPatch.model_validate(message)
        wb = workbench_of(state)
        if request.patch_id is not None:
            patch = _call(wb.update, request.patch_id, value=request.value, enabled=request.enabled, kind=request.kind)
        else:
            if request.feature is None or request.kind is None or request.value is None:
                raise ApiError(
                    422,
                    "a patch message needs feature, kind and value (a new patch) or patch_id (a change)",
                    code="validation_error",
                )
            enabled = True if request.enabled is None else request.enabled
            patch = _call(wb.add_patch, request.feature, request.kind, request.value, enabled)
        await connection.send({"type": "patch", "id": message_id, "patch": _patch_json(patch)})
        await _changed(state)
    except ApiError as err:
        await connection.error(message_id, err.code, err.message)
    except ConfigError as err:
        await connection.error(message_id, "config_error", str(err))
    except ValidationError as err:
        from ..errors import validation_message

        await connection.error(message_id, "validation_error", validation_message(err.errors()))


def forget(connection: Any) -> None:
    """The connection closed: no more live pushes to it."""
    with contextlib.suppress(Exception):
        hub(connection.state).forget(connection)
