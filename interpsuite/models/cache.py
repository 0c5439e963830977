"""A cache of built artefacts (converted model weights) that notices damage and heals itself.

An entry is a folder `<root>/<name>-<key>` where `key` is the start of the sha256 of the
*content* of the source file: a copy of the same file with another mtime reuses the entry,
and a changed source gets a new one. Each entry carries a manifest (`interpsuite-cache.json`)
with the size and sha256 of every file it holds, written when the entry is built.

Why a cheap check on load and a full one on demand: re-hashing 517 MB of weights on every
load would cost about as much as a quarter of the load itself (numbers in docs/caching.md),
while sizes plus hashes of small blocks sampled every `SAMPLE_STRIDE` bytes catch truncation,
missing files and any zeroed or overwritten region of `GUARANTEED_REGION` bytes or more (the
stride is chosen so that such a region always covers whole sampled blocks). `verify(full=True)`
(`interpsuite cache verify`) re-hashes everything.

Why a lock: two processes converting into an empty cache must not both write 517 MB, nor
leave half-written folders. Builders take a per-entry `filelock` (released by the OS when a
process dies), build into `<entry>.partial-<pid>`, write the manifest and rename the folder
into place atomically; whoever holds the lock removes leftovers of crashed builders first.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from filelock import FileLock, Timeout

from ..errors import ConfigError

log = logging.getLogger(__name__)

MANIFEST = "interpsuite-cache.json"
MANIFEST_FORMAT = 1
#: hex digits of the source's sha256 kept in an entry's folder name
KEY_LENGTH = 16
#: files up to this size are fully hashed even by the cheap check (configs, tokenizers)
FULL_HASH_BELOW = 4 * 1024 * 1024
#: bytes hashed at each sampled offset of a larger file
SAMPLE_BLOCK = 4096
#: distance between sampled offsets; with SAMPLE_STRIDE + SAMPLE_BLOCK - 1 <= GUARANTEED_REGION,
#: any region of GUARANTEED_REGION bytes wholly contains at least one sampled block (here 3)
SAMPLE_STRIDE = 256 * 1024
GUARANTEED_REGION = 1024 * 1024
_CHUNK = 1024 * 1024
_LOCKS = ".locks"
_TEMP = re.compile(r"^(?P<entry>.+)\.(?P<kind>partial|trash)-(?P<pid>\d+)$")
_KEYED = re.compile(rf"^(?P<name>.+)-(?P<key>[0-9a-f]{{{KEY_LENGTH}}})$")
_LEGACY = re.compile(r"^(?P<name>.+)-[0-9a-f]{8,64}$")


class CacheEntryNotFoundError(ConfigError):
    """A cache entry name that is not in the cache (`interpsuite cache list` shows the names)."""


class CacheRebuildWarning(UserWarning):
    """An entry was corrupt or incomplete and is being rebuilt from its source."""


def cache_dir() -> Path:
    """Where interpsuite keeps what it builds: $INTERPSUITE_CACHE, else $XDG_CACHE_HOME/interpsuite, else ~/.cache."""
    root = os.environ.get("INTERPSUITE_CACHE")
    if root:
        return Path(root)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "interpsuite"


def file_sha256(path: Path) -> str:
    """sha256 of a whole file, read in 1 MiB chunks (memory stays flat on 500 MB files)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sample_offsets(size: int, block: int = SAMPLE_BLOCK, stride: int = SAMPLE_STRIDE) -> list[int]:
    """Start of every sampled block: one every `stride` bytes, plus one ending at the file's end.

    Coverage argument: for a region [x, x + R) inside the file, the first offset >= x is at most
    x + stride - 1 and its block ends by x + stride - 1 + block <= x + R when
    stride + block - 1 <= R; if that offset is past size - block, the tail block (starting at
    size - block >= x, ending at size <= x + R) lies inside the region instead.
    """
    if size <= block:
        return [0]
    offsets = list(range(0, size - block + 1, stride))
    if offsets[-1] != size - block:
        offsets.append(size - block)
    return offsets


def sample_sha256(path: Path, block: int = SAMPLE_BLOCK, stride: int = SAMPLE_STRIDE) -> str:
    """sha256 over the sampled blocks (and the size), reading about block/stride of the file."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        for offset in sample_offsets(size, block, stride):
            f.seek(offset)
            digest.update(f.read(block))
    return digest.hexdigest()


@dataclass
class CacheEntry:
    """One folder of the cache, with what its manifest says (None when it has no readable one)."""

    path: Path
    name: str
    key: str | None
    manifest: dict[str, Any] | None
    #: a folder from before manifests (old key naming): never used by `ensure`, removed by `clear`
    legacy: bool = False
    #: why the manifest could not be used, when it could not
    manifest_problem: str | None = None

    @property
    def dir_name(self) -> str:
        return self.path.name

    @property
    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in _files(self.path))

    @property
    def source(self) -> str:
        if not self.manifest:
            return "-"
        src = self.manifest.get("source", {})
        return f"{src.get('name', '?')} ({str(src.get('sha256', ''))[:12]})"

    @property
    def created(self) -> str:
        return str(self.manifest.get("created", "-")) if self.manifest else "-"


@dataclass
class VerifyReport:
    """Outcome of checking one entry: `problems` is empty when every check passed."""

    entry: CacheEntry
    full: bool
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and not self.entry.legacy

    @property
    def status(self) -> str:
        if self.entry.legacy:
            return "legacy (no manifest; `interpsuite cache clear` removes it)"
        if self.problems:
            return "CORRUPT: " + "; ".join(self.problems)
        return "ok (full sha256)" if self.full else "ok (sizes + sampled blocks)"


class ModelCache:
    """Entries keyed by the content of their source, verified on load, rebuilt when damaged."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    # --- building ------------------------------------------------------------------------

    def path_for(self, name: str, source: Path) -> Path:
        """The folder the entry for `source` lives (or will live) in; hashes the source."""
        return self.root / f"{name}-{_source_sha256(Path(source))[:KEY_LENGTH]}"

    def ensure(self, name: str, source: Path, build: Callable[[Path], None]) -> Path:
        """The verified entry for `source`, built by `build(folder)` when missing or damaged.

        `build` writes into an empty temporary folder; it is checksummed and renamed into place
        only when `build` returns, so readers never see a half-built entry. A damaged entry is
        rebuilt with one `CacheRebuildWarning` naming it and what was wrong.
        """
        if not _safe_name(name):
            raise ConfigError(f"cache entry name {name!r} must be a plain folder name: use letters, digits, '-', '_'")
        source = Path(source)
        source_hash = _source_sha256(source)
        target = self.root / f"{name}-{source_hash[:KEY_LENGTH]}"
        if target.is_dir() and not self._problems(target, full=False, key=source_hash):
            return target  # the common case: no lock, a few milliseconds of checks
        self.root.mkdir(parents=True, exist_ok=True)
        with self._lock(target.name, waiting=f"building {target.name}"):
            self._remove_temporaries(target.name)
            if target.is_dir():
                problems = self._problems(target, full=False, key=source_hash)
                if not problems:
                    return target  # another process built it while we waited for the lock
                warnings.warn(
                    f"model cache entry {target} is damaged ({'; '.join(problems)}); rebuilding it from {source.name}",
                    CacheRebuildWarning,
                    stacklevel=2,
                )
                _remove_tree(target)
            self._build(name, source, source_hash, target, build)
        return target

    def _build(self, name: str, source: Path, source_hash: str, target: Path, build: Callable[[Path], None]) -> None:
        partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
        partial.mkdir(parents=True)
        try:
            build(partial)
            manifest = _manifest(name, source, source_hash, partial)
            tmp = partial / (MANIFEST + ".tmp")
            tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True))
            _fsync_files(partial)
            tmp.rename(partial / MANIFEST)
            partial.rename(target)  # atomic: the entry appears complete or not at all
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise

    # --- inspecting ----------------------------------------------------------------------

    def entries(self) -> list[CacheEntry]:
        """Every entry folder (legacy ones included), sorted by name; temporaries are skipped."""
        if not self.root.is_dir():
            return []
        found = []
        for path in sorted(self.root.iterdir()):
            if path.is_dir() and not path.name.startswith(".") and not _TEMP.match(path.name):
                found.append(_read_entry(path))
        return found

    def verify(self, full: bool = True, name: str | None = None) -> list[VerifyReport]:
        """Check every entry (or those matching `name`): full sha256 of each file, or the cheap check."""
        return [
            VerifyReport(entry, full, [] if entry.legacy else self._problems(entry.path, full=full))
            for entry in self._select(name)
        ]

    def _problems(self, path: Path, full: bool, key: str | None = None) -> list[str]:
        entry = _read_entry(path)
        if entry.manifest is None:
            return [entry.manifest_problem or "manifest missing"]
        if key is not None and entry.manifest["source"]["sha256"] != key:
            return ["manifest names another source"]
        sample = entry.manifest.get("sample", {})
        block, stride = int(sample.get("block", SAMPLE_BLOCK)), int(sample.get("stride", SAMPLE_STRIDE))
        problems = []
        for rel, expected in sorted(entry.manifest["files"].items()):
            try:
                problem = _file_problem(path / rel, expected, full, block, stride)
            except OSError as err:  # removed or unreadable while being checked
                problem = f"unreadable ({type(err).__name__})"
            if problem:
                problems.append(f"{rel} {problem}")
        return problems

    # --- removing ------------------------------------------------------------------------

    def clear(self, name: str | None = None) -> list[Path]:
        """Remove every entry (or those matching `name`, a folder or model name) and stale temporaries."""
        removed = []
        for entry in self._select(name):
            with self._lock(entry.dir_name, waiting=f"removing {entry.dir_name}"):
                _remove_tree(entry.path)
            removed.append(entry.path)
        if name is None and self.root.is_dir():
            for path in sorted(self.root.iterdir()):
                match = _TEMP.match(path.name)
                if match and path.exists():
                    removed += self._remove_temporaries(match["entry"], wait=False)
        return removed

    def _remove_temporaries(self, entry_name: str, wait: bool = True) -> list[Path]:
        """Remove leftovers of builders that died; safe only while holding the entry's lock.

        With wait=False the lock is tried once: a temporary whose entry is locked belongs to a
        live builder and is kept."""
        if not wait:
            lock = self._file_lock(entry_name)
            try:
                lock.acquire(timeout=0)
            except Timeout:
                return []
            try:
                return self._remove_temporaries(entry_name)
            finally:
                lock.release()
        removed = []
        for path in sorted(self.root.glob(f"{_glob_escape(entry_name)}.*-*")):
            match = _TEMP.match(path.name)
            if match and match["entry"] == entry_name:
                log.info("removing %s, left by a builder that stopped (pid %s)", path, match["pid"])
                _remove_tree(path)
                removed.append(path)
        return removed

    def _select(self, name: str | None) -> list[CacheEntry]:
        entries = self.entries()
        if name is None:
            return entries
        chosen = [e for e in entries if name in (e.dir_name, e.name)]
        if not chosen:
            known = ", ".join(e.dir_name for e in entries) or "none"
            raise CacheEntryNotFoundError(
                f"no cache entry named {name!r} in {self.root} (entries: {known}); see `interpsuite cache list`"
            )
        return chosen

    def _file_lock(self, entry_name: str) -> FileLock:
        locks = self.root / _LOCKS
        locks.mkdir(parents=True, exist_ok=True)
        return FileLock(locks / f"{entry_name}.lock")

    def _lock(self, entry_name: str, waiting: str) -> _Held:
        return _Held(self._file_lock(entry_name), waiting)


class _Held:
    """Context manager over a FileLock that says (once, at INFO) when it has to wait."""

    def __init__(self, lock: FileLock, waiting: str) -> None:
        self.lock, self.waiting = lock, waiting

    def __enter__(self) -> _Held:
        try:
            self.lock.acquire(timeout=0)
        except Timeout:
            log.info("waiting for another process %s (lock %s)", self.waiting, self.lock.lock_file)
            self.lock.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


# --- helpers ---------------------------------------------------------------------------------

_SOURCE_HASHES: dict[tuple[str, int, int, int], str] = {}


def _source_sha256(source: Path) -> str:
    """Content hash of a source file, remembered per process while its stat is unchanged."""
    try:
        stat = source.stat()
    except FileNotFoundError:
        raise ConfigError(f"cache source {source} does not exist: reinstall the package that provides it") from None
    memo = (str(source.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    if memo not in _SOURCE_HASHES:
        _SOURCE_HASHES[memo] = file_sha256(source)
    return _SOURCE_HASHES[memo]


def _file_problem(file: Path, expected: dict[str, Any], full: bool, block: int, stride: int) -> str | None:
    """What is wrong with one file of an entry, or None: size first, then the full or sampled hash."""
    if not file.is_file():
        return "missing"
    size = file.stat().st_size
    if size != expected["size"]:
        return f"has {size} bytes, expected {expected['size']} (truncated or replaced)"
    if full or "sample_sha256" not in expected:
        return None if file_sha256(file) == expected["sha256"] else "content differs from its sha256"
    if sample_sha256(file, block, stride) != expected["sample_sha256"]:
        return "content differs in sampled blocks"
    return None


def _files(folder: Path) -> Iterator[Path]:
    return (p for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST)


def _manifest(name: str, source: Path, source_hash: str, folder: Path) -> dict[str, Any]:
    from .. import __version__

    files = {}
    for path in _files(folder):
        size = path.stat().st_size
        record: dict[str, Any] = {"size": size, "sha256": file_sha256(path)}
        if size > FULL_HASH_BELOW:
            record["sample_sha256"] = sample_sha256(path)
        files[path.relative_to(folder).as_posix()] = record
    return {
        "format": MANIFEST_FORMAT,
        "name": name,
        "source": {
            "name": source.name,
            "path": str(source.resolve()),
            "size": source.stat().st_size,
            "sha256": source_hash,
        },
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "interpsuite_version": __version__,
        "sample": {"block": SAMPLE_BLOCK, "stride": SAMPLE_STRIDE, "full_hash_below": FULL_HASH_BELOW},
        "files": files,
    }


def _read_entry(path: Path) -> CacheEntry:
    keyed = _KEYED.match(path.name)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        if keyed is None:  # old naming (sha1 of size:mtime), no manifest: from before this module
            legacy = _LEGACY.match(path.name)
            return CacheEntry(path, legacy["name"] if legacy else path.name, None, None, legacy=True)
        return CacheEntry(path, keyed["name"], keyed["key"], None, manifest_problem="manifest missing")
    problem = None
    try:
        manifest = json.loads(manifest_path.read_text())
        if not isinstance(manifest, dict):
            raise ValueError("not an object")
        if manifest.get("format") != MANIFEST_FORMAT:
            problem = f"manifest format {manifest.get('format')!r} is not {MANIFEST_FORMAT}"
        elif not isinstance(manifest.get("source"), dict) or not isinstance(manifest["source"].get("sha256"), str):
            problem = "manifest has no source sha256"
        elif not isinstance(manifest.get("files"), dict) or not all(
            isinstance(v, dict) and isinstance(v.get("size"), int) and isinstance(v.get("sha256"), str)
            for v in manifest["files"].values()
        ):
            problem = "manifest file list is malformed"
        elif not all(_inside(path, rel) for rel in manifest["files"]):
            problem = "manifest names files outside the entry"
        elif keyed is not None and not manifest["source"]["sha256"].startswith(keyed["key"]):
            problem = "manifest source sha256 does not match the folder's key"
    except (OSError, ValueError) as err:
        problem = f"manifest unreadable ({type(err).__name__})"
    name = keyed["name"] if keyed else path.name
    key = keyed["key"] if keyed else None
    if problem:
        return CacheEntry(path, name, key, None, manifest_problem=problem)
    return CacheEntry(path, str(manifest.get("name", name)), key, manifest)


def _inside(folder: Path, rel: object) -> bool:
    """A manifest may only name files inside its own entry (a crafted one cannot point elsewhere)."""
    if not isinstance(rel, str) or not rel or rel.startswith("/") or "\\" in rel:
        return False
    return ".." not in Path(rel).parts and rel != MANIFEST


def _safe_name(name: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name)) and ".partial-" not in name


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


def _remove_tree(path: Path) -> None:
    """Rename first, then delete: a crash mid-delete leaves a `.trash-<pid>` folder, not a half entry."""
    if not path.exists():
        return
    trash = path
    if not _TEMP.match(path.name):
        trash = path.with_name(f"{path.name}.trash-{os.getpid()}")
        if trash.exists():
            shutil.rmtree(trash, ignore_errors=True)
        path.rename(trash)
    shutil.rmtree(trash, ignore_errors=True)


def _fsync_files(folder: Path) -> None:
    """Flush the built files before the rename publishes them (a power cut then leaves no torn entry)."""
    for path in folder.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


# --- `interpsuite cache list | verify | clear [NAME]` -------------------------------------------


def cache_command(
    action: str, name: str | None = None, full: bool = True, *, root: Path | None = None, out: TextIO | None = None
) -> int:
    """Run one `interpsuite cache` action on `cache_dir()/models`; the exit code for the CLI.

    0: done, every checked entry fine; 1: `verify` found a corrupt entry; 2: bad input
    (unknown action or entry name), with a one-line message on stderr.
    """
    out = out or sys.stdout
    cache = ModelCache(root if root is not None else cache_dir() / "models")
    try:
        if action == "list":
            _print_table(cache.verify(full=False, name=name), cache.root, out)
            return 0
        if action == "verify":
            reports = cache.verify(full=full, name=name)
            _print_table(reports, cache.root, out)
            return 1 if any(r.problems for r in reports) else 0
        if action == "clear":
            removed = cache.clear(name)
            for path in removed:
                print(f"removed {path}", file=out)
            if not removed:
                print(f"nothing to remove in {cache.root}", file=out)
            return 0
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"error: unknown cache action {action!r}: use one of list, verify, clear", file=sys.stderr)
    return 2


def _print_table(reports: list[VerifyReport], root: Path, out: TextIO) -> None:
    if not reports:
        print(f"no cache entries in {root}", file=out)
        return
    rows = [("name", "size MiB", "source", "created", "status")]
    for r in reports:
        e = r.entry
        rows.append((e.dir_name, f"{e.size_bytes / 2**20:.1f}", e.source, e.created, r.status))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths, strict=True)) + "  " + row[4], file=out)
