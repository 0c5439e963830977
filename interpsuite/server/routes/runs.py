"""Earlier runs: list them, read one's results.json, and serve its files, confined to the run.

Run ids and file paths come from URLs, so each is checked before it touches the disk: a run id
is one plain folder name; a file path is relative with no `..`, and its resolved target (symlinks
followed) must still lie inside the run directory, so a symlink pointing out is a 404 too.
"""

from __future__ import annotations

import mimetypes
import re
from pathlib import Path, PurePosixPath

from fastapi import APIRouter, Depends
from fastapi.responses import FileResponse

from ..errors import ApiError
from ..state import ServerState
from .deps import get_state

router = APIRouter(tags=["runs"])

_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")


def run_dir(state: ServerState, run_id: str) -> Path:
    """The run's folder under runs_dir (404 for anything else)."""
    if not _RUN_ID.match(run_id) or ".." in run_id:
        raise ApiError(404, f"no run {run_id!r} (a run id is a folder name from GET /runs)")
    root = Path(state.settings.runs_dir).resolve()
    folder = (root / run_id).resolve()
    if folder.parent != root or not folder.is_dir():
        raise ApiError(404, f"no run {run_id!r} under the server's runs directory (GET /runs lists them)")
    return folder


def run_file(folder: Path, path: str) -> Path:
    """`path` inside `folder`: 400 for an absolute path or `..`; 404 when missing or outside."""
    pure = PurePosixPath(path.replace("\\", "/"))
    if not path or pure.is_absolute() or re.match(r"^[A-Za-z]:", path) or "\x00" in path:
        raise ApiError(400, f"file path {path!r} must be relative to the run directory")
    if any(part == ".." for part in pure.parts):
        raise ApiError(400, f"file path {path!r} may not contain '..'")
    target = (folder / Path(*pure.parts)).resolve()
    if not target.is_relative_to(folder) or not target.is_file():
        raise ApiError(404, f"no file {path!r} in this run")
    return target


@router.get("/runs", summary="Earlier runs (newest first where the service sorts them)")
def list_runs(state: ServerState = Depends(get_state)) -> dict:
    return {"runs": state.current().service.runs()}


@router.get("/runs/{run_id}", summary="One run's results.json")
def get_run(run_id: str, state: ServerState = Depends(get_state)) -> dict:
    run_dir(state, run_id)
    return state.current().service.run(run_id)


@router.get("/runs/{run_id}/files/{path:path}", summary="A file of a run (figures, tables, data)")
def get_run_file(run_id: str, path: str, state: ServerState = Depends(get_state)) -> FileResponse:
    target = run_file(run_dir(state, run_id), path)
    media_type = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
    return FileResponse(target, media_type=media_type)
