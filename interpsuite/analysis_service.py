"""AnalysisService: one loaded model, many short analysis requests (the server, `interpsuite analyze`).

Each request is an ordinary `InterpretabilityPipeline` run on the already loaded HookedModel,
written to its own run directory `<runs_dir>/<run_id>`, so a request's results are a normal run
directory (`interpsuite figures`, `interpsuite compare` work on it) and the answer is that
run's results.json entries with the tables as JSON rows. Validation is the pipeline's own, so
a mistake gets the same one-line message as on the command line, before any forward pass.

With a `ResultCache`, each analyzer is looked up first and only the misses run. The key holds
the model fingerprint (computed once per service), the analyzer, its options, the texts, the
versions and the service's batch_size/max_length (they change what an analyzer sees). A hit's
files are copied into the new run directory, so a cached answer looks exactly like a fresh one
(same entry, same relative file paths) apart from `cached: true`.

Thread safety: `analyze` may run in several threads at once on one HookedModel (each pass of
the model layer keeps its plan private to its thread, docs/model-layer.md). Each call has its
own pipeline, run directory, progress reporter and cancel token. Two caveats that cost no
metric: the pipeline seeds the process-wide RNGs at the start of each run, so an analyzer that
draws random numbers is reproducible only when it runs alone; and matplotlib's rcParams are
process-wide, so figures drawn at the same moment may mix styles.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import secrets
import shutil
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__
from .errors import ConfigError
from .pipeline import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, InterpretabilityPipeline
from .plugins import PluginRegistry, get_registry
from .progress import CANCELLED, Cancelled, CancelToken, ProgressEvent, ProgressListener, ProgressReporter
from .results import RESULTS_FILE, read_results, to_jsonable, write_results

if TYPE_CHECKING:  # pragma: no cover
    from .artifacts import ModelFingerprint
    from .models import HookedModel
    from .result_cache import CacheKey, ResultCache

#: results.json `experiment` of a service run
EXPERIMENT = "analyze"
#: a run id: sortable UTC timestamp + random suffix; nothing a path could be made of
RUN_ID = re.compile(r"^[A-Za-z0-9_-]{1,80}$")
#: folders under runs_dir that are not runs: the writability probe, SAEs trained by POST /train-sae
NOT_RUNS = frozenset({"_check", "saes"})


def new_run_id() -> str:
    """`20261201T040312123456Z-3fa9c1`: sorts by start time; unique across threads and processes."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ") + "-" + secrets.token_hex(3)


@dataclass
class AnalysisOutcome:
    """One request's answer: the run's status and, per analyzer, its results.json entry plus the
    tables as JSON rows (`tables`), the figure files as paths relative to `run_dir` (`figures`)
    and whether it came from the cache (`cached`). The entry's own file maps stay available as
    `table_files` and `figure_files`."""

    run_id: str
    run_dir: Path
    status: str
    exit_code: int
    analyzers: dict[str, dict] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return to_jsonable(
            {
                "run_id": self.run_id,
                "run_dir": str(self.run_dir),
                "status": self.status,
                "exit_code": self.exit_code,
                "analyzers": self.analyzers,
            }
        )


def _options(analyzers: Mapping[str, Mapping[str, Any] | None]) -> dict[str, dict[str, Any]]:
    if not isinstance(analyzers, Mapping):
        raise ConfigError("analyzers: expected a mapping of analyzer name -> options, e.g. {'activation_stats': {}}")
    options = {}
    for name, value in analyzers.items():
        if value is not None and not isinstance(value, Mapping):
            raise ConfigError(f"analyzers.{name}: expected a mapping of options (or null), got {type(value).__name__}")
        options[str(name)] = dict(value or {})
    return options


def _texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence):
        raise ConfigError("texts: expected a list of strings, e.g. ['The cat sat on the mat.']")
    if not texts:
        raise ConfigError("texts: the list is empty; give at least one non-empty text")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ConfigError(f"texts[{i}]: expected a string, got {type(text).__name__}")
        if not text.strip():
            raise ConfigError(f"texts[{i}] is empty; give non-empty texts only")
    return list(texts)


def _rows(table: Any) -> list[dict]:
    """A table as JSON-safe rows (column -> value; NaN/inf -> None), as written to the CSV (no index)."""
    records = table.to_dict(orient="records") if hasattr(table, "to_dict") else list(table)
    return json.loads(json.dumps(to_jsonable(records), allow_nan=False))


def _files_of(entry: dict, run_dir: Path) -> dict[str, Path]:
    """Every file an entry lists (tables, figures, artifacts, figure data), by path relative to the run dir."""
    rels: list[str] = [*entry.get("tables", {}).values(), *entry.get("artifacts", {}).values()]
    for paths in entry.get("figures", {}).values():
        rels += list(paths)
    files = {rel: run_dir / rel for rel in rels}
    for rel in entry.get("figure_data", {}).values():
        folder = run_dir / rel
        if folder.is_dir():
            for path in sorted(folder.rglob("*")):
                if path.is_file():
                    files[path.relative_to(run_dir).as_posix()] = path
    return {rel: path for rel, path in files.items() if path.is_file()}


def _outcome_entry(entry: dict, rows: dict[str, list[dict]], cached: bool) -> dict:
    out = dict(entry)
    out["table_files"] = dict(entry.get("tables", {}))
    out["figure_files"] = {name: list(paths) for name, paths in entry.get("figures", {}).items()}
    out["tables"] = rows
    out["figures"] = [path for paths in entry.get("figures", {}).values() for path in paths]
    out["cached"] = cached
    return out


def _exit_code(status: str, entries: Mapping[str, dict]) -> int:
    """As `python -m interpsuite`: 130 interrupted/cancelled, 1 an analyzer failed, else 0."""
    if status in ("interrupted", CANCELLED):
        return EXIT_INTERRUPTED
    if any(e.get("status") not in ("ok", "skipped") for e in entries.values()):
        return EXIT_FAILED
    return EXIT_OK


def request_pipeline(
    model: HookedModel | str,
    texts: list[str],
    options: dict[str, dict],
    output_dir: Path,
    *,
    registry: PluginRegistry | None = None,
    batch_size: int = 8,
    max_length: int | None = 128,
    draw_figures: bool = True,
    **kwargs: Any,
) -> InterpretabilityPipeline:
    """The pipeline of one request: only the run directory sink, no progress bars (events instead)."""
    return InterpretabilityPipeline(
        model=model,
        data={"texts": texts, "max_length": max_length},
        analyzers=options,
        experiment=EXPERIMENT,
        output_dir=output_dir,
        batch_size=batch_size,
        sinks=("rundir",),
        progress=False,
        draw_figures=draw_figures,
        registry=registry,
        **kwargs,
    )


def check_request(
    model: HookedModel | str,
    texts: Sequence[str],
    analyzers: Mapping[str, Mapping[str, Any] | None],
    runs_dir: str | Path,
    **settings: Any,
) -> None:
    """A request checked as the pipeline checks a run (its messages), before any weights or forward
    pass; `model` may be a name (`interpsuite analyze` checks before loading it). Nothing is written."""
    pipeline = request_pipeline(model, _texts(texts), _options(analyzers), Path(runs_dir) / "_check", **settings)
    pipeline.validate()


class _Relay:
    """The listener handed to the pipeline: its analyzer and progress events go to the service's
    reporter (one clock, one 'drop a raising listener' rule); run_start/run_end are the service's."""

    def __init__(self, reporter: ProgressReporter):
        self.reporter = reporter

    def __call__(self, event: ProgressEvent) -> None:
        if event.kind in ("run_start", "run_end"):
            return
        self.reporter.analyzer = event.analyzer
        self.reporter.emit(event.kind, desc=event.desc, done=event.done, total=event.total, status=event.status)


class AnalysisService:
    """Analyze texts with one loaded model; every request becomes a run directory under `runs_dir`."""

    def __init__(
        self,
        model: HookedModel,
        *,
        runs_dir: str | Path,
        cache: ResultCache | None = None,
        registry: PluginRegistry | None = None,
        batch_size: int = 8,
        max_length: int | None = 128,
        draw_figures: bool = True,
    ):
        from .settings import check_writable_dir

        self.model = model
        self.runs_dir = check_writable_dir(Path(runs_dir).expanduser(), "runs directory").resolve()
        self.cache = cache
        self.registry = registry or get_registry()
        self.batch_size = batch_size
        self.max_length = max_length
        self.draw_figures = draw_figures
        self._fingerprint: ModelFingerprint | None = None
        self._lock = threading.Lock()

    # --- requests ---------------------------------------------------------------------------
    def _pipeline(self, texts: list[str], options: dict[str, dict], output_dir: Path, **kwargs: Any):
        return request_pipeline(
            self.model,
            texts,
            options,
            output_dir,
            registry=self.registry,
            batch_size=self.batch_size,
            max_length=self.max_length,
            draw_figures=self.draw_figures,
            **kwargs,
        )

    def check(self, texts: Sequence[str], analyzers: Mapping[str, Mapping[str, Any] | None]) -> None:
        """Everything the pipeline checks before weights (names, options, layer ranges, inputs),
        with its messages; ConfigError on the first problem. No forward pass, nothing written."""
        check_request(
            self.model,
            texts,
            analyzers,
            self.runs_dir,
            registry=self.registry,
            batch_size=self.batch_size,
            max_length=self.max_length,
        )

    def analyze(
        self,
        texts: Sequence[str],
        analyzers: Mapping[str, Mapping[str, Any] | None],
        *,
        listener: ProgressListener | None = None,
        cancel: CancelToken | None = None,
    ) -> AnalysisOutcome:
        """Run the analyzers on the texts (cache hits are not run again) in a new run directory.

        Events go to `listener` (run_start, then per analyzer analyzer_start, progress...,
        analyzer_end, then run_end); `cancel` stops the run between progress items (status
        `cancelled`, exit code 130; finished analyzers are kept)."""
        self.check(texts, analyzers)
        texts, options = _texts(texts), _options(analyzers)
        cancel = cancel if cancel is not None else CancelToken()
        reporter = ProgressReporter(listener, cancel)
        run_id = new_run_id()
        run_dir = self.runs_dir / run_id
        keys = {name: self._key(name, opts, texts) for name, opts in options.items()} if self.cache is not None else {}
        rows: dict[str, dict[str, list[dict]]] = {}
        cached: dict[str, dict] = {}
        started = time.perf_counter()
        status = "crashed"  # what run_end says when an exception leaves this method
        try:
            try:
                reporter.emit("run_start", total=len(options))
                for name, key in keys.items():
                    hit = self._restore(key, run_dir)
                    if hit is not None:
                        cached[name], rows[name] = hit
                        reporter.analyzer = name
                        reporter.emit("analyzer_start")
                        reporter.emit("analyzer_end", status=hit[0]["status"])
                        reporter.analyzer = None
            except Cancelled:  # from the listener: the token is set, the pipeline records it below
                pass
            misses = {name: opts for name, opts in options.items() if name not in cached}
            if misses:
                pipeline = self._pipeline(texts, misses, run_dir, listener=_Relay(reporter), cancel=cancel)
                report = pipeline.run()
                payload = read_results(run_dir)
                for name, result in report.results.items():
                    rows[name] = {table: _rows(frame) for table, frame in result.tables.items()}
                self._store(keys, payload, rows, run_dir)
            else:
                payload = self._cached_payload(texts, started)
            status = payload["status"]
        finally:
            reporter.analyzer = None
            reporter.emit("run_end", status=status)
        payload["analyzers"] = {
            name: {**cached[name], "cached": True} if name in cached else payload["analyzers"][name]
            for name in options
            if name in cached or name in payload["analyzers"]
        }
        if cached:
            run_dir.mkdir(parents=True, exist_ok=True)
            payload["duration_s"] = max(payload.get("duration_s", 0.0), time.perf_counter() - started)
            write_results(run_dir / RESULTS_FILE, payload)
        entries = {
            name: _outcome_entry(entry, rows.get(name, {}), name in cached)
            for name, entry in payload["analyzers"].items()
        }
        return AnalysisOutcome(run_id, run_dir, status, _exit_code(status, payload["analyzers"]), entries)

    # --- the cache ----------------------------------------------------------------------------
    def fingerprint(self) -> ModelFingerprint:
        """The model's fingerprint (hash of its embedding rows), computed once per service."""
        with self._lock:
            if self._fingerprint is None:
                from .artifacts import ModelFingerprint

                self._fingerprint = ModelFingerprint.of(self.model)
            return self._fingerprint

    def cached(self, texts: Sequence[str], analyzers: Mapping[str, Mapping[str, Any] | None]) -> bool:
        """Whether every analyzer's result is in the cache, so `analyze` would make no forward pass.
        A peek: no hit/miss is counted (an entry evicted right after makes the analysis run)."""
        if self.cache is None:
            return False
        return all(self.cache.contains(self._key(n, dict(o or {}), list(texts))) for n, o in analyzers.items())

    def _key(self, name: str, options: dict, texts: list[str]) -> CacheKey:
        from .result_cache import CacheKey

        try:
            dist = self.registry.analyzers[name].distribution
            dist_version = importlib.metadata.version(dist)
        except (KeyError, importlib.metadata.PackageNotFoundError, ValueError):
            dist_version = "unknown"
        # batch_size and max_length change what an analyzer sees (padding, truncation): part of the key
        keyed = {"options": options, "run": {"batch_size": self.batch_size, "max_length": self.max_length}}
        return CacheKey.of(self.fingerprint(), name, keyed, texts, f"{__version__}/{dist_version}")

    def _restore(self, key: CacheKey, run_dir: Path) -> tuple[dict, dict[str, list[dict]]] | None:
        """A hit's entry and table rows, its files copied into `run_dir`; None on a miss (or when the
        entry was evicted while its files were being copied)."""
        hit = self.cache.get(key)
        if hit is None:
            return None
        base = run_dir.resolve()
        try:
            for rel, source in hit.files.items():
                target = (run_dir / rel).resolve()
                if not target.is_relative_to(base):
                    return None
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
        except OSError:
            return None
        try:
            return json.loads(hit.entry["entry_json"]), json.loads(hit.entry["tables_json"])
        except (KeyError, TypeError, ValueError):  # not one of ours: run it again
            return None

    def _store(self, keys: dict[str, CacheKey], payload: dict, rows: dict, run_dir: Path) -> None:
        """Cache every analyzer that finished ok in this run (entry, table rows, files)."""
        if payload.get("sinks", {}).get("rundir", {}).get("status") != "ok":
            return  # some files of the entries may be missing: nothing worth keeping
        for name, entry in payload["analyzers"].items():
            if name not in keys or entry.get("status") != "ok":
                continue
            # as JSON text: the cache stores its JSON with sorted keys, and the order of metrics,
            # figures and table columns is part of the answer
            record = {"entry_json": json.dumps(entry), "tables_json": json.dumps(rows.get(name, {}))}
            self.cache.put(keys[name], record, _files_of(entry, run_dir))

    def _cached_payload(self, texts: list[str], started: float) -> dict:
        """results.json of a run whose analyzers all came from the cache (no pipeline ran)."""
        lengths = self.model.token_lengths(texts)
        limit = self.max_length
        cut = [n - limit for n in lengths if limit is not None and n > limit]
        inputs = {
            "source": "inline",
            "count": len(texts),
            "n_tokens": sum(min(n, limit) if limit is not None else n for n in lengths),
            "truncated_texts": len(cut),
            "truncated_tokens": sum(cut),
            "max_length": limit,
            "data": {
                "source": "inline",
                "count": len(texts),
                "truncated_texts": len(cut),
                "truncated_tokens": sum(cut),
            },
        }
        return {
            "interpsuite_version": __version__,
            "experiment": EXPERIMENT,
            "status": "complete",
            "model": self.model.info.contract_dict(),
            "inputs": inputs,
            "duration_s": time.perf_counter() - started,
            "analyzers": {},
            "sinks": {"rundir": {"status": "ok", "error": None}},
        }

    # --- earlier runs -------------------------------------------------------------------------
    def _run_dir(self, run_id: str) -> Path:
        if not isinstance(run_id, str) or not RUN_ID.match(run_id):
            raise ConfigError(f"run {run_id!r}: not a run id (letters, digits, '_' and '-'); see the list of runs")
        path = (self.runs_dir / run_id).resolve()
        if not path.is_relative_to(self.runs_dir) or path == self.runs_dir or not path.is_dir():
            raise ConfigError(f"run {run_id!r}: no such run under {self.runs_dir}; see the list of runs")
        return path

    def runs(self) -> list[dict]:
        """Run folders under runs_dir, newest first: id, created (unix time), status, analyzers.
        A run still going before its first analyzer finished has status `running`."""
        found = []
        for path in self.runs_dir.iterdir():
            if not path.is_dir() or path.is_symlink() or not RUN_ID.match(path.name) or path.name in NOT_RUNS:
                continue
            record = {"id": path.name, "created": path.stat().st_mtime, "status": "running", "analyzers": []}
            results = path / RESULTS_FILE
            if results.is_file():
                try:
                    payload = read_results(path)
                    record["status"] = payload.get("status", "unknown")
                    record["analyzers"] = list(payload.get("analyzers", {}))
                except (OSError, ValueError):
                    record["status"] = "unreadable"
            found.append(record)
        return sorted(found, key=lambda r: r["id"], reverse=True)

    def run(self, run_id: str) -> dict:
        """That run's results.json (ConfigError for an unknown id or one outside runs_dir)."""
        path = self._run_dir(run_id)
        try:
            return read_results(path)
        except (OSError, ValueError):
            raise ConfigError(f"run {run_id!r} has no readable results.json yet (still starting, or broken)") from None


__all__ = ["AnalysisOutcome", "AnalysisService", "new_run_id"]
