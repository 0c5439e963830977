"""A disk cache of analyzer results, so the server answers a repeated request without a forward pass.

A result is keyed by everything that decides it (`CacheKey`): the model's weights (its
fingerprint), the analyzer, the options as given, the texts and the versions of interpsuite and
of the analyzer's package. Equal inputs give the same digest in any dict order; changing any one
of them gives another.

On disk, under `root` (default `<interpsuite cache dir>/results`, see `default_result_cache_root`):

* `entries/<digest[:2]>/<digest>/entry.json`: {"format", "digest", "key" (the 5 fields),
  "entry" (the caller's JSON), "files" (name -> size and sha256), "created"};
* `entries/<digest[:2]>/<digest>/files/<name>`: plain copies of the figures and tables (PNG, PDF, CSV);
* `index.json`: per digest its bytes, created, last_used and a use sequence number, so the LRU
  order and the size total survive a restart; `.lock`: the `filelock` every process takes
  around reading and writing the index and the entry folders;
* `tmp/`: entries being built (`<pid>-<random>`), renamed into place whole (`os.replace`), so a
  reader never sees half an entry; leftovers of dead processes are removed on open.

Why JSON and plain files: a cache entry is read back by a server, and entries may be copied
between machines; nothing in it can run code (no pickle). Why the sha256 of every file is
checked on each hit: the files are small (figures, CSV tables) and a damaged entry must become a
miss (and be removed), never a wrong answer or an exception in the caller's request.

Why a use sequence number next to `last_used`: two uses within the clock's resolution would
otherwise tie, and the LRU order must be exact (the sequence lives in the index, so it is shared
by every process using the root).

Hit, miss and eviction counters are per `ResultCache` object (per process), not persisted; the
entry count and byte total are read from the shared index.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from filelock import FileLock

from .errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover - artifacts imports torch; a fingerprint is only read here
    from .artifacts import ModelFingerprint

__all__ = ["CacheKey", "CacheStats", "CachedResult", "ResultCache", "default_result_cache_root"]

log = logging.getLogger(__name__)

#: bumped when the layout of entry.json or index.json changes (an entry of another format is a miss)
CACHE_FORMAT = 1
ENTRY_FILE = "entry.json"
FILES_DIR = "files"
INDEX_FILE = "index.json"
LOCK_FILE = ".lock"
ENTRIES_DIR = "entries"
TMP_DIR = "tmp"
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_TMP_NAME = re.compile(r"^(?P<pid>\d+)-[0-9a-f]+$")
_NO_FILES: Mapping[str, Path] = MappingProxyType({})
_CHUNK = 1 << 20


def default_result_cache_root() -> Path:
    """`<interpsuite cache dir>/results`: $INTERPSUITE_CACHE, else $XDG_CACHE_HOME/interpsuite, else ~/.cache."""
    from .models.cache import cache_dir  # imported here: interpsuite.models imports torch

    return cache_dir() / "results"


def _canonical(value: Any, where: str) -> str:
    """Canonical JSON (sorted keys, no spaces): equal values in any dict order give equal strings."""

    def fallback(obj: Any) -> Any:
        if isinstance(obj, os.PathLike):
            return os.fspath(obj)
        if isinstance(obj, (set, frozenset)):
            return sorted(obj, key=repr)
        raise TypeError(type(obj).__name__)

    try:
        return json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=fallback, allow_nan=False
        )
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where} is not JSON ({err}): give numbers, strings, lists and mappings only") from None


@dataclass(frozen=True)
class CacheKey:
    """Everything that decides an analyzer's result; `digest()` names the cache entry."""

    model: str  # ModelFingerprint.weights_sha256 + ":" + name
    analyzer: str
    options: str  # canonical JSON of the analyzer's options as given
    texts_sha256: str  # sha256 over the texts (each text's utf-8, length-prefixed)
    version: str  # interpsuite.__version__ + "/" + the analyzer distribution's version

    @classmethod
    def of(
        cls,
        fingerprint: ModelFingerprint,
        analyzer: str,
        options: Mapping[str, Any] | None,
        texts: Sequence[str],
        version: str,
    ) -> CacheKey:
        """The key of one analyzer run; options may be None (no options given, same as {})."""
        if isinstance(texts, (str, bytes)) or not all(isinstance(t, str) for t in texts):
            raise ConfigError("cache key: texts must be a list of strings, not a single string")
        digest = hashlib.sha256()
        digest.update(len(texts).to_bytes(8, "big"))
        for text in texts:
            data = text.encode("utf-8")
            digest.update(len(data).to_bytes(8, "big"))  # the prefix keeps ["ab", "c"] apart from ["a", "bc"]
            digest.update(data)
        return cls(
            model=f"{fingerprint.weights_sha256}:{fingerprint.name}",
            analyzer=str(analyzer),
            options=_canonical(dict(options or {}), f"the options of {analyzer}"),
            texts_sha256=digest.hexdigest(),
            version=str(version),
        )

    def digest(self) -> str:
        """sha256 hex of the canonical JSON of the five fields."""
        return hashlib.sha256(_canonical(asdict(self), "cache key").encode("utf-8")).hexdigest()


@dataclass
class CachedResult:
    """One cache entry: the caller's JSON and its files (absolute paths inside the entry).

    `stored` is False only for what `put` returns when the entry alone is larger than the cache's
    `max_bytes`: nothing was written, and `files` then are the caller's own paths.
    Copy the files out promptly: another process may evict the entry at any later moment.
    """

    digest: str
    entry: dict
    files: dict[str, Path]
    created: float
    last_used: float
    bytes: int
    stored: bool = True


@dataclass
class CacheStats:
    """Entries and bytes (shared index) plus this object's hit/miss/eviction counters."""

    entries: int
    bytes: int
    max_bytes: int
    hits: int
    misses: int
    evictions: int

    def to_dict(self) -> dict:
        lookups = self.hits + self.misses
        return {**asdict(self), "hit_rate": self.hits / lookups if lookups else None}


class _CorruptEntryError(Exception):
    """An entry on disk that cannot be used (why, for the log)."""


@dataclass
class _Index:
    seq: int = 0
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)


class ResultCache:
    """Analyzer results on disk under `root`, at most `max_bytes` in all, least recently used evicted first.

    Thread-safe (one lock per object) and process-safe (a `filelock` on the root).
    """

    def __init__(self, root: str | Path, max_bytes: int = 1 << 30) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0:
            raise ConfigError(f"result cache max_bytes must be a positive integer, got {max_bytes!r}")
        self.root = Path(root).expanduser().resolve()
        self.max_bytes = max_bytes
        self._hits = self._misses = self._evictions = 0
        try:
            (self.root / ENTRIES_DIR).mkdir(parents=True, exist_ok=True)
            (self.root / TMP_DIR).mkdir(exist_ok=True)
        except OSError as err:
            raise ConfigError(
                f"result cache root {self.root} is not writable ({err}): give a writable folder"
            ) from None
        self._thread_lock = threading.Lock()
        self._file_lock = FileLock(str(self.root / LOCK_FILE), thread_local=False)
        with self._locked():
            self._remove_dead_temporaries()
            index = self._read_index()
            self._reconcile(index)
            self._evict(index, keep="")  # reopened with a smaller max_bytes: shrink now
            self._write_index(index)

    # --- public API -----------------------------------------------------------------------

    def contains(self, key: CacheKey) -> bool:
        """Whether an entry for `key` is on disk: a peek that counts no hit or miss and leaves the
        LRU order alone (a server uses it to route a request; `get` still checks the entry)."""
        return (self._folder(key.digest()) / ENTRY_FILE).is_file()

    def get(self, key: CacheKey) -> CachedResult | None:
        """The cached result for `key` (its use recorded), or None; a damaged entry is removed and is a miss."""
        digest = key.digest()
        with self._locked():
            index = self._read_index()
            folder = self._folder(digest)
            if not folder.is_dir() and not folder.is_symlink():
                if index.entries.pop(digest, None) is not None:
                    self._write_index(index)
                self._misses += 1
                return None
            try:
                record = _read_entry(folder, digest, key)
            except (_CorruptEntryError, OSError) as err:
                log.warning("result cache entry %s is damaged (%s); removed", digest, err)
                self._remove_entry(folder)
                index.entries.pop(digest, None)
                self._write_index(index)
                self._misses += 1
                return None
            meta = index.entries.get(digest)
            if meta is None:  # on disk but not indexed (index rebuilt or lost): adopt it
                meta = {"created": float(record["created"]), "bytes": _tree_bytes(folder)}
                index.entries[digest] = meta
            now = time.time()
            index.seq += 1
            meta["last_used"], meta["seq"] = now, index.seq
            self._evict(index, keep=digest)
            self._write_index(index)
            self._hits += 1
            return CachedResult(
                digest=digest,
                entry=record["entry"],
                files={name: folder / FILES_DIR / name for name in record["files"]},
                created=float(meta["created"]),
                last_used=now,
                bytes=int(meta["bytes"]),
            )

    def put(self, key: CacheKey, entry: dict, files: Mapping[str, Path] = _NO_FILES) -> CachedResult:
        """Store `entry` (JSON) and copies of `files` (name -> source path) under `key`, replacing any old entry.

        Evicts least recently used entries until the total is at most `max_bytes`. An entry larger
        than `max_bytes` on its own is not stored: the result comes back with `stored=False`.
        """
        digest = key.digest()
        if not isinstance(entry, dict):
            raise ConfigError(f"result cache: the entry must be a JSON object (dict), got {type(entry).__name__}")
        try:
            entry_copy = json.loads(json.dumps(entry, ensure_ascii=False))  # what a later get returns
        except (TypeError, ValueError) as err:
            raise ConfigError(f"result cache: the entry is not JSON ({err}); store JSON-safe values only") from None
        sources = {}
        for name, source in files.items():
            _check_name(name)
            path = Path(source)
            if not path.is_file():
                raise ConfigError(f"result cache: file {name!r} -> {path} is not a file; give existing files only")
            sources[name] = path
        now = time.time()
        temp = self.root / TMP_DIR / f"{os.getpid()}-{uuid.uuid4().hex}"
        folder = self._folder(digest)
        try:
            temp.mkdir()
            manifest = {}
            for name, path in sources.items():
                target = temp / FILES_DIR / name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
                manifest[name] = {"size": target.stat().st_size, "sha256": _file_sha256(target)}
            record = {
                "format": CACHE_FORMAT,
                "digest": digest,
                "key": asdict(key),
                "entry": entry_copy,
                "files": manifest,
                "created": now,
            }
            (temp / ENTRY_FILE).write_text(json.dumps(record, sort_keys=True, ensure_ascii=False), encoding="utf-8")
            size = _tree_bytes(temp)
            if size > self.max_bytes:
                log.warning(
                    "result %s is %d bytes, more than the cache's max_bytes %d: not cached",
                    digest,
                    size,
                    self.max_bytes,
                )
                files_out = {name: path.resolve() for name, path in sources.items()}
                return CachedResult(digest, entry_copy, files_out, now, now, size, stored=False)
            with self._locked():
                index = self._read_index()
                if folder.exists() or folder.is_symlink():
                    self._remove_entry(folder)
                folder.parent.mkdir(parents=True, exist_ok=True)
                os.replace(temp, folder)  # atomic: the entry appears whole or not at all
                index.seq += 1
                index.entries[digest] = {"created": now, "last_used": now, "seq": index.seq, "bytes": size}
                self._evict(index, keep=digest)
                self._write_index(index)
        finally:
            if temp.exists():
                shutil.rmtree(temp, ignore_errors=True)
        return CachedResult(digest, entry_copy, {name: folder / FILES_DIR / name for name in manifest}, now, now, size)

    def file(self, digest: str, name: str) -> Path:
        """The absolute path of file `name` of entry `digest`; ConfigError for a name outside the entry or missing."""
        if not isinstance(digest, str) or not _DIGEST.match(digest):
            raise ConfigError(f"result cache: {digest!r} is not an entry digest (64 lowercase hex digits)")
        _check_name(name)
        folder = self._folder(digest)
        base = folder / FILES_DIR  # the root is resolved: any symlink on the way makes resolve() leave it
        path = (base / name).resolve()
        if not path.is_relative_to(base):
            raise ConfigError(f"result cache: {name!r} is outside entry {digest[:12]}; give a name the entry lists")
        try:
            listed = json.loads((folder / ENTRY_FILE).read_text(encoding="utf-8")).get("files", {})
        except (OSError, ValueError, AttributeError):
            listed = {}
        if name not in listed or not path.is_file():
            raise ConfigError(f"result cache: entry {digest[:12]} has no file {name!r} (evicted, or never stored)")
        return path

    def stats(self) -> CacheStats:
        """Entries and bytes now in the (shared) cache, and this object's counters."""
        with self._locked():
            index = self._read_index()
        total = sum(int(meta["bytes"]) for meta in index.entries.values())
        return CacheStats(len(index.entries), total, self.max_bytes, self._hits, self._misses, self._evictions)

    def clear(self) -> int:
        """Remove every entry; the number removed (counters are kept)."""
        with self._locked():
            index = self._read_index()
            found = set(index.entries) | {folder.name for folder in self._entry_folders()}
            for digest in sorted(found):
                self._remove_entry(self._folder(digest))
            for shard in (self.root / ENTRIES_DIR).iterdir():
                with contextlib.suppress(OSError):
                    shard.rmdir()  # empty shard folders only
            self._write_index(_Index(seq=index.seq))
        return len(found)

    # --- internals ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._thread_lock, self._file_lock:
            yield

    def _folder(self, digest: str) -> Path:
        return self.root / ENTRIES_DIR / digest[:2] / digest

    def _entry_folders(self) -> Iterator[Path]:
        for shard in sorted((self.root / ENTRIES_DIR).iterdir()):
            if shard.is_dir() and not shard.is_symlink():
                for folder in sorted(shard.iterdir()):
                    if _DIGEST.match(folder.name) and folder.name[:2] == shard.name:
                        yield folder

    def _read_index(self) -> _Index:
        """The index, or an index rebuilt from the entry folders when it is missing or unreadable."""
        path = self.root / INDEX_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("format") != CACHE_FORMAT:
                raise ValueError(f"format {data.get('format')!r}")
            entries = {
                digest: {k: meta[k] for k in ("created", "last_used", "seq", "bytes")}
                for digest, meta in data["entries"].items()
                if _DIGEST.match(digest)
            }
            for meta in entries.values():
                if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in meta.values()):
                    raise ValueError("non-numeric field")
            return _Index(seq=int(data["seq"]), entries=entries)
        except FileNotFoundError:
            return self._rebuilt_index()
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            log.warning("result cache index %s is unreadable (%s); rebuilding it from the entries", path, err)
            return self._rebuilt_index()

    def _rebuilt_index(self) -> _Index:
        index = _Index()
        self._reconcile(index)
        return index

    def _reconcile(self, index: _Index) -> None:
        """Make the index name exactly the entry folders on disk (new ones ordered by mtime, oldest first)."""
        on_disk = {folder.name: folder for folder in self._entry_folders()}
        for digest in [d for d in index.entries if d not in on_disk]:
            del index.entries[digest]
        unknown = sorted((d for d in on_disk if d not in index.entries), key=lambda d: _mtime(on_disk[d]))
        for digest in unknown:
            stamp = _mtime(on_disk[digest])
            index.seq += 1
            index.entries[digest] = {
                "created": stamp,
                "last_used": stamp,
                "seq": index.seq,
                "bytes": _tree_bytes(on_disk[digest]),
            }

    def _write_index(self, index: _Index) -> None:
        data = {"format": CACHE_FORMAT, "seq": index.seq, "entries": index.entries}
        temp = self.root / f".{INDEX_FILE}.{os.getpid()}.{threading.get_ident()}.tmp"
        temp.write_text(json.dumps(data, sort_keys=True), encoding="utf-8")
        os.replace(temp, self.root / INDEX_FILE)

    def _evict(self, index: _Index, keep: str) -> None:
        """Drop least recently used entries (never `keep`) until the total is at most max_bytes."""
        total = sum(int(meta["bytes"]) for meta in index.entries.values())
        for digest in sorted(index.entries, key=lambda d: index.entries[d]["seq"]):
            if total <= self.max_bytes:
                break
            if digest == keep:
                continue
            total -= int(index.entries.pop(digest)["bytes"])
            self._remove_entry(self._folder(digest))
            self._evictions += 1

    def _remove_entry(self, folder: Path) -> None:
        """Rename into tmp/ first, then delete: a crash mid-delete leaves debris in tmp/, not half an entry."""
        if not folder.exists() and not folder.is_symlink():
            return
        trash = self.root / TMP_DIR / f"{os.getpid()}-{uuid.uuid4().hex}"
        try:
            os.replace(folder, trash)
        except OSError:
            trash = folder
        if trash.is_symlink() or trash.is_file():
            trash.unlink(missing_ok=True)
        else:
            shutil.rmtree(trash, ignore_errors=True)

    def _remove_dead_temporaries(self) -> None:
        for path in (self.root / TMP_DIR).iterdir():
            match = _TMP_NAME.match(path.name)
            if match is None or not _pid_alive(int(match["pid"])):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)


def _check_name(name: object) -> None:
    """A file name inside an entry: relative, POSIX, no '..' and no odd forms ('./a', 'a//b', 'a/')."""
    ok = isinstance(name, str) and bool(name) and "\\" not in name and "\x00" not in name
    if ok:
        pure = PurePosixPath(name)
        ok = not pure.is_absolute() and pure.as_posix() == name and all(p not in (".", "..") for p in pure.parts)
    if not ok:
        raise ConfigError(
            f"result cache: file name {name!r} must be relative and inside the entry (no '..', no leading '/')"
        )


def _read_entry(folder: Path, digest: str, key: CacheKey) -> dict[str, Any]:
    """entry.json of `folder`, checked against the key and each file's size and sha256, else _CorruptEntryError."""
    if folder.is_symlink() or folder.resolve() != folder:
        raise _CorruptEntryError("the entry folder is a link")
    try:
        record = json.loads((folder / ENTRY_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise _CorruptEntryError(f"{ENTRY_FILE} unreadable ({type(err).__name__})") from None
    if not isinstance(record, dict) or record.get("format") != CACHE_FORMAT:
        raise _CorruptEntryError(f"{ENTRY_FILE} is not format {CACHE_FORMAT}")
    if record.get("digest") != digest or record.get("key") != asdict(key):
        raise _CorruptEntryError(f"{ENTRY_FILE} names another key")
    if not isinstance(record.get("entry"), dict) or not isinstance(record.get("created"), (int, float)):
        raise _CorruptEntryError(f"{ENTRY_FILE} is incomplete")
    listed = record.get("files")
    if not isinstance(listed, dict):
        raise _CorruptEntryError("file list malformed")
    base = folder / FILES_DIR
    for name, expected in listed.items():
        try:
            _check_name(name)
        except ConfigError:
            raise _CorruptEntryError(f"file name {name!r} outside the entry") from None
        path = folder / FILES_DIR / name
        if path.is_symlink() or not path.resolve().is_relative_to(base):  # a link on the way leaves base
            raise _CorruptEntryError(f"file {name!r} points outside the entry")
        if not isinstance(expected, dict) or not path.is_file():
            raise _CorruptEntryError(f"file {name!r} missing")
        if path.stat().st_size != expected.get("size") or _file_sha256(path) != expected.get("sha256"):
            raise _CorruptEntryError(f"file {name!r} differs from its size or sha256")
    return record


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _tree_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def _mtime(folder: Path) -> float:
    try:
        return (folder / ENTRY_FILE).stat().st_mtime
    except OSError:
        return folder.stat().st_mtime


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
