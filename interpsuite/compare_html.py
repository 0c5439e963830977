"""The comparison report as one HTML file that opens anywhere, offline: figures are inlined as
base64 PNG and the CSS is in the page, so the file can be mailed or archived on its own."""

from __future__ import annotations

import base64
import math
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .compare import FigureData, RunData, Section

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1200px; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f2f2f2; }
tr.fail td { background: #fde2e2; color: #8a1010; font-weight: bold; }
.absent { color: #777; font-style: italic; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }
code { background: #f6f6f6; padding: 0 0.2em; }
"""


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "" if not math.isfinite(value) else f"{value:.4g}"
    return escape("" if value is None else str(value))


def _table(header: list[str], rows: list[list[Any]], row_classes: list[str] | None = None) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cls = row_classes[i] if row_classes else ""
        attr = f' class="{escape(cls)}"' if cls else ""
        body.append(f"<tr{attr}>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _image(path: Path, alt: str) -> str:
    encoded = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{encoded}">'


def _runs_table(runs: list[RunData]) -> str:
    rows = [
        [
            r.label,
            r.model_name,
            r.model.get("architecture"),
            r.model.get("n_layers"),
            r.model.get("d_model"),
            r.payload.get("experiment"),
            r.payload.get("status"),
            str(r.path),
        ]
        for r in runs
    ]
    header = ["label", "model", "architecture", "n_layers", "d_model", "experiment", "status", "run dir"]
    return _table(header, rows)


def _checks(run: RunData) -> str:
    rows, classes = [], []
    for analyzer, entry in run.payload.get("analyzers", {}).items():
        for name, check in ((entry or {}).get("checks") or {}).items():
            check = check if isinstance(check, dict) else {}
            passed = check.get("passed")
            rows.append([analyzer, name, check.get("value"), check.get("threshold"), passed])
            classes.append("" if passed else "fail")
    failed = classes.count("fail")
    title = f"<h3>{escape(run.label)}: {len(rows) - failed}/{len(rows)} checks passed</h3>"
    if not rows:
        return title + '<p class="absent">no checks recorded</p>'
    return title + _table(["analyzer", "check", "value", "threshold", "passed"], rows, classes)


def render_html(
    runs: list[RunData], sections: list[Section], figures: list[FigureData], written: dict[str, list[Path]]
) -> str:
    by_name = {f.name: f for f in figures}
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>interpsuite model comparison</title>',
        f"<style>{CSS}</style></head><body>",
        "<h1>Model comparison</h1>",
        "<p>Per-layer curves use relative depth, layer / (n_layers - 1); the legend gives each "
        "model's layer count.</p>",
        "<h2>Runs</h2>",
        _runs_table(runs),
    ]
    for section in sections:
        parts.append(f'<h2 id="{escape(section.name)}">{escape(section.title)}</h2>')
        if not section.present:
            parts.append(f'<p class="absent">absent: {escape(section.reason)}</p>')
            continue
        parts.append(_table(["run", "status"], [[label, status] for label, status in section.runs.items()]))
        for name in section.figures:
            png = next((p for p in written.get(name, []) if p.suffix == ".png"), None)
            if png is not None:
                parts.append(f"<h3>{escape(by_name[name].title)}</h3>")
                parts.append(_image(png, by_name[name].title))
    parts.append("<h2>Checks</h2>")
    parts.extend(_checks(run) for run in runs)
    parts.append("</body></html>")
    return "\n".join(parts)
