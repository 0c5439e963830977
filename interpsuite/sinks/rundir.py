"""The run directory: results.json, figures/<analyzer>/<name>.{png,pdf}, tables, config."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ..results import RESULTS_FILE, Result, to_jsonable, write_results
from .base import RunInfo, Sink

_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def safe_name(name: str) -> str:
    return _SAFE.sub("_", name).strip("._") or "unnamed"


#: a cell starting with one of these is a formula to a spreadsheet (OWASP "CSV injection")
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _defuse_cell(value):
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def spreadsheet_safe(table):
    """The table with text cells that a spreadsheet would run as formulas prefixed by `'`
    (numbers, negative ones included, are left alone: only strings can carry a formula)."""
    from pandas.api.types import is_object_dtype, is_string_dtype

    text_columns = [c for c in table.columns if is_object_dtype(table[c].dtype) or is_string_dtype(table[c].dtype)]
    if not text_columns:
        return table
    safe = table.copy()
    for column in text_columns:
        safe[column] = safe[column].map(_defuse_cell)
    return safe


def distinct_names(names, suffix: str = "") -> dict[str, str]:
    """name -> file name, distinct even where two names clean to the same file name."""
    chosen: dict[str, str] = {}
    taken: set[str] = set()
    for name in names:
        stem = safe_name(name)
        candidate, n = stem, 1
        while (candidate + suffix).lower() in taken:
            n += 1
            candidate = f"{stem}-{n}"
        taken.add((candidate + suffix).lower())
        chosen[name] = candidate + suffix
    return chosen


class RunDirSink(Sink):
    name = "rundir"
    table_format = "csv"

    def __init__(self, run: RunInfo):
        super().__init__(run)
        run.run_dir.mkdir(parents=True, exist_ok=True)
        self.table_format = run.options.get("table_format", "csv")
        (run.run_dir / "config.resolved.json").write_text(json.dumps(to_jsonable(run.config), indent=2))

    @property
    def results_path(self) -> Path:
        return self.run.run_dir / RESULTS_FILE

    def write(self, analyzer: str, result: Result, entry: dict[str, Any]) -> None:
        folder = safe_name(analyzer)
        table_files = distinct_names(result.tables, f".{self.table_format}")
        for name, table in result.tables.items():
            rel = Path("tables") / folder / table_files[name]
            path = self.run.run_dir / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            if self.table_format == "parquet":
                table.to_parquet(path, index=False)
            else:
                spreadsheet_safe(table).to_csv(path, index=False)
            entry["tables"][name] = rel.as_posix()
        artifact_files = distinct_names(result.artifacts)
        for name, text in result.artifacts.items():
            rel = Path("artifacts") / folder / artifact_files[name]
            path = self.run.run_dir / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            entry.setdefault("artifacts", {})[name] = rel.as_posix()
        figure_files = distinct_names(result.figures)
        for name, figure in result.figures.items():
            paths = []
            for suffix in ("png", "pdf"):
                rel = Path("figures") / folder / f"{figure_files[name]}.{suffix}"
                path = self.run.run_dir / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                figure.savefig(path, bbox_inches="tight")
                paths.append(rel.as_posix())
            entry["figures"][name] = paths

    def save(self, payload: dict[str, Any]) -> None:
        write_results(self.results_path, payload)
