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
        for name, table in result.tables.items():
            rel = Path("tables") / folder / f"{safe_name(name)}.{self.table_format}"
            path = self.run.run_dir / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            if self.table_format == "parquet":
                table.to_parquet(path, index=False)
            else:
                table.to_csv(path, index=False)
            entry["tables"][name] = rel.as_posix()
        for name, text in result.artifacts.items():
            rel = Path("artifacts") / folder / safe_name(name)
            path = self.run.run_dir / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            entry.setdefault("artifacts", {})[name] = rel.as_posix()
        for name, figure in result.figures.items():
            paths = []
            for suffix in ("png", "pdf"):
                rel = Path("figures") / folder / f"{safe_name(name)}.{suffix}"
                path = self.run.run_dir / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                figure.savefig(path, bbox_inches="tight")
                paths.append(rel.as_posix())
            entry["figures"][name] = paths

    def save(self, payload: dict[str, Any]) -> None:
        write_results(self.results_path, payload)
