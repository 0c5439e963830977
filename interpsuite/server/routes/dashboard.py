"""The dashboard: `/` serves the single page, `/static/...` its ES modules, stylesheet and nothing else.

The page is a static, dependency-free app (no CDN, no build step) that talks to the same REST and
WebSocket API as any client, so it holds no data and runs nothing itself; the token middleware lets
these GETs through without the token (a browser cannot add a header to the page it opens) and
everything the page fetches afterwards sends it. Files are served from the package's `static/`
folder only: the requested path is relative, has no `..`, and its resolved target (symlinks
followed) must lie inside that folder, so nothing else on the disk is reachable.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path, PurePosixPath

from fastapi import APIRouter
from fastapi.responses import FileResponse

from ..errors import ApiError

router = APIRouter(tags=["dashboard"])

#: the dashboard's files (shipped as package data)
STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

#: explicit types: `mimetypes` reads the system's tables, which may map .js to text/plain, and a
#: browser refuses to run an ES module served with a non-JavaScript type
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".json": "application/json",
}

NO_CACHE = {"Cache-Control": "no-cache"}


def static_file(path: str) -> Path:
    """`path` inside STATIC_DIR: 404 for anything absolute, with `..`, missing, or resolving outside."""
    pure = PurePosixPath(path.replace("\\", "/"))
    if not path or pure.is_absolute() or "\x00" in path or any(part == ".." for part in pure.parts):
        raise ApiError(404, f"no dashboard file {path!r}")
    root = STATIC_DIR.resolve()
    target = (root / Path(*pure.parts)).resolve()
    if not target.is_relative_to(root) or not target.is_file():
        raise ApiError(404, f"no dashboard file {path!r}")
    return target


def _serve(target: Path) -> FileResponse:
    media_type = MEDIA_TYPES.get(target.suffix) or mimetypes.guess_type(target.name)[0] or "application/octet-stream"
    return FileResponse(target, media_type=media_type, headers=NO_CACHE)


@router.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
def index() -> FileResponse:
    """The dashboard page (open `/?token=...` on a server started with a token)."""
    return _serve(static_file("index.html"))


@router.api_route("/static/{path:path}", methods=["GET", "HEAD"], include_in_schema=False)
def static(path: str) -> FileResponse:
    return _serve(static_file(path))
