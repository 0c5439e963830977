"""Result: what one analyzer produced; and the results.json reader/writer (DESIGN.md contract)."""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RESULTS_FILE = "results.json"

#: inside `figures_deferred()`, add_figure saves a figure's data without drawing it
_DEFER_DRAWING: ContextVar[bool] = ContextVar("interpsuite_defer_drawing", default=False)


@contextlib.contextmanager
def figures_deferred() -> Iterator[None]:
    """Figures made inside are saved as data only; `interpsuite figures RUN_DIR` draws them later.

    For runs repeated many times where nobody looks at every picture (the training monitor):
    on a small model, drawing and saving figures costs more than the analyses themselves.
    """
    token = _DEFER_DRAWING.set(True)
    try:
        yield
    finally:
        _DEFER_DRAWING.reset(token)


@dataclass
class Check:
    """A property an analyzer verified about its own output.

    `passed` is value <= threshold for mode "max" (an error bound), value >= threshold for
    mode "min" (a score that must reach a level).
    """

    value: float
    threshold: float
    mode: str = "max"

    @property
    def passed(self) -> bool:
        if not math.isfinite(self.value):
            return False
        return self.value <= self.threshold if self.mode == "max" else self.value >= self.threshold

    def to_dict(self) -> dict:
        return {"value": float(self.value), "threshold": float(self.threshold), "passed": self.passed}


@dataclass
class Result:
    """Metrics (flat numeric), tables (DataFrames), figures (matplotlib), checks, summary.

    Analyzers fill it; sinks decide where each part goes. `status`, `error` and
    `duration_s` are set by the pipeline.
    """

    metrics: dict[str, float] = field(default_factory=dict)
    tables: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    checks: dict[str, Check] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    #: text files (self-contained HTML views, reports): name with suffix -> content
    artifacts: dict[str, str] = field(default_factory=dict)
    #: figure name -> the data it was drawn from (`add_figure`), saved so it can be redrawn
    figure_data: dict[str, Any] = field(default_factory=dict)
    #: table name -> its step column, for tables that are curves over steps (a training
    #: history): W&B logs each row against that step, so the curves plot there as lines
    curves: dict[str, str] = field(default_factory=dict)
    status: str = "ok"
    error: str | None = None
    duration_s: float = 0.0

    def add_check(self, name: str, value: float, threshold: float, mode: str = "max") -> Check:
        check = Check(float(value), float(threshold), mode)
        self.checks[name] = check
        return check

    def add_figure(self, name: str, plot: Any, *args: Any, **kwargs: Any) -> Any:
        """Draw `plot(*args, **kwargs)` as `figures[name]` and keep its data for redrawing.

        `plot` is a pure function marked with `@figure_function`; its FigureStyle argument
        (if any) is applied around the call and replaced by the chosen style when the figure
        is redrawn by `interpsuite figures`. The arguments are saved as they are now.
        Inside `figures_deferred()` only the data is kept (returns None).
        """
        from .figure_data import FigureRecipe, UnsavableArgumentError
        from .figures import FigureStyle

        style = next((a for a in (*args, *kwargs.values()) if isinstance(a, FigureStyle)), None)
        try:
            recipe = FigureRecipe.capture(plot, args, kwargs, style)
        except UnsavableArgumentError as err:
            from .errors import PluginError

            raise PluginError(f"figure {name!r}: {err}") from None
        self.figure_data[name] = recipe
        if _DEFER_DRAWING.get():
            return None
        context = style.context() if style is not None else contextlib.nullcontext()
        with context:
            figure = plot(*args, **kwargs)
        self.figures[name] = figure
        return figure

    @property
    def failed_checks(self) -> list[str]:
        return [name for name, check in self.checks.items() if not check.passed]

    @classmethod
    def failure(cls, error: BaseException, duration_s: float) -> Result:
        return cls(status="failed", error=f"{type(error).__name__}: {error}", duration_s=duration_s)


def to_jsonable(value: Any) -> Any:
    """Numbers, arrays and tensors in summaries become plain JSON (NaN/inf become null)."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "tolist"):
        return to_jsonable(value.tolist())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    return str(value)


def write_results(path: Path, payload: dict) -> None:
    """Write atomically, so an interrupted run never leaves a half-written results.json."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(to_jsonable(payload), indent=2, allow_nan=False))
    tmp.replace(path)


def read_results(run_dir: str | Path) -> dict:
    """Load a run's results.json (plain JSON: nothing is unpickled)."""
    path = Path(run_dir)
    if path.is_dir():
        path = path / RESULTS_FILE
    return json.loads(path.read_text())


REQUIRED_RUN_KEYS = ("interpsuite_version", "experiment", "model", "inputs", "duration_s", "analyzers")
REQUIRED_ANALYZER_KEYS = ("status", "error", "duration_s", "metrics", "tables", "figures", "checks", "summary")


def contract_errors(payload: dict, run_dir: Path | None = None) -> list[str]:
    """Every way a results.json payload breaks the contract (empty list: it conforms)."""
    errors = [f"missing key {key!r}" for key in REQUIRED_RUN_KEYS if key not in payload]
    for name, entry in payload.get("analyzers", {}).items():
        errors += [f"{name}: missing {key!r}" for key in REQUIRED_ANALYZER_KEYS if key not in entry]
        if entry.get("status") not in ("ok", "failed", "skipped", "interrupted"):
            errors.append(f"{name}: status {entry.get('status')!r}")
        for key, value in entry.get("metrics", {}).items():
            if value is not None and not isinstance(value, (int, float)):
                errors.append(f"{name}: metric {key} is not numeric")
        for key, check in entry.get("checks", {}).items():
            if set(check) != {"value", "threshold", "passed"}:
                errors.append(f"{name}: check {key} has keys {sorted(check)}")
        if run_dir is not None:
            for rel in entry.get("tables", {}).values():
                if not (run_dir / rel).is_file():
                    errors.append(f"{name}: table file {rel} missing")
            for rel in entry.get("artifacts", {}).values():
                if not (run_dir / rel).is_file():
                    errors.append(f"{name}: artifact file {rel} missing")
            for paths in entry.get("figures", {}).values():
                for rel in paths:
                    if not (run_dir / rel).is_file():
                        errors.append(f"{name}: figure file {rel} missing")
            for figure, rel in entry.get("figure_data", {}).items():
                if figure not in entry.get("figures", {}):
                    errors.append(f"{name}: figure data {rel} for a figure that is not listed")
                if not (run_dir / rel / "figure.json").is_file():
                    errors.append(f"{name}: figure data {rel}/figure.json missing")
    return errors
