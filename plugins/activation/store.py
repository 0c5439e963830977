"""activation_store: record activations at hook points to disk in shards, and read them back.

A store is a folder:

    manifest.json               what the store holds; rewritten atomically after every shard
    shard_00000.safetensors     the first `shard_tokens` rows
    shard_00001.safetensors     ...

One row is one real token (never padding) of one text; rows are in (text id, position)
order, all positions of every text. Each shard holds, for its rows:

    act/<hook point>      [rows, units]   float32 | float16 | bfloat16 (per-head attn.z flattened)
    index/text_id         [rows] int64    the text's position in the input list
    index/position        [rows] int64    the token's position in its (tokenized) text
    index/token_id        [rows] int64
    index/token_bytes     [n] uint8       the readable token strings, UTF-8, concatenated
    index/token_offsets   [rows + 1]      string i is token_bytes[offsets[i]:offsets[i + 1]]

Only safetensors and JSON are ever read: nothing is unpickled.

Writing (`StoreWriter`) streams batches into one preallocated shard buffer and flushes it
whenever it holds `shard_tokens` rows, so memory is bounded by the shard size whatever the
dataset size. A shard is written to `*.tmp`, renamed, and only then listed in the manifest
(with the cursor: the (text id, position) of the next row). Re-running on the same folder
continues at the cursor: batches are cut at the same multiples of the batch size as before,
the rows already stored are skipped, so the resumed store equals an uninterrupted one row
for row. A shard file that the manifest does not list (an interrupted write) is discarded.
The manifest also fingerprints the texts stored so far; resuming over other texts, another
model, other hook points, dtype, shard size or max_length is a ConfigError.

Reading (`ActivationStore`) streams shard by shard: `iter_shards`, `iter_batches` (for probes
and SAE training; optional shuffling), `index()`, `rows_for_texts`, and
`top_tokens(hook, unit, k)`: the top-k activating tokens of a unit with their context
windows, straight from the store, one column of one shard in memory at a time.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from interpsuite.analyzer import Analyzer, RunContext, check_hook_points, check_layers
from interpsuite.errors import ConfigError, HookError
from interpsuite.hooks import parse_hook_name
from interpsuite.models import HookedModel, ModelInfo, TokenBatch
from interpsuite.results import Result

FORMAT = "interpsuite.activation_store"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ACT, IDX = "act/", "index/"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
#: per-layer sites with one vector per token (attn.pattern is per query x key: not storable per row)
BLOCK_SITES = (
    "resid_pre",
    "attn.z",
    "attn.out",
    "resid_mid",
    "mlp.pre",
    "mlp.up",
    "mlp.post",
    "mlp.out",
    "resid_post",
)
MODEL_SITES = ("embed", "final")
#: config entries that must match to resume a store
COMPAT_KEYS = ("hooks", "dtype", "shard_tokens", "max_length")
_SHARD_FILE = re.compile(r"shard_\d{5,}\.safetensors")
_OURS = re.compile(r"^(manifest\.json|shard_\d{5,}\.safetensors)(\.tmp)?$")
_SHARD = re.compile(r"^shard_\d{5,}\.safetensors(\.tmp)?$")
_KEY_STRIDE = 1 << 24  # (text id, position) -> one sortable int64


# --- hook points ----------------------------------------------------------------------------


def resolve_hooks(
    info: ModelInfo, hook_points: Sequence[str], layers: Sequence[int] | None, what: str = "activation_store"
) -> list[str]:
    """Full hook names: a site (`resid_post`) is taken at every layer of `layers` (None: the
    middle layer); `blocks.L.site`, `embed` and `final` are taken as they are."""
    if not hook_points:
        raise ConfigError(f"{what}.hook_points is empty; e.g. [resid_post, mlp.post] or [blocks.3.resid_post]")
    layer_list = check_layers(info, list(layers) if layers is not None else [info.n_layers // 2], f"{what}.layers")
    names: list[str] = []
    for point in hook_points:
        layer, site = parse_hook_name(str(point))
        if layer is not None and site in BLOCK_SITES:
            check_layers(info, [layer], f"{what}.hook_points ({point})")
            found = [f"blocks.{layer}.{site}"]
        elif layer is None and site in MODEL_SITES:
            found = [site]
        elif layer is None and site in BLOCK_SITES:
            found = [f"blocks.{n}.{site}" for n in layer_list]
        else:
            raise ConfigError(
                f"{what}.hook_points: {point!r} cannot be stored; use a site {list(BLOCK_SITES)} (taken at "
                f"`layers`), a full name like blocks.0.resid_post, or one of {list(MODEL_SITES)}"
            )
        names += [name for name in found if name not in names]
    return check_hook_points(info, names, f"{what}.hook_points")


def hook_units(info: ModelInfo, hook: str) -> int:
    """Row width of a hook point in the store (attn.z: heads x d_head)."""
    site = parse_hook_name(hook)[1]
    if site in ("mlp.pre", "mlp.up", "mlp.post"):
        return info.d_mlp
    if site == "attn.z":
        return info.n_heads * info.d_head
    return info.d_model


def _causal_kwargs(model: HookedModel) -> dict:
    return {"logits_to_keep": 1} if model.info.is_causal else {}


def capture_rows(model: HookedModel, batch: TokenBatch, hooks: Sequence[str]) -> tuple[dict, dict]:
    """One forward pass -> ({hook: [rows, units]} on CPU, index) for the batch's real tokens,
    in (text, position) order. Index: text_id, position, token_id (int64 tensors), tokens."""
    cache = model.forward(batch, capture=hooks, **_causal_kwargs(model)).cache
    mask = batch.counted_mask.bool()  # a window of a long document stores only its own tokens
    where = mask.nonzero().cpu()
    n = where.shape[0]
    acts = {hook: cache[hook][mask].reshape(n, -1).cpu() for hook in hooks}
    rows, cols = where[:, 0], where[:, 1]
    index = {
        "text_id": torch.as_tensor(batch.text_ids, dtype=torch.int64)[rows],
        "position": cols.to(torch.int64),
        "token_id": batch.input_ids[mask].cpu().to(torch.int64),
        "tokens": [batch.tokens[r][c] for r, c in where.tolist()],
    }
    return acts, index


# --- manifest -------------------------------------------------------------------------------


def write_json_atomic(path: Path, payload: dict) -> None:
    """Write to a temporary file, flush it to disk, then rename over `path`."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def read_manifest(path: str | Path) -> dict:
    file = Path(path) / MANIFEST
    if not file.is_file():
        raise ConfigError(f"{path} is not an activation store (no {MANIFEST}); write one with activation_store")
    manifest = json.loads(file.read_text(encoding="utf-8"))
    if manifest.get("format") != FORMAT or manifest.get("version") != FORMAT_VERSION:
        raise ConfigError(
            f"{file}: format {manifest.get('format')!r} version {manifest.get('version')!r}; "
            f"this interpsuite reads {FORMAT!r} version {FORMAT_VERSION}"
        )
    # the store deletes and reads the files its manifest names: only its own shard file names,
    # inside the store, are allowed (a crafted manifest must not reach ../ or absolute paths)
    for shard in manifest.get("shards", []):
        name = shard.get("file") if isinstance(shard, dict) else None
        if not isinstance(name, str) or not _SHARD_FILE.fullmatch(name):
            raise ConfigError(
                f"{file}: shard entry {name!r} is not a shard file name of this store (shard_NNNNN.safetensors); "
                "the manifest was edited or is not interpsuite's: remove the store directory to start over"
            )
    return manifest


def compatibility_errors(manifest: dict, model: dict, config: dict) -> list[str]:
    """How a store differs from a requested model and config (only the keys given are compared)."""
    errors = []
    stored_model = manifest.get("model", {})
    for key, value in model.items():
        if stored_model.get(key) != value:
            errors.append(f"model.{key} is {stored_model.get(key)!r} in the store, {value!r} now")
    stored = manifest.get("config", {})
    for key in COMPAT_KEYS:
        if key in config and stored.get(key) != config[key]:
            errors.append(f"{key} is {stored.get(key)!r} in the store, {config[key]!r} now")
    return errors


def _texts_digest(hasher, texts: Sequence[str], start: int, stop: int) -> None:
    for text in texts[start:stop]:
        data = text.encode("utf-8", "surrogatepass")
        hasher.update(len(data).to_bytes(8, "little"))
        hasher.update(data)


def texts_fingerprint(texts: Sequence[str], count: int) -> str:
    """sha256 of the first `count` texts (length-prefixed UTF-8)."""
    hasher = hashlib.sha256()
    _texts_digest(hasher, texts, 0, count)
    return hasher.hexdigest()


def _encode_tokens(tokens: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    encoded = [token.encode("utf-8", "surrogatepass") for token in tokens]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    data = np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()
    return torch.from_numpy(data), torch.from_numpy(offsets)


def _decode_tokens(data: torch.Tensor, offsets: torch.Tensor) -> list[str]:
    raw = data.numpy().tobytes()
    ends = offsets.tolist()
    return [raw[a:b].decode("utf-8", "surrogatepass") for a, b in zip(ends[:-1], ends[1:], strict=True)]


# --- writing --------------------------------------------------------------------------------


@dataclass
class WriteStats:
    path: Path
    rows_written: int
    shards_written: int
    #: (text id, position) where this run started; (0, 0) for a new store
    started_at: tuple[int, int]
    seconds: float


class _ShardBuffer:
    """One shard's rows, preallocated (untouched pages cost no memory) and reused."""

    def __init__(self, units: dict[str, int], capacity: int, dtype: torch.dtype):
        self.capacity = capacity
        self.acts = {hook: torch.empty(capacity, n, dtype=dtype) for hook, n in units.items()}
        self.index = {key: torch.empty(capacity, dtype=torch.int64) for key in ("text_id", "position", "token_id")}
        self.tokens: list[str] = []
        self.fill = 0

    def add(self, acts: dict, index: dict, lo: int, hi: int) -> None:
        a, b = self.fill, self.fill + hi - lo
        for hook, buffer in self.acts.items():
            buffer[a:b] = acts[hook][lo:hi]
        for key, buffer in self.index.items():
            buffer[a:b] = index[key][lo:hi]
        self.tokens += index["tokens"][lo:hi]
        self.fill = b

    def tensors(self) -> dict[str, torch.Tensor]:
        n = self.fill
        data, offsets = _encode_tokens(self.tokens)
        out = {ACT + hook: buffer[:n] for hook, buffer in self.acts.items()}
        out.update({IDX + key: buffer[:n] for key, buffer in self.index.items()})
        out[IDX + "token_bytes"], out[IDX + "token_offsets"] = data, offsets
        return out

    def clear(self) -> None:
        self.fill = 0
        self.tokens = []


class StoreWriter:
    """Record `hooks` of `model` over texts into the store at `path` (see the module doc).

    `on_shard(entry)` is called after each shard is committed (tests use it to interrupt).
    With `resume=False` an existing store in `path` is deleted first.
    """

    def __init__(
        self,
        path: str | Path,
        model: HookedModel,
        hooks: Sequence[str],
        *,
        shard_tokens: int = 65536,
        dtype: str = "float32",
        batch_size: int = 8,
        max_length: int | None = 128,
        resume: bool = True,
        on_shard: Callable[[dict], None] | None = None,
    ):
        if shard_tokens < 1:
            raise ConfigError(f"activation_store.shard_tokens must be >= 1, got {shard_tokens}")
        if dtype not in DTYPES:
            raise ConfigError(f"activation_store.dtype {dtype!r} unknown; choose from {list(DTYPES)}")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if not hooks:
            raise ConfigError("activation_store: no hook points to record")
        missing = [hook for hook in hooks if hook not in model.hook_names()]
        if missing:
            raise HookError(f"hook points {missing} do not exist on {model.info.name}")
        bad = [hook for hook in hooks if parse_hook_name(hook)[1] not in (*BLOCK_SITES, *MODEL_SITES)]
        if bad:
            raise ConfigError(f"hook points {bad} have no one-vector-per-token shape; they cannot be stored")
        self.path = Path(path)
        self.model = model
        self.hooks = list(hooks)
        self.units = {hook: hook_units(model.info, hook) for hook in self.hooks}
        self.config = {
            "hooks": self.hooks,
            "dtype": dtype,
            "shard_tokens": int(shard_tokens),
            "max_length": max_length,
        }
        self.dtype = DTYPES[dtype]
        self.batch_size = batch_size
        self.max_length = max_length
        self.resume = resume
        self.on_shard = on_shard

    # --- the store folder --------------------------------------------------------------
    def _open(self, texts: Sequence[str]) -> dict:
        """Load (and check) or create the manifest; drop shard files it does not list."""
        self.path.mkdir(parents=True, exist_ok=True)
        manifest = None
        if (self.path / MANIFEST).is_file():
            manifest = read_manifest(self.path)
            if not self.resume:
                for shard in manifest["shards"]:
                    (self.path / shard["file"]).unlink(missing_ok=True)
                manifest = None
        else:
            foreign = sorted(p.name for p in self.path.iterdir() if not _OURS.match(p.name))
            if foreign:
                raise ConfigError(
                    f"{self.path} holds files that are not an activation store ({', '.join(foreign[:3])}...); "
                    "give an empty or new folder as activation_store.path"
                )
        if manifest is not None:
            errors = compatibility_errors(manifest, self.model.info.to_dict(), self.config)
            if errors:
                raise ConfigError(
                    f"the activation store at {self.path} was written with another setup: {'; '.join(errors)}. "
                    "Use another path, or resume=false to overwrite it"
                )
            seen = manifest["inputs"]["texts_seen"]
            if seen > len(texts) or texts_fingerprint(texts, seen) != manifest["inputs"]["fingerprint"]:
                raise ConfigError(
                    f"the activation store at {self.path} holds rows of {seen} texts that differ from the first "
                    f"{seen} of these {len(texts)} inputs; use another path, or resume=false to overwrite it"
                )
        listed = {shard["file"] for shard in manifest["shards"]} if manifest else set()
        for stray in self.path.iterdir():
            if _SHARD.match(stray.name) and stray.name not in listed:
                stray.unlink()  # an interrupted write: never committed to the manifest
        if manifest is None:
            manifest = {
                "format": FORMAT,
                "version": FORMAT_VERSION,
                "model": self.model.info.to_dict(),
                "config": self.config,
                "units": self.units,
                "shards": [],
                "rows": 0,
                "cursor": [0, 0],
                "texts_completed": 0,
                "inputs": {"texts_seen": 0, "fingerprint": texts_fingerprint(texts, 0)},
                "sessions": [],
                "created": _now(),
                "updated": _now(),
            }
            write_json_atomic(self.path / MANIFEST, manifest)
        return manifest

    def write(self, texts: Sequence[str], progress: Callable[..., Iterable] | None = None) -> WriteStats:
        """Record every row after the store's cursor; returns what this call wrote."""
        started = time.perf_counter()
        manifest = self._open(texts)
        cursor = tuple(manifest["cursor"])
        self._manifest, self._texts = manifest, texts
        self._hasher = hashlib.sha256()
        self._hashed = 0
        self._session = {"start": list(cursor), "n_texts": len(texts), "batch_size": self.batch_size}
        self._rows_written = self._shards_written = 0
        self._buffer = _ShardBuffer(self.units, self.config["shard_tokens"], self.dtype)
        bs = self.batch_size
        starts = range(cursor[0] // bs * bs if cursor[0] < len(texts) else len(texts), len(texts), bs)
        for start in progress(starts, "activation_store", len(starts)) if progress else starts:
            chunk = texts[start : start + bs]
            batch = self.model.tokenize(chunk, self.max_length, range(start, start + len(chunk)))
            acts, index = capture_rows(self.model, batch, self.hooks)
            for hook, x in acts.items():
                if x.shape[1] != self.units[hook]:
                    raise HookError(f"{hook} has {x.shape[1]} units per token, expected {self.units[hook]}")
            acts = {hook: x.to(self.dtype) for hook, x in acts.items()}
            before = (index["text_id"] < cursor[0]) | (
                (index["text_id"] == cursor[0]) & (index["position"] < cursor[1])
            )
            self._append(acts, index, int(before.sum()), (start + len(chunk), 0))
        end = (len(texts), 0)
        if self._buffer.fill:
            self._commit(end)
        elif tuple(manifest["cursor"]) < end:
            self._commit(end, shard=False)
        return WriteStats(self.path, self._rows_written, self._shards_written, cursor, time.perf_counter() - started)

    def _append(self, acts: dict, index: dict, lo: int, end_key: tuple[int, int]) -> None:
        n = len(index["tokens"])
        buffer = self._buffer
        while lo < n:
            hi = min(n, lo + buffer.capacity - buffer.fill)
            buffer.add(acts, index, lo, hi)
            lo = hi
            if buffer.fill == buffer.capacity:
                nxt = (int(index["text_id"][lo]), int(index["position"][lo])) if lo < n else end_key
                self._commit(nxt)

    def _commit(self, cursor: tuple[int, int], shard: bool = True) -> None:
        """Write the buffer as the next shard (tmp + rename), then the manifest."""
        manifest, buffer = self._manifest, self._buffer
        if shard:
            number = len(manifest["shards"])
            name = f"shard_{number:05d}.safetensors"
            tmp = self.path / (name + ".tmp")
            save_file(buffer.tensors(), tmp, metadata={"format": FORMAT, "version": str(FORMAT_VERSION)})
            _fsync(tmp)
            os.replace(tmp, self.path / name)
            text_ids = buffer.index["text_id"]
            entry = {
                "file": name,
                "rows": buffer.fill,
                "bytes": (self.path / name).stat().st_size,
                "first_text": int(text_ids[0]),
                "last_text": int(text_ids[buffer.fill - 1]),
                "start": [int(text_ids[0]), int(buffer.index["position"][0])],
            }
            manifest["shards"].append(entry)
            manifest["rows"] += buffer.fill
            self._rows_written += buffer.fill
            self._shards_written += 1
            if not manifest["sessions"] or manifest["sessions"][-1] is not self._session:
                manifest["sessions"].append(self._session)
            buffer.clear()
        seen = cursor[0] + (1 if cursor[1] > 0 else 0)
        _texts_digest(self._hasher, self._texts, self._hashed, seen)
        self._hashed = seen
        manifest["cursor"] = list(cursor)
        manifest["texts_completed"] = cursor[0]
        manifest["inputs"] = {"texts_seen": seen, "fingerprint": self._hasher.hexdigest()}
        manifest["updated"] = _now()
        write_json_atomic(self.path / MANIFEST, manifest)
        if shard and self.on_shard is not None:
            self.on_shard(entry)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_store(
    path: str | Path, model: HookedModel, texts: Sequence[str], hooks: Sequence[str], **options: Any
) -> ActivationStore:
    """Record (or resume) a store and open it for reading. Options as StoreWriter."""
    StoreWriter(path, model, hooks, **options).write(texts)
    return ActivationStore(path)


# --- reading --------------------------------------------------------------------------------


@dataclass
class Shard:
    """One shard in memory: activations per hook and (optionally) its index."""

    number: int
    first_row: int
    acts: dict[str, torch.Tensor]
    index: dict[str, Any] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return int(self.index["text_id"].shape[0]) if self.index else int(next(iter(self.acts.values())).shape[0])


class ActivationStore:
    """Read an activation store (safetensors + JSON only), one shard in memory at a time.

    >>> store = ActivationStore("outputs/.../data/activation_store")
    >>> store.hooks, len(store), store.units("blocks.15.resid_post")
    >>> for x in store.iter_batches("blocks.15.resid_post", 4096, shuffle=True): ...
    >>> store.top_tokens("blocks.15.mlp.post", unit=42, k=10)
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        self.offsets = np.concatenate([[0], np.cumsum([s["rows"] for s in self.shards], dtype=np.int64)])

    def __len__(self) -> int:
        return int(self.manifest["rows"])

    def __repr__(self) -> str:
        return f"ActivationStore({str(self.path)!r}, rows={len(self)}, shards={len(self.shards)}, hooks={self.hooks})"

    @property
    def shards(self) -> list[dict]:
        return self.manifest["shards"]

    @property
    def hooks(self) -> list[str]:
        return list(self.manifest["config"]["hooks"])

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.manifest["config"]["dtype"]]

    @property
    def texts_completed(self) -> int:
        return int(self.manifest["texts_completed"])

    @property
    def nbytes(self) -> int:
        return sum(s["bytes"] for s in self.shards)

    def units(self, hook: str) -> int:
        return int(self.manifest["units"][self._hook(hook)])

    def _hook(self, hook: str) -> str:
        if hook not in self.manifest["units"]:
            raise ConfigError(f"hook point {hook!r} is not in the store at {self.path}; it holds {self.hooks}")
        return hook

    def _file(self, number: int) -> str:
        return str(self.path / self.shards[number]["file"])

    def read_index(self, number: int, tokens: bool = True) -> dict[str, Any]:
        """text_id, position, token_id (int64 tensors) and tokens (strings) of one shard."""
        with safe_open(self._file(number), framework="pt") as f:
            index = {key: f.get_tensor(IDX + key) for key in ("text_id", "position", "token_id")}
            if tokens:
                index["tokens"] = _decode_tokens(f.get_tensor(IDX + "token_bytes"), f.get_tensor(IDX + "token_offsets"))
        return index

    def read_shard(self, number: int, hooks: Sequence[str] | None = None, index: bool = True) -> Shard:
        hooks = [self._hook(h) for h in hooks] if hooks is not None else self.hooks
        with safe_open(self._file(number), framework="pt") as f:
            acts = {hook: f.get_tensor(ACT + hook) for hook in hooks}
        return Shard(number, int(self.offsets[number]), acts, self.read_index(number) if index else {})

    def iter_shards(self, hooks: Sequence[str] | None = None, index: bool = True) -> Iterator[Shard]:
        for number in range(len(self.shards)):
            yield self.read_shard(number, hooks, index)

    def iter_batches(
        self,
        hook: str,
        batch_size: int = 4096,
        *,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        dtype: torch.dtype | None = None,
    ) -> Iterator[torch.Tensor]:
        """[batch_size, units] blocks of one hook point (the last one smaller unless drop_last).
        With `shuffle`, shards come in a random order and rows are shuffled within each shard
        (memory stays one shard plus one batch)."""
        self._hook(hook)
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(self.shards), generator=generator).tolist() if shuffle else range(len(self.shards))
        carry: torch.Tensor | None = None
        for number in order:
            x = self.read_shard(number, [hook], index=False).acts[hook]
            if dtype is not None:
                x = x.to(dtype)
            if shuffle:
                x = x[torch.randperm(x.shape[0], generator=generator)]
            if carry is not None:
                x = torch.cat([carry, x])
            full = x.shape[0] // batch_size * batch_size
            if full:
                yield from x[:full].split(batch_size)
            carry = x[full:] if full < x.shape[0] else None
        if carry is not None and not drop_last:
            yield carry

    def load(self, hook: str) -> torch.Tensor:
        """All rows of one hook point at once: [rows, units]. For stores that fit in memory."""
        self._hook(hook)
        parts = [shard.acts[hook] for shard in self.iter_shards([hook], index=False)]
        return torch.cat(parts) if parts else torch.empty(0, self.units(hook), dtype=self.dtype)

    def index(self) -> pd.DataFrame:
        """text_id, position, token_id, token of every row (no activations are read)."""
        frames = []
        for number in range(len(self.shards)):
            index = self.read_index(number)
            frames.append(
                pd.DataFrame(
                    {
                        "text_id": index["text_id"].numpy(),
                        "position": index["position"].numpy(),
                        "token_id": index["token_id"].numpy(),
                        "token": index["tokens"],
                    }
                )
            )
        if not frames:
            return pd.DataFrame({"text_id": [], "position": [], "token_id": [], "token": []})
        return pd.concat(frames, ignore_index=True)

    def rows_for_texts(self, hook: str, text_ids: Iterable[int]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The stored rows of some texts: ([rows, units], {text_id, position, token_id}),
        reading only the shards that hold them."""
        wanted = torch.as_tensor(sorted(set(text_ids)), dtype=torch.int64)
        acts, cols = [], {"text_id": [], "position": [], "token_id": []}
        lo, hi = (int(wanted.min()), int(wanted.max())) if len(wanted) else (0, -1)
        for number, entry in enumerate(self.shards):
            if entry["last_text"] < lo or entry["first_text"] > hi:
                continue
            index = self.read_index(number, tokens=False)
            keep = torch.isin(index["text_id"], wanted)
            acts.append(self.read_shard(number, [hook], index=False).acts[hook][keep])
            for key in cols:
                cols[key].append(index[key][keep])
        if not acts:
            empty = torch.empty(0, dtype=torch.int64)
            return torch.empty(0, self.units(hook), dtype=self.dtype), {k: empty for k in cols}
        return torch.cat(acts), {key: torch.cat(parts) for key, parts in cols.items()}

    def duplicate_rows(self) -> int:
        """Rows whose (text_id, position) occurs earlier in the store. Streams when keys rise
        strictly (what the writer produces); otherwise counts them exactly."""
        previous, rising = -1, True
        for number in range(len(self.shards)):
            key = self._keys(number)
            if key.numel():
                rising = rising and int(key[0]) > previous and bool((key[1:] > key[:-1]).all())
                previous = int(key[-1])
        if rising:
            return 0
        every = torch.cat([self._keys(number) for number in range(len(self.shards))])
        return int(every.numel() - torch.unique(every).numel())

    def _keys(self, number: int) -> torch.Tensor:
        index = self.read_index(number, tokens=False)
        return index["text_id"] * _KEY_STRIDE + index["position"]

    def top_tokens(self, hook: str, unit: int, k: int = 10, context: int = 5, largest: bool = True) -> pd.DataFrame:
        """The k rows where `unit` of `hook` is largest (smallest with largest=False), ties to
        the earlier row, with `context` tokens of the same text on each side. Streams one
        column of one shard at a time. Columns: rank, value, row, text_id, position, token_id,
        token, left, right, context (left + "[[token]]" + right)."""
        n_units = self.units(hook)
        if not 0 <= unit < n_units:
            raise ConfigError(f"unit {unit} out of range; {hook} has units 0..{n_units - 1} in this store")
        if k < 1 or context < 0:
            raise ConfigError(f"top_tokens needs k >= 1 and context >= 0, got k={k}, context={context}")
        best = torch.empty(0)
        best_rows = torch.empty(0, dtype=torch.int64)
        for number in range(len(self.shards)):
            with safe_open(self._file(number), framework="pt") as f:
                column = f.get_slice(ACT + hook)[:, unit : unit + 1][:, 0].float()
            score = column if largest else -column
            order = torch.sort(score, descending=True, stable=True).indices[:k]
            values = torch.cat([best, score[order]])
            rows = torch.cat([best_rows, order + int(self.offsets[number])])
            keep = torch.sort(values, descending=True, stable=True).indices[:k]
            best, best_rows = values[keep], rows[keep]
        values = best if largest else -best
        top = best_rows.tolist()
        needed = sorted({r for row in top for r in range(max(0, row - context), min(len(self), row + context + 1))})
        rows_index = self._index_rows(needed)
        records = []
        for rank, (row, value) in enumerate(zip(top, values.tolist(), strict=True)):
            text_id, position, token_id, token = rows_index[row]

            def side(span: range, text_id: int = text_id) -> str:
                return "".join(rows_index[r][3] for r in span if rows_index[r][0] == text_id)

            left = side(range(max(0, row - context), row))
            right = side(range(row + 1, min(len(self), row + context + 1)))
            records.append(
                {
                    "rank": rank,
                    "value": value,
                    "row": row,
                    "text_id": text_id,
                    "position": position,
                    "token_id": token_id,
                    "token": token,
                    "left": left,
                    "right": right,
                    "context": f"{left}[[{token}]]{right}",
                }
            )
        return pd.DataFrame(records, columns=["rank", "value", "row", "text_id", "position", "token_id", "token",
                                              "left", "right", "context"])  # fmt: skip

    def _index_rows(self, rows: Sequence[int]) -> dict[int, tuple[int, int, int, str]]:
        """{global row: (text_id, position, token_id, token)} reading only the shards needed."""
        out = {}
        shard_of = np.searchsorted(self.offsets, np.asarray(rows, dtype=np.int64), side="right") - 1
        for number in sorted(set(shard_of.tolist())):
            index = self.read_index(number)
            first = int(self.offsets[number])
            for row in (r for r, s in zip(rows, shard_of, strict=True) if s == number):
                i = row - first
                out[row] = (
                    int(index["text_id"][i]),
                    int(index["position"][i]),
                    int(index["token_id"][i]),
                    index["tokens"][i],
                )
        return out


# --- verification -----------------------------------------------------------------------------


def verify_roundtrip(
    store: ActivationStore, model: HookedModel, texts: Sequence[str], max_batches: int = 2
) -> tuple[float, float, int]:
    """Recompute a few batches exactly as the writer cut them (the first of the first
    session, the last of the last) and compare with the stored rows.

    Returns (max |stored - fresh cast to the store dtype|, max |stored - fresh float32|,
    rows compared). The first is 0 when the store is faithful (same batches, same kernels).
    """
    sessions = store.manifest["sessions"]
    if not len(store) or not sessions:
        return 0.0, 0.0, 0
    max_length = store.manifest["config"]["max_length"]
    starts = [s["start"][0] * _KEY_STRIDE + s["start"][1] for s in sessions] + [torch.iinfo(torch.int64).max]
    picks = [(0, sessions[0]["start"][0]), (len(sessions) - 1, store.shards[-1]["last_text"])]
    picks = list(dict.fromkeys(picks))[:max_batches]
    exact = quantised = 0.0
    compared = 0
    for number, text in picks:
        session = sessions[number]
        bs = session["batch_size"]
        lo = text // bs * bs
        hi = min(lo + bs, session["n_texts"])
        batch = model.tokenize(list(texts[lo:hi]), max_length, range(lo, hi))
        cache = model.forward(batch, capture=store.hooks, **_causal_kwargs(model)).cache
        lo_key, hi_key = starts[number], starts[number + 1]
        for hook in store.hooks:
            stored, index = store.rows_for_texts(hook, range(lo, hi))
            key = index["text_id"] * _KEY_STRIDE + index["position"]
            mine = (key >= lo_key) & (key < hi_key)
            fresh = cache[hook].flatten(2).cpu()[index["text_id"][mine] - lo, index["position"][mine]]
            stored = stored[mine].float()
            if stored.numel():
                exact = max(exact, float((stored - fresh.to(store.dtype).float()).abs().max()))
                quantised = max(quantised, float((stored - fresh.float()).abs().max()))
            compared += int(mine.sum()) if hook == store.hooks[0] else 0
    return exact, quantised, compared


# --- the analyzer ---------------------------------------------------------------------------


@dataclass
class ActivationStoreConfig:
    #: sites taken at every layer of `layers` (resid_pre, attn.z, attn.out, mlp.post, mlp.out,
    #: resid_post), full names (blocks.3.mlp.post), or embed / final
    hook_points: list[str] = field(default_factory=lambda: ["resid_post"])
    #: layers for the sites; null: the middle layer
    layers: list[int] | None = None
    #: the store folder; null: <run dir>/data/activation_store
    path: str | None = None
    shard_tokens: int = 65536
    dtype: str = "float32"
    #: continue a store written with the same setup in `path`; false: overwrite it
    resume: bool = True


class ActivationStoreAnalyzer(Analyzer):
    name = "activation_store"
    window_outputs = "stitch"  # rows of owned tokens only
    family = "activation"
    description = "record activations at hook points to sharded safetensors with a token index (resumable)"
    Config = ActivationStoreConfig

    def validate(self, info: ModelInfo, cfg: ActivationStoreConfig) -> None:
        hooks = resolve_hooks(info, cfg.hook_points, cfg.layers)
        if cfg.shard_tokens < 1:
            raise ConfigError(f"activation_store.shard_tokens must be >= 1, got {cfg.shard_tokens}")
        if cfg.dtype not in DTYPES:
            raise ConfigError(f"activation_store.dtype {cfg.dtype!r} unknown; choose from {list(DTYPES)}")
        if cfg.path and cfg.resume and (Path(cfg.path) / MANIFEST).is_file():
            manifest = read_manifest(cfg.path)
            config = {"hooks": hooks, "dtype": cfg.dtype, "shard_tokens": cfg.shard_tokens}
            errors = compatibility_errors(manifest, info.to_dict(), config)
            if errors:
                raise ConfigError(
                    f"activation_store: the store at {cfg.path} was written with another setup: "
                    f"{'; '.join(errors)}. Use another path, or resume=false to overwrite it"
                )

    def estimate(self, info: ModelInfo, cfg: ActivationStoreConfig, workload):
        """A capturing pass over the inputs written to shards, and two batches recomputed to verify them."""
        hooks = resolve_hooks(info, cfg.hook_points, cfg.layers)
        units = sum(hook_units(info, hook) for hook in hooks)
        size = torch.tensor([], dtype=DTYPES[cfg.dtype]).element_size()
        rows = workload.tokens
        cost = workload.forward_inputs(capture=hooks).hold(min(rows, cfg.shard_tokens) * units * size)
        verify = workload.forward_batches(workload.first(2 * workload.batch_size), capture=hooks)
        index = rows * (3 * 8 + 8 + 8)  # text id, position, token id, offsets, token bytes
        return cost + verify + workload.disk(rows * units * size + index)

    def run(self, ctx: RunContext) -> Result:
        cfg: ActivationStoreConfig = self.cfg
        model = ctx.model
        hooks = resolve_hooks(model.info, cfg.hook_points, cfg.layers)
        path = Path(cfg.path) if cfg.path else ctx.data_dir(self.name)
        writer = StoreWriter(
            path,
            model,
            hooks,
            shard_tokens=cfg.shard_tokens,
            dtype=cfg.dtype,
            batch_size=ctx.batch_size,
            max_length=ctx.max_length,
            resume=cfg.resume,
        )
        texts = ctx.inputs.texts
        stats = writer.write(texts, progress=ctx.progress)
        store = ActivationStore(path)
        result = Result()
        exact, quantised, compared = verify_roundtrip(store, model, texts)
        result.add_check("roundtrip_max_abs_error", exact, 0.0)
        result.add_check("no_duplicate_rows", store.duplicate_rows(), 0)
        expected = sum(
            int(b.counted_mask.sum()) for b in model.batches(texts[: store.texts_completed], 64, ctx.max_length)
        )
        result.add_check("row_count_error", abs(len(store) - expected), 0)
        result.metrics.update(
            {
                "rows": len(store),
                "rows_written": stats.rows_written,
                "shards": len(store.shards),
                "shards_written": stats.shards_written,
                "bytes": store.nbytes,
                "texts": store.texts_completed,
                "hook_points": len(hooks),
                "rows_per_s": stats.rows_written / stats.seconds if stats.seconds > 0 else 0.0,
                "roundtrip_rows": compared,
                "quantisation_max_abs_error": quantised,
            }
        )
        result.tables["shards"] = pd.DataFrame(
            [
                {k: s[k] for k in ("file", "rows", "bytes", "first_text", "last_text")}
                | {"start_text": s["start"][0], "start_position": s["start"][1]}
                for s in store.shards
            ],
            columns=["file", "rows", "bytes", "first_text", "last_text", "start_text", "start_position"],
        )
        result.summary = {
            "path": str(path.resolve()),
            "hook_points": hooks,
            "dtype": cfg.dtype,
            "rows": len(store),
            "shards": len(store.shards),
            "resumed_from": list(stats.started_at) if stats.started_at != (0, 0) else None,
            "read_with": f"interpsuite_plugins.activation.store.ActivationStore({str(path.resolve())!r})",
        }
        return result


ANALYZERS = [ActivationStoreAnalyzer]
