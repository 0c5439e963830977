"""Sharding an analyzer's independent work items over launcher jobs, and merging the shards.

Some analyses fan out inside one job over items that do not depend on each other (causal
tracing over prompts, probing over layers). Past one machine, the launcher that already runs
multiruns (joblib, Ray, SLURM through submitit) can run them in parallel: each job runs one
shard of the items, chosen by the analyzer's `shard` option, and `interpsuite merge-shards`
rebuilds the single-job result from the shards' saved per-item data. No scheduler of our own:

    python -m interpsuite -m +experiment=causal_tracing \\
        analyzers.causal_tracing.shard.count=4 analyzers.causal_tracing.shard.index=0,1,2,3
    interpsuite merge-shards multirun/causal_tracing/<date> --analyzer causal_tracing --out merged

The protocol, for an analyzer that supports it:

- its Config has a field `shard: ShardSpec` (`index` in 0..count-1; `count: 1`, the default,
  is the unsharded run) and its `validate` calls `cfg.shard.check(n_items, name)`;
- its items are numbered 0..n-1 the same way on every job, and `ShardSpec.items(n)` says which
  this job runs: a contiguous block, sizes differing by at most one (`split`), so the merge
  order is the concatenation of the shards in index order;
- anything random is keyed by the item's global index (`item_seed`), never drawn from one
  stream across items: an item's numbers then do not depend on which shard ran it;
- a sharded run saves what the merge needs per item (`ShardItem`: JSON metadata and numpy
  arrays) with `write_shard`, under `<run dir>/data/<analyzer>/shard/`;
- the analyzer class has a classmethod `merge_shard_items(cfg, items, shared, style) -> Result`
  (`ShardMerge`) that builds the whole run's Result from every item, in index order, given the
  shards' options (`cfg`, the analyzer's Config) and figure style. Built on the same function the
  unsharded run reports with, the merge is exactly the single-job result.

`merge_shards` checks that the shards belong together first (one analyzer, same options
other than the shard index, same model, dtype and seed, every index once), naming what differs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from .errors import ConfigError
from .results import RESULTS_FILE, Result, to_jsonable

if TYPE_CHECKING:  # pragma: no cover
    from .analyzer import RunContext
    from .figures import FigureStyle

#: <run dir>/data/<analyzer>/SHARD_FOLDER holds SHARD_FILE (JSON) and ARRAYS_FILE (safetensors)
SHARD_FOLDER = "shard"
SHARD_FILE = "shard.json"
ARRAYS_FILE = "items.safetensors"
FORMAT_VERSION = 1


@dataclass
class ShardSpec:
    """Which part of an analyzer's work items one job runs: shard `index` of `count`."""

    #: this job's shard, 0..count-1
    index: int = 0
    #: how many shards the items are split into; 1: one job runs every item (no shard data saved)
    count: int = 1

    @property
    def sharded(self) -> bool:
        return self.count > 1

    def check(self, n_items: int, what: str) -> None:
        """Refuse a spec that cannot split `n_items` items (before any weights load)."""
        if self.count < 1:
            raise ConfigError(f"{what}: shard.count={self.count}; give 1 (no sharding) or more shards")
        if not 0 <= self.index < self.count:
            raise ConfigError(
                f"{what}: shard.index={self.index} with shard.count={self.count}; the index must be in "
                f"0..{self.count - 1}, one job per index (shard.index={','.join(map(str, range(min(self.count, 4))))}"
                f"{',...' if self.count > 4 else ''} in a multirun)"
            )
        if self.count > n_items:
            raise ConfigError(
                f"{what}: shard.count={self.count} but only {n_items} work item(s); use at most {n_items} shards"
            )

    def items(self, n_items: int) -> range:
        """The global indices of this shard's items."""
        return split(n_items, self.count)[self.index]


def split(n_items: int, count: int) -> list[range]:
    """`n_items` items in `count` contiguous blocks whose sizes differ by at most one, the
    larger ones first: shard i runs items [i*n//count, (i+1)*n//count). Contiguous rather than
    round-robin, so the merge concatenates the shards in index order; the same on every job."""
    return [range(i * n_items // count, (i + 1) * n_items // count) for i in range(count)]


def item_seed(seed: int, index: int) -> int:
    """The seed of work item `index` in a run seeded with `seed`.

    numpy's SeedSequence spawning: the state of `SeedSequence(seed).spawn(index + 1)[index]`,
    independent streams per item, so an item's random numbers depend on (seed, index) only,
    not on the shard that runs it nor on the items drawn before it."""
    sequence = np.random.SeedSequence(seed % 2**64, spawn_key=(index,))
    return int(sequence.generate_state(1, np.uint64)[0])


def options_without_shard(cfg: Any) -> dict[str, Any]:
    """An analyzer config as JSON, without its `shard` field (what the shards must share)."""
    options = asdict(cfg) if is_dataclass(cfg) else dict(cfg)
    options.pop("shard", None)
    return to_jsonable(options)


# --- what a shard saves ------------------------------------------------------------------
@dataclass
class ShardItem:
    """One work item's saved data: JSON metadata (floats round-trip exactly through JSON) and
    numpy arrays (saved bit for bit with safetensors)."""

    index: int
    meta: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


def write_shard(
    ctx: RunContext,
    analyzer: str,
    cfg: Any,
    n_items: int,
    items: Sequence[ShardItem],
    shared: dict[str, Any] | None = None,
) -> Path:
    """Save a sharded run's items to <run dir>/data/<analyzer>/shard/; returns the folder.

    `shared` holds values every shard computes alike that the merge needs (a normaliser from the
    whole dataset, say). The fingerprint (options without the shard, model, dtype, seed, number
    of items) is what `merge_shards` requires to be equal across shards."""
    spec: ShardSpec = cfg.shard
    folder = ctx.data_dir(analyzer) / SHARD_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    model = ctx.model
    parameter = next(iter(model.hf_model.parameters()), None)
    fingerprint = {
        "options": options_without_shard(cfg),
        "model": model.info.contract_dict(),
        "dtype": str(parameter.dtype).removeprefix("torch.") if parameter is not None else None,
        "seed": ctx.seed,
        "n_items": n_items,
    }
    arrays = {
        f"{item.index}/{name}": np.ascontiguousarray(value) for item in items for name, value in item.arrays.items()
    }
    digest = None
    if arrays:
        from safetensors.numpy import save_file

        save_file(arrays, str(folder / ARRAYS_FILE))
        digest = hashlib.sha256((folder / ARRAYS_FILE).read_bytes()).hexdigest()
    else:
        (folder / ARRAYS_FILE).unlink(missing_ok=True)
    assigned = spec.items(n_items)
    record = {
        "format_version": FORMAT_VERSION,
        "analyzer": analyzer,
        "shard": {"index": spec.index, "count": spec.count},
        "assigned": [assigned.start, assigned.stop],
        "fingerprint": fingerprint,
        "shared": to_jsonable(shared or {}),
        "style": ctx.style.to_dict(),
        "items": [
            {"index": item.index, "meta": to_jsonable(item.meta), "arrays": sorted(item.arrays)} for item in items
        ],
        "arrays_sha256": digest,
    }
    (folder / SHARD_FILE).write_text(json.dumps(record, indent=1, allow_nan=False))
    return folder


def shard_summary(cfg: Any, n_items: int, folder: Path, n_saved: int) -> dict[str, Any]:
    """The `shard` entry of a sharded run's summary: which items it ran and where they are."""
    assigned = cfg.shard.items(n_items)
    return {
        "index": cfg.shard.index,
        "count": cfg.shard.count,
        "items": [assigned.start, assigned.stop],
        "n_items": n_items,
        "saved": n_saved,
        "data": str(folder),
    }


# --- reading and checking shards -----------------------------------------------------------
@dataclass
class ShardRun:
    """One shard's run directory, read back."""

    run_dir: Path
    analyzer: str
    spec: ShardSpec
    assigned: range
    fingerprint: dict[str, Any]
    shared: dict[str, Any]
    style: dict[str, Any]
    items: list[ShardItem]
    payload: dict[str, Any]
    config: dict[str, Any]

    @property
    def entry(self) -> dict[str, Any]:
        return self.payload["analyzers"][self.analyzer]


class ShardMerge(Protocol):
    """What an analyzer class offers to support sharding (see the module docstring)."""

    @classmethod
    def merge_shard_items(
        cls, cfg: Any, items: list[ShardItem], shared: dict[str, Any], style: FigureStyle
    ) -> Result: ...


def read_shard(run_dir: str | Path, analyzer: str) -> ShardRun:
    """Read one shard run; every problem is a one-line ConfigError naming the folder and the fix."""
    run_dir = Path(run_dir)
    results = run_dir / RESULTS_FILE
    if not results.is_file():
        raise ConfigError(f"merge-shards: {run_dir} has no {RESULTS_FILE}; pass finished shard run directories")
    try:
        payload = json.loads(results.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"merge-shards: {results} is not valid JSON ({err}); rerun that shard") from None
    entry = (payload.get("analyzers") or {}).get(analyzer)
    if entry is None:
        ran = ", ".join(payload.get("analyzers") or {}) or "none"
        raise ConfigError(f"merge-shards: {run_dir} has no {analyzer} result (it ran: {ran}); pass {analyzer}'s shards")
    if entry.get("status") != "ok":
        raise ConfigError(
            f"merge-shards: {analyzer} in {run_dir} is {entry.get('status')} ({entry.get('error')}); rerun that shard"
        )
    folder = run_dir / "data" / analyzer / SHARD_FOLDER
    if not (folder / SHARD_FILE).is_file():
        raise ConfigError(
            f"merge-shards: {run_dir} has no shard data ({folder.relative_to(run_dir) / SHARD_FILE}); it was not a "
            f"sharded run: run it with analyzers.{analyzer}.shard.count>1"
        )
    record = json.loads((folder / SHARD_FILE).read_text())
    if record.get("format_version") != FORMAT_VERSION or record.get("analyzer") != analyzer:
        raise ConfigError(
            f"merge-shards: {folder / SHARD_FILE} is shard data of format {record.get('format_version')} for "
            f"{record.get('analyzer')!r}; rerun that shard with this interpsuite"
        )
    arrays: dict[str, np.ndarray] = {}
    if record.get("arrays_sha256") is not None:
        path = folder / ARRAYS_FILE
        data = path.read_bytes() if path.is_file() else b""
        if hashlib.sha256(data).hexdigest() != record["arrays_sha256"]:
            raise ConfigError(f"merge-shards: {path} is missing or changed since the shard wrote it; rerun that shard")
        from safetensors.numpy import load

        arrays = load(data)
    items = [
        ShardItem(int(i["index"]), i["meta"], {name: arrays[f"{i['index']}/{name}"] for name in i["arrays"]})
        for i in record["items"]
    ]
    config_path = run_dir / "config.resolved.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    shard = record["shard"]
    return ShardRun(
        run_dir=run_dir,
        analyzer=analyzer,
        spec=ShardSpec(int(shard["index"]), int(shard["count"])),
        assigned=range(*record["assigned"]),
        fingerprint=record["fingerprint"],
        shared=record["shared"],
        style=record.get("style") or {},
        items=items,
        payload=payload,
        config=config,
    )


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat or {prefix: {}}
    return {prefix: value}


def check_shards(shards: Sequence[ShardRun]) -> None:
    """Refuse shards that do not make one run together, naming what differs."""
    if not shards:
        raise ConfigError("merge-shards: no shard run directories given; pass each shard's run directory")
    first = shards[0]
    for shard in shards[1:]:
        if shard.spec.count != first.spec.count:
            raise ConfigError(
                f"merge-shards: the shards differ in shard.count: {first.run_dir} has {first.spec.count}, "
                f"{shard.run_dir} has {shard.spec.count}; merge only the shards of one sharded run"
            )
        want = _flatten({**first.fingerprint, "shared": first.shared})
        got = _flatten({**shard.fingerprint, "shared": shard.shared})
        # the model's name first: "different model" reads better than its first differing dimension
        for key in sorted(set(want) | set(got), key=lambda k: (k != "model.name", k)):
            if want.get(key) != got.get(key):
                raise ConfigError(
                    f"merge-shards: the shards differ in {key}: {first.run_dir} has {want.get(key)!r}, "
                    f"{shard.run_dir} has {got.get(key)!r}; merge only the shards of one sharded run"
                )
    seen: dict[int, Path] = {}
    for shard in shards:
        if shard.spec.index in seen:
            raise ConfigError(
                f"merge-shards: shard {shard.spec.index} of {first.spec.count} given twice ({seen[shard.spec.index]} "
                f"and {shard.run_dir}); pass each shard once"
            )
        seen[shard.spec.index] = shard.run_dir
    missing = [i for i in range(first.spec.count) if i not in seen]
    if missing:
        raise ConfigError(
            f"merge-shards: shard(s) {', '.join(map(str, missing))} of {first.spec.count} missing (given: "
            f"{', '.join(map(str, sorted(seen)))}); pass every shard's run directory (or their multirun folder)"
        )
    n_items = int(first.fingerprint["n_items"])
    for shard in shards:
        expected = shard.spec.items(n_items)
        stray = [item.index for item in shard.items if item.index not in expected]
        if shard.assigned != expected or stray:
            raise ConfigError(
                f"merge-shards: {shard.run_dir} holds items {shard.assigned.start}..{shard.assigned.stop - 1}, not "
                f"shard {shard.spec.index}'s {expected.start}..{expected.stop - 1}; rerun that shard"
            )


@dataclass
class MergedShards:
    """The merged result and what it came from."""

    analyzer: str
    result: Result
    shards: list[ShardRun]

    @property
    def model(self) -> dict[str, Any]:
        return self.shards[0].payload.get("model", {})

    def inputs(self) -> dict[str, Any]:
        """The shards' inputs entries with their counts summed (each shard counted its own items)."""
        inputs = dict(self.shards[0].payload.get("inputs") or {})
        for key in ("count", "n_tokens", "truncated_texts", "truncated_tokens"):
            values = [(s.entry.get("inputs") or {}).get(key) for s in self.shards]
            if all(isinstance(v, int) for v in values):
                inputs[key] = sum(values)
        return inputs

    def config(self) -> dict[str, Any]:
        """The first shard's resolved config with the shard option reset to the unsharded run."""
        config = json.loads(json.dumps(self.shards[0].config))
        options = (config.get("analyzers") or {}).get(self.analyzer)
        if isinstance(options, dict):
            options["shard"] = {"index": 0, "count": 1}
        return config


def shard_dirs(paths: Sequence[str | Path]) -> list[Path]:
    """Run directories, or one multirun folder standing for its jobs (as `interpsuite compare`)."""
    from .compare import expand_run_dirs

    dirs = expand_run_dirs(list(paths))
    for path in dirs:
        if not path.is_dir():
            raise ConfigError(
                f"merge-shards: {path} is not a directory; pass shard run directories or a multirun folder"
            )
    return dirs


def merge_shards(paths: Sequence[str | Path], analyzer: str = "causal_tracing", registry: Any = None) -> MergedShards:
    """Rebuild the single-job Result of `analyzer` from its shards' run directories (or their
    multirun folder): items in global index order through the analyzer's `merge_shard_items`."""
    from .analyzer import build_config
    from .figures import FigureStyle
    from .plugins import get_registry

    registry = registry or get_registry()
    cls = registry.analyzer(analyzer)
    merge = getattr(cls, "merge_shard_items", None)
    if merge is None:
        raise ConfigError(f"merge-shards: analyzer {analyzer} does not support sharding (no merge_shard_items)")
    shards = [read_shard(path, analyzer) for path in shard_dirs(paths)]
    check_shards(shards)
    shards.sort(key=lambda s: s.spec.index)
    items = sorted((item for shard in shards for item in shard.items), key=lambda item: item.index)
    cfg = build_config(cls, shards[0].fingerprint["options"])
    result = merge(cfg, items, shards[0].shared, FigureStyle.from_dict(shards[0].style))
    result.status, result.error = "ok", None
    result.duration_s = float(sum(s.entry.get("duration_s") or 0.0 for s in shards))
    return MergedShards(analyzer, result, shards)


def _settings(config: dict[str, Any]):
    """The run settings (table format, figure formats and style) the shards were made with."""
    import dataclasses

    from .settings import RunSettings, coerce_dataclass

    names = {f.name for f in dataclasses.fields(RunSettings)}
    try:
        return coerce_dataclass(RunSettings, {k: v for k, v in config.items() if k in names})
    except ConfigError:
        return RunSettings()


def write_merged(merged: MergedShards, out: str | Path) -> dict[str, Any]:
    """The merged result as a normal run directory (results.json, tables, figures, figure data)."""
    from .pipeline import record_result

    out = Path(out)
    for shard in merged.shards:
        if out.resolve() == shard.run_dir.resolve():
            raise ConfigError(
                f"merge-shards: --out {out} is the shard run directory {shard.run_dir}; choose a new folder"
            )
    if (out / RESULTS_FILE).exists():
        raise ConfigError(f"merge-shards: {out} already holds a {RESULTS_FILE}; choose a new folder for --out")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"merge-shards: --out {out} is a file; choose a folder")
    first = merged.shards[0]
    config = merged.config()
    return record_result(
        out,
        first.payload.get("experiment", "run"),
        merged.analyzer,
        merged.result,
        model=merged.model,
        inputs=merged.inputs(),
        config=config,
        settings=_settings(config),
        extra={
            "merged_from": {
                "analyzer": merged.analyzer,
                "count": first.spec.count,
                "shards": [str(s.run_dir) for s in merged.shards],
            }
        },
    )


def merge_shards_command(paths: Sequence[str], analyzer: str, out: str) -> int:
    """`interpsuite merge-shards DIR... --analyzer NAME --out OUT`."""
    merged = merge_shards(paths, analyzer)
    write_merged(merged, out)
    n_items = merged.shards[0].fingerprint["n_items"]
    print(f"merged {len(merged.shards)} shards of {analyzer} ({n_items} items) into {out}")
    failed = merged.result.failed_checks
    if failed:
        print(f"interpsuite: warning: {analyzer} checks failed: {', '.join(failed)}")
    return 0
