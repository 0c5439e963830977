"""The run directory: results.json, figures/<analyzer>/<name>.{png,pdf,svg}, tables, config."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..results import RESULTS_FILE, Result, to_jsonable, write_results
from ..settings import FIGURE_FORMATS
from .base import RunInfo, Sink

_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")
# embedding TrueType fonts in PDFs runs fontTools' subsetter, which logs a dozen INFO lines per
# file; under Hydra's INFO logging they buried the run's own messages
logging.getLogger("fontTools").setLevel(logging.WARNING)


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


#: what is saved when `figures.formats` is not given (settings.FIGURE_FORMATS lists every format)
DEFAULT_FIGURE_FORMATS = ("png", "pdf")


def save_figure(figure: Any, stem: Path, formats: Sequence[str] = DEFAULT_FIGURE_FORMATS) -> list[Path]:
    """Write `figure` as <stem>.<format> for each format, cropped to its contents; returns the paths.

    Fonts are embedded as TrueType (Type 42) in PDF, never as Type 3 (which some venues refuse).

    Why not `figure.savefig(path, bbox_inches="tight")` per format: for a figure with a layout
    engine (all of FigureStyle's use constrained layout) every such call draws the figure twice
    (once without output, to run the layout and measure the tight box, once for real), and
    repeats it all for the next format. Text (tick labels) dominates a labelled figure's cost,
    so here the layout runs and the box is measured once; each format then costs one draw,
    with the layout frozen (the engine is put back afterwards) and the same box, so every
    format shows the same picture, pixel for pixel what the plain call gives. Figures on a
    canvas that is not Agg-based (a plugin's pyplot figure under another interactive backend)
    are saved the plain way.
    """
    from matplotlib import rc_context, rcParams
    from matplotlib.backend_bases import FigureCanvasBase
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.layout_engine import PlaceHolderLayoutEngine

    unknown = [f for f in formats if f not in FIGURE_FORMATS]
    if unknown:
        raise ValueError(f"figure formats {unknown} not supported; choose from {list(FIGURE_FORMATS)}")
    paths = [stem.with_name(f"{stem.name}.{suffix}") for suffix in formats]
    if not paths:
        return paths
    stem.parent.mkdir(parents=True, exist_ok=True)
    canvas = figure.canvas
    if type(canvas) is FigureCanvasBase:  # an unpickled or hand-made Figure: give it Agg, pyplot-free
        canvas = FigureCanvasAgg(figure)
    if not isinstance(canvas, FigureCanvasAgg):
        for path in paths:
            figure.savefig(path, bbox_inches="tight")
        return paths
    engine = figure.get_layout_engine()
    if engine is not None and not isinstance(engine, PlaceHolderLayoutEngine) and figure.axes:
        try:  # what Figure.draw would do first, without drawing every artist to no output
            engine.execute(figure)
        except ValueError:  # as Figure.draw: a layout that cannot be solved leaves positions as they are
            pass
    else:
        figure.draw_without_rendering()  # as savefig's own measuring pass for bbox_inches="tight"
    pad = rcParams["savefig.pad_inches"]
    box = figure.get_tightbbox(canvas.get_renderer()).padded(pad if isinstance(pad, (int, float)) else 0.1)
    if engine is not None:
        # no engine at all (not "none", a placeholder): savefig then neither reruns the layout nor
        # makes its own measuring pass; the positions just computed stay. (None would mean the
        # rcParams' default engine if a user had set one.)
        with rc_context({"figure.autolayout": False, "figure.constrained_layout.use": False}):
            figure.set_layout_engine(None)
    try:
        with rc_context({"pdf.fonttype": 42, "ps.fonttype": 42}):
            for path in paths:
                figure.savefig(path, bbox_inches=box)
    finally:
        if engine is not None:
            figure.set_layout_engine(engine)
    return paths


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
        formats = tuple(self.run.options.get("figure_formats", DEFAULT_FIGURE_FORMATS))
        names = [*result.figures, *(n for n in result.figure_data if n not in result.figures)]
        figure_files = distinct_names(names)
        for name in names:
            rel = Path("figures") / folder / figure_files[name]
            figure = result.figures.get(name)  # None: drawing deferred, only the data is saved
            saved = save_figure(figure, self.run.run_dir / rel, formats) if figure is not None else []
            entry["figures"][name] = [path.relative_to(self.run.run_dir).as_posix() for path in saved]
            recipe = result.figure_data.get(name)
            if recipe is not None:  # the data behind the figure, for `interpsuite figures`
                data_rel = Path("figure_data") / folder / figure_files[name]
                recipe.save(self.run.run_dir / data_rel)
                entry.setdefault("figure_data", {})[name] = data_rel.as_posix()

    def save(self, payload: dict[str, Any]) -> None:
        write_results(self.results_path, payload)
