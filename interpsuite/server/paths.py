"""Paths that come from requests: saved artifacts to load, and export folders to write.

A request names an artifact (SAE, failure predictor, anomaly detector, patch file) by a path
relative to the server's runs directory or one of its artifact directories, never by an absolute
path: the server decides which folders a client may read. Each candidate is resolved (symlinks
followed) and must still lie inside its root, so a symlink pointing out is "not found", exactly
like a missing file. Exports are one plain folder name under `exports_dir`, so a client can never
write anywhere else, nor replace an earlier export by accident (409 unless `overwrite`).
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

from .errors import ApiError
from .settings import ServerSettings

#: an export folder name: letters, digits, `.`, `_`, `-`; starts with a letter or digit
_EXPORT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def artifact_roots(settings: ServerSettings) -> list[Path]:
    """The folders artifacts may be loaded from, in the order they are tried (runs_dir first)."""
    return [Path(settings.runs_dir), *(Path(folder) for folder in settings.artifact_dirs)]


def relative_parts(path: str, what: str) -> tuple[str, ...]:
    """The parts of a user-given relative path (400 for empty, absolute, `..`, NUL or a drive)."""
    if not isinstance(path, str) or not path.strip():
        raise ApiError(400, f"{what}: give a path relative to the runs directory or an artifact directory")
    if "\x00" in path:
        raise ApiError(400, f"{what}: the path {path!r} contains a NUL character")
    pure = PurePosixPath(path.replace("\\", "/"))
    if pure.is_absolute() or re.match(r"^[A-Za-z]:", path):
        raise ApiError(
            400, f"{what}: {path!r} is absolute; give a path relative to the runs directory or an artifact directory"
        )
    if any(part == ".." for part in pure.parts):
        raise ApiError(400, f"{what}: the path {path!r} may not contain '..'")
    parts = tuple(part for part in pure.parts if part not in ("", "."))
    if not parts:
        raise ApiError(400, f"{what}: give a path relative to the runs directory or an artifact directory")
    return parts


def inside(root: Path, parts: tuple[str, ...]) -> Path | None:
    """`root/parts` resolved, when it exists and still lies inside `root` (None otherwise)."""
    try:
        base = root.resolve()
        target = base.joinpath(*parts).resolve()
    except (OSError, RuntimeError):  # a symlink loop, an unreadable folder
        return None
    if not target.is_relative_to(base) or not target.exists():
        return None
    return target


def resolve_artifact(settings: ServerSettings, path: str, what: str) -> Path:
    """The existing file or folder `path` names inside runs_dir or an artifact dir, tried in that
    order. 400 for absolute paths, `..` and NUL; 404 when no root holds it (symlinks out included)."""
    parts = relative_parts(path, what)
    for root in artifact_roots(settings):
        found = inside(root, parts)
        if found is not None:
            return found
    count = len(settings.artifact_dirs)
    roots = "the runs directory" + (f" or the {count} artifact director{'y' if count == 1 else 'ies'}" if count else "")
    raise ApiError(
        404, f"{what}: no {path!r} in {roots}; give a path relative to one of them (serve --artifact-dir DIR adds one)"
    )


def export_target(settings: ServerSettings, name: str, what: str, overwrite: bool = False) -> Path:
    """The folder `exports_dir/name` for an export (exports_dir is created; the folder is not).

    400 unless `name` is one plain folder name; 409 when it exists and `overwrite` is false."""
    if not isinstance(name, str) or not _EXPORT_NAME.match(name) or name in (".", "..") or ".." in name:
        raise ApiError(
            400,
            f"{what}: export name {name!r} must be one folder name of letters, digits, '.', '_' or '-' "
            "(no '/', no '..'); it is created under the server's exports directory",
        )
    root = Path(settings.exports_dir)
    root.mkdir(parents=True, exist_ok=True)
    root = root.resolve()
    target = root / name
    if target.is_symlink() or (target.exists() and target.resolve().parent != root):
        raise ApiError(400, f"{what}: export {name!r} is a link; remove it or choose another name")
    if target.exists() and not overwrite:
        raise ApiError(409, f"{what}: export {name!r} exists already; choose another name or pass overwrite: true")
    return target
