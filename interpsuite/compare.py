"""Compare finished runs of different models: one self-contained HTML report with overlay figures.

Models differ in depth, so every per-layer overlay uses relative depth, layer / (n_layers - 1),
with the layer count in the legend. Each figure's exact data goes to comparison.json so it can be
redrawn without the runs. A run that lacks an analysis is listed as "not run" in that section,
never an error: comparing whatever runs exist is the point. Everything that can be wrong with the
inputs is found before the first file is written, so a refused comparison leaves nothing behind.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError
from .results import RESULTS_FILE, to_jsonable

if TYPE_CHECKING:
    import pandas as pd

DEFAULT_OUT = "comparison"
FIGURE_FORMATS = ("png", "pdf")
#: head_classification's labels in its own precedence order, then the fallbacks
HEAD_LABELS = ("induction", "previous_token", "first_token", "self", "local", "mixed")


@dataclass
class RunData:
    """One run directory as read from disk: its payload and the label it has in the report."""

    path: Path
    payload: dict[str, Any]
    label: str = ""

    @property
    def model(self) -> dict[str, Any]:
        model = self.payload.get("model")
        return model if isinstance(model, dict) else {}

    @property
    def model_name(self) -> str:
        return str(self.model.get("name", "?"))

    @property
    def n_layers(self) -> int | None:
        value = self.model.get("n_layers")
        return int(value) if isinstance(value, (int, float)) and value >= 1 else None

    @property
    def legend(self) -> str:
        layers = self.n_layers
        return f"{self.label} ({layers} layers)" if layers else self.label


@dataclass
class Section:
    """Whether one comparable analysis made it into the report, and each run's part in it."""

    name: str
    title: str
    present: bool = False
    reason: str = ""
    #: run label -> "ok" or why the run is not in this section ("not run", "skipped: ...", ...)
    runs: dict[str, str] = field(default_factory=dict)
    figures: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "present": self.present,
            "reason": self.reason,
            "runs": dict(self.runs),
            "figures": list(self.figures),
        }


@dataclass
class FigureData:
    """What one figure shows, exactly as drawn (written to comparison.json for redrawing)."""

    name: str
    section: str
    title: str
    kind: str
    data: dict[str, Any]
    figure: Any = None  # the matplotlib Figure until it is saved


@dataclass
class ComparisonReport:
    out_dir: Path
    html: Path
    json: Path
    runs: list[str]
    figures: dict[str, list[Path]]
    sections: list[Section]

    def section(self, name: str) -> Section:
        return next(s for s in self.sections if s.name == name)


# --- reading runs -----------------------------------------------------------------------------
def expand_run_dirs(paths: list[str | Path]) -> list[Path]:
    """A Hydra multirun folder (no results.json, numbered subfolders that have one) stands for its
    runs, so `interpsuite compare multirun/2026-01-01/12-00-00` works without listing them."""
    resolved = [Path(p) for p in paths]
    if len(resolved) == 1 and resolved[0].is_dir() and not (resolved[0] / RESULTS_FILE).is_file():
        subs = [p for p in resolved[0].iterdir() if p.is_dir() and (p / RESULTS_FILE).is_file()]
        if subs:
            return sorted(subs, key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name))
    return resolved


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def load_run(path: str | Path) -> RunData:
    """Read and vet one run directory; every problem is a one-line ConfigError naming the fix."""
    run_dir = Path(path)
    if not run_dir.exists():
        raise ConfigError(f"compare: run directory {run_dir} does not exist; pass finished run directories")
    results = run_dir / RESULTS_FILE
    if not results.is_file():
        raise ConfigError(
            f"compare: {run_dir} has no {RESULTS_FILE}; pass a finished run directory (or a multirun folder alone)"
        )
    try:
        payload = json.loads(results.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(
            f"compare: {results} is not valid JSON ({err}); rerun that experiment or leave it out"
        ) from None
    if not isinstance(payload, dict) or not isinstance(payload.get("analyzers", {}), dict):
        raise ConfigError(f"compare: {results} is not a results.json object; rerun that experiment or leave it out")
    for analyzer, entry in payload.get("analyzers", {}).items():
        tables = entry.get("tables", {}) if isinstance(entry, dict) else {}
        for name, rel in (tables or {}).items():
            if not isinstance(rel, str) or Path(rel).is_absolute() or not _inside(run_dir / rel, run_dir):
                raise ConfigError(
                    f"compare: {results} lists table {analyzer}/{name} at {rel!r}, outside the run directory; "
                    f"tables must be under {run_dir}/tables (fix or regenerate that results.json)"
                )
    return RunData(path=run_dir, payload=payload)


def _label_runs(runs: list[RunData]) -> None:
    """Model names label the runs; runs of the same model are told apart by their folder names."""
    counts: dict[str, int] = {}
    for run in runs:
        counts[run.model_name] = counts.get(run.model_name, 0) + 1
    seen: set[str] = set()
    for run in runs:
        label = run.model_name if counts[run.model_name] == 1 else f"{run.model_name} ({run.path.name})"
        base, i = label, 2
        while label in seen:
            label, i = f"{base} #{i}", i + 1
        seen.add(label)
        run.label = label


def read_table(run: RunData, analyzer: str, table: str) -> tuple[pd.DataFrame | None, str]:
    """The table, or None with why it is not there (the section lists that reason for the run)."""
    import pandas as pd

    entry = run.payload.get("analyzers", {}).get(analyzer)
    if not isinstance(entry, dict):
        return None, "not run"
    status = entry.get("status", "ok")
    if status != "ok":
        error = entry.get("error")
        return None, f"{status}: {error}" if error else str(status)
    rel = (entry.get("tables") or {}).get(table)
    if rel is None:
        return None, f"no {table} table"
    path = run.path / rel
    if not _inside(path, run.path):  # vetted in load_run; kept so no caller can read outside a run
        return None, f"table {rel} outside the run directory"
    if not path.is_file():
        return None, f"table file {rel} missing"
    try:
        frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    except Exception as err:  # an unreadable table drops this run from one section, not the report
        return None, f"table {rel} unreadable ({type(err).__name__})"
    return frame, "ok"


def relative_depth(layers: Any, n_layers: int | None) -> list[float]:
    """layer / (n_layers - 1): 0 is the first block, 1 the last, whatever the model's depth."""
    denominator = (n_layers - 1) if n_layers and n_layers > 1 else 1
    return [float(layer) / denominator for layer in layers]


def _floats(values: Any) -> list[float | None]:
    out: list[float | None] = []
    for v in values:
        try:
            f = float(v)
        except (TypeError, ValueError):
            f = math.nan
        out.append(f if math.isfinite(f) else None)
    return out


def _has(values: list[float | None]) -> bool:
    return any(v is not None for v in values)


def _depth_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows of real blocks: the embedding row (layer -1) and unreadable layers have no depth."""
    import pandas as pd

    layers = pd.to_numeric(frame["layer"], errors="coerce")
    frame = frame.assign(layer=layers)
    return frame[layers.notna() & (layers >= 0)].astype({"layer": int})


# --- sections ---------------------------------------------------------------------------------
def _probe_section(runs: list[RunData], style: Any) -> tuple[Section, list[FigureData]]:
    section = Section("probe_curves", "Linear probe accuracy by relative depth")
    by_task: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for run in runs:
        frame, why = read_table(run, "linear_probe", "probe_curves")
        if frame is not None and not {"task", "layer", "accuracy"} <= set(frame.columns):
            frame, why = None, "probe_curves table lacks task/layer/accuracy columns"
        section.runs[run.label] = why
        if frame is None:
            continue
        frame = _depth_rows(frame)
        if "hook_point" not in frame.columns:
            frame = frame.assign(hook_point="")
        for (task, hook_point), rows in frame.groupby(["task", "hook_point"], sort=True):
            rows = rows.sort_values("layer")
            layers = [int(v) for v in rows["layer"]]

            def column(name: str, rows: pd.DataFrame = rows) -> list[float | None]:
                return _floats(rows[name]) if name in rows.columns else [None] * len(rows)

            by_task.setdefault((str(task), str(hook_point)), {})[run.label] = {
                "legend": run.legend,
                "n_layers": run.n_layers,
                "layer": layers,
                "relative_depth": relative_depth(layers, run.n_layers),
                **{
                    name: column(name)
                    for name in (
                        "accuracy",
                        "accuracy_ci_low",
                        "accuracy_ci_high",
                        "control_accuracy",
                        "selectivity",
                        "chance",
                    )
                },
            }
    figures = []
    hooks_of: dict[str, set[str]] = {}
    for task, hook_point in by_task:
        hooks_of.setdefault(task, set()).add(hook_point)
    for (task_name, hook_point), series in by_task.items():
        # linear_probe writes one curve per hook point: name it only when a task has several
        task = f"{task_name} {hook_point}".strip() if len(hooks_of[task_name]) > 1 else task_name
        figures.append(
            _line_figure(
                f"probe_accuracy_{task}",
                section.name,
                f"Probe accuracy: {task}",
                "accuracy",
                series,
                "accuracy",
                ("accuracy_ci_low", "accuracy_ci_high"),
                style,
                chance="chance",
            )
        )
        with_sel = {k: v for k, v in series.items() if _has(v["selectivity"])}
        if with_sel:
            figures.append(
                _line_figure(
                    f"probe_selectivity_{task}",
                    section.name,
                    f"Probe selectivity: {task}",
                    "selectivity (accuracy - control)",
                    with_sel,
                    "selectivity",
                    None,
                    style,
                )
            )
    return section, figures


def _cka_section(runs: list[RunData], style: Any) -> tuple[Section, list[FigureData]]:
    section = Section("cka", "Representation similarity (CKA)")
    adjacent: dict[str, dict[str, Any]] = {}
    figures: list[FigureData] = []
    for run in runs:
        notes = []
        layer_table, why_layers = read_table(run, "representation_similarity", "layer_similarity")
        if layer_table is not None and {"layer_a", "layer_b", "cka"} <= set(layer_table.columns):
            lookup = {
                (int(a), int(b)): c
                for a, b, c in zip(layer_table["layer_a"], layer_table["layer_b"], layer_table["cka"], strict=True)
            }
            layers = sorted({a for a, _ in lookup})
            pairs = [(a, b) for a, b in zip(layers, layers[1:], strict=False) if (a, b) in lookup]
            if pairs:
                mids = [(a + b) / 2 for a, b in pairs]
                adjacent[run.label] = {
                    "legend": run.legend,
                    "n_layers": run.n_layers,
                    "layer_a": [a for a, _ in pairs],
                    "layer_b": [b for _, b in pairs],
                    "relative_depth": relative_depth(mids, run.n_layers),
                    "cka": _floats(lookup[p] for p in pairs),
                }
        elif layer_table is not None:
            notes.append("layer_similarity table lacks layer_a/layer_b/cka")
        cross, why_cross = read_table(run, "representation_similarity", "model_similarity")
        if cross is not None and {"model_b", "layer_a", "layer_b", "cka"} <= set(cross.columns):
            for other, rows in cross.groupby("model_b", sort=True):
                layers_a = sorted(int(v) for v in rows["layer_a"].unique())
                layers_b = sorted(int(v) for v in rows["layer_b"].unique())
                cell = {
                    (int(a), int(b)): c for a, b, c in zip(rows["layer_a"], rows["layer_b"], rows["cka"], strict=True)
                }
                matrix = [_floats(cell.get((a, b), math.nan) for b in layers_b) for a in layers_a]
                data = {
                    "model_a": run.label,
                    "model_b": str(other),
                    "layer_a": layers_a,
                    "layer_b": layers_b,
                    "cka": matrix,
                }
                figures.append(
                    _heatmap_figure(
                        f"cka_{run.label}_vs_{other}", section.name, f"CKA: {run.label} vs {other}", data, style
                    )
                )
        elif why_cross not in ("ok", "not run") and not why_cross.startswith("no "):
            notes.append(f"model_similarity: {why_cross}")
        has_any = run.label in adjacent or (cross is not None and "model_b" in cross.columns)
        section.runs[run.label] = "ok" if has_any else (why_layers if why_layers != "ok" else "no CKA data")
        if has_any and notes:
            section.runs[run.label] = "ok; " + "; ".join(notes)
    if adjacent:
        figures.insert(
            0,
            _line_figure(
                "cka_adjacent_layers",
                section.name,
                "CKA between adjacent layers",
                "linear CKA (layer L, L+1)",
                adjacent,
                "cka",
                None,
                style,
            ),
        )
    return section, figures


def _head_section(runs: list[RunData], style: Any) -> tuple[Section, list[FigureData]]:
    section = Section("head_types", "Attention head types (head_classification)")
    counts: dict[str, dict[str, Any]] = {}
    for run in runs:
        frame, why = read_table(run, "head_classification", "head_scores")
        if frame is not None and "label" not in frame.columns:
            frame, why = None, "head_scores table has no label column"
        section.runs[run.label] = why
        if frame is None:
            continue
        values = frame["label"].astype(str).value_counts()
        counts[run.label] = {
            "legend": run.legend,
            "n_heads_total": int(len(frame)),
            "counts": {str(k): int(v) for k, v in values.items()},
        }
    if not counts:
        return section, []
    seen = {label for entry in counts.values() for label in entry["counts"]}
    labels = list(HEAD_LABELS) + sorted(seen - set(HEAD_LABELS))  # zeros too: "none found" is a finding
    for entry in counts.values():
        entry["counts"] = {x: entry["counts"].get(x, 0) for x in labels}
        total = entry["n_heads_total"] or 1
        entry["fractions"] = {x: entry["counts"][x] / total for x in labels}
    data = {"labels": labels, "runs": counts}
    return section, [_bar_figure("head_types", section.name, "Head types per model", data, style)]


def _lens_section(runs: list[RunData], style: Any) -> tuple[Section, list[FigureData]]:
    section = Section("logit_lens", "Logit-lens convergence to the final prediction")
    series: dict[str, dict[str, Any]] = {}
    for run in runs:
        frame, why = read_table(run, "logit_lens", "layers")
        if frame is not None and ("layer" not in frame.columns or not {"kl_to_final", "top1_agreement"} & set(frame)):
            frame, why = None, "layers table lacks layer, or both kl_to_final and top1_agreement"
        section.runs[run.label] = why
        if frame is None:
            continue
        frame = _depth_rows(frame).sort_values("layer")
        layers = [int(v) for v in frame["layer"]]
        series[run.label] = {
            "legend": run.legend,
            "n_layers": run.n_layers,
            "layer": layers,
            "relative_depth": relative_depth(layers, run.n_layers),
            **{
                c: (_floats(frame[c]) if c in frame.columns else [None] * len(frame))
                for c in ("kl_to_final", "top1_agreement")
            },
        }
    figures = []
    if series:
        figures.append(
            _line_figure(
                "logit_lens_kl_to_final",
                section.name,
                "Logit lens: KL(final || layer)",
                "KL to final (nats)",
                series,
                "kl_to_final",
                None,
                style,
            )
        )
        figures.append(
            _line_figure(
                "logit_lens_top1_agreement",
                section.name,
                "Logit lens: top-1 agreement with the final layer",
                "top-1 agreement",
                series,
                "top1_agreement",
                None,
                style,
            )
        )
    return section, figures


SECTIONS = (_probe_section, _cka_section, _head_section, _lens_section)


# --- figures ----------------------------------------------------------------------------------
def _line_figure(
    name: str,
    section: str,
    title: str,
    ylabel: str,
    series: dict[str, dict[str, Any]],
    y: str,
    band: tuple[str, str] | None,
    style: Any,
    chance: str | None = None,
) -> FigureData:
    """One line per model over relative depth (so models of any depth overlay), with an optional band."""
    fig, axes = style.figure()
    ax = axes[0, 0]
    for i, (_label, s) in enumerate(series.items()):
        color = f"C{i % 10}"
        points = [(x, v) for x, v in zip(s["relative_depth"], s[y], strict=True) if v is not None]
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", ms=3, color=color, label=s["legend"])
        if band and _has(s[band[0]]) and _has(s[band[1]]):
            rows = [
                (x, lo, hi)
                for x, lo, hi in zip(s["relative_depth"], s[band[0]], s[band[1]], strict=True)
                if lo is not None and hi is not None
            ]
            ax.fill_between([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], color=color, alpha=0.2)
        if chance and _has(s.get(chance, [])):
            level = next(v for v in s[chance] if v is not None)
            ax.axhline(level, color=color, ls=":", lw=0.8)
    ax.set_xlabel("relative depth (layer / (n_layers - 1))")
    ax.set_ylabel(ylabel)
    ax.set_xlim(-0.03, 1.03)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    data = {"x": "relative_depth", "y": y, "band": list(band) if band else None, "series": series}
    return FigureData(name, section, title, "line", data, fig)


def _heatmap_figure(name: str, section: str, title: str, data: dict[str, Any], style: Any) -> FigureData:
    import numpy as np

    fig, axes = style.figure()
    ax = axes[0, 0]
    matrix = np.array([[np.nan if v is None else v for v in row] for row in data["cka"]], dtype=float)
    image = ax.imshow(matrix, origin="lower", aspect="auto", cmap=style.cmap, vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(data["layer_b"])), [str(v) for v in data["layer_b"]])
    ax.set_yticks(range(len(data["layer_a"])), [str(v) for v in data["layer_a"]])
    ax.set_xlabel(f"{data['model_b']} layer")
    ax.set_ylabel(f"{data['model_a']} layer")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="CKA")
    return FigureData(name, section, title, "heatmap", data, fig)


def _bar_figure(name: str, section: str, title: str, data: dict[str, Any], style: Any) -> FigureData:
    """Counts and fractions side by side: head counts differ between models, fractions compare."""
    import numpy as np

    fig, axes = style.figure(1, 2, scale=(1.5, 1.0))
    labels = data["labels"]
    runs = data["runs"]
    width = 0.8 / max(len(runs), 1)
    x = np.arange(len(labels))
    for i, entry in enumerate(runs.values()):
        offset = (i - (len(runs) - 1) / 2) * width
        axes[0, 0].bar(x + offset, [entry["counts"][k] for k in labels], width, label=entry["legend"])
        axes[0, 1].bar(x + offset, [entry["fractions"][k] for k in labels], width, label=entry["legend"])
    for ax, ylabel in zip(axes[0], ("heads", "fraction of heads"), strict=True):
        ax.set_xticks(x, labels, rotation=30, ha="right")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, axis="y")
    axes[0, 0].set_title("count")
    axes[0, 1].set_title("fraction")
    axes[0, 1].legend(fontsize="small")
    fig.suptitle(title)
    return FigureData(name, section, title, "bar", data, fig)


# --- the report -------------------------------------------------------------------------------
def _check_out_dir(out: Path, runs: list[RunData]) -> None:
    for run in runs:
        if out.resolve() == run.path.resolve():
            raise ConfigError(
                f"compare: the output folder {out} is the run directory {run.path}; choose another --out "
                f"(default ./{DEFAULT_OUT})"
            )
    if out.exists() and not out.is_dir():
        raise ConfigError(f"compare: the output path {out} is a file; choose a folder for --out")


def check_same_inputs(runs: list[RunData]) -> None:
    """Curves of models fed different texts are not comparable: refuse, naming both.

    The data group (`inputs.data`: source and number of texts) must agree; token counts may
    differ, since every tokenizer splits the same texts its own way.
    """
    seen: dict[tuple[Any, Any], str] = {}
    for run in runs:
        data = (run.payload.get("inputs") or {}).get("data") or {}
        key = (data.get("source"), data.get("count"))
        seen.setdefault(key, run.label or run.path.name)
    if len(seen) > 1:
        described = "; ".join(f"{label}: {count} texts from {source}" for (source, count), label in seen.items())
        raise ConfigError(
            f"compare: the runs were made on different inputs ({described}); compare runs of the same data, "
            f"or pass --allow-different-inputs"
        )


def compare_runs(
    run_dirs: list[str | Path], out_dir: str | Path = DEFAULT_OUT, *, allow_different_inputs: bool = False
) -> ComparisonReport:
    """Write comparison.html, comparison.json and figures/ for the runs into `out_dir`."""
    from .figures import FigureStyle
    from .sinks.rundir import safe_name, save_figure

    paths = expand_run_dirs(list(run_dirs))
    if len(paths) < 2:
        raise ConfigError(
            f"compare: need at least 2 run directories, got {len(paths)}; pass two or more (or one multirun folder)"
        )
    runs = [load_run(p) for p in paths]
    out = Path(out_dir)
    _check_out_dir(out, runs)
    _label_runs(runs)
    if not allow_different_inputs:
        check_same_inputs(runs)

    style = FigureStyle()
    sections: list[Section] = []
    figures: list[FigureData] = []
    for build in SECTIONS:
        section, made = build(runs, style)
        section.present = any(status == "ok" or status.startswith("ok;") for status in section.runs.values())
        if not section.present:
            section.reason = "no run has this analysis: " + "; ".join(f"{k}: {v}" for k, v in section.runs.items())
        used: set[str] = {f.name for f in figures}
        for item in made:
            stem, i = safe_name(item.name), 2
            while stem in used:
                stem, i = f"{safe_name(item.name)}_{i}", i + 1
            used.add(stem)
            item.name = stem
            section.figures.append(stem)
        sections.append(section)
        figures.extend(made)

    figure_dir = out / "figures"
    written: dict[str, list[Path]] = {}
    for item in figures:
        written[item.name] = save_figure(item.figure, figure_dir / item.name, FIGURE_FORMATS)
        item.figure = None  # frees it: a report of many models would otherwise hold every figure

    payload = {
        "runs": [
            {
                "label": r.label,
                "run_dir": str(r.path),
                "model": r.model,
                "experiment": r.payload.get("experiment"),
                "status": r.payload.get("status"),
            }
            for r in runs
        ],
        "sections": [s.to_dict() for s in sections],
        "figures": {
            f.name: {
                "section": f.section,
                "title": f.title,
                "kind": f.kind,
                "files": [p.name for p in written[f.name]],
                "data": f.data,
            }
            for f in figures
        },
    }
    out.mkdir(parents=True, exist_ok=True)  # runs with no shared analysis draw no figure
    json_path = out / "comparison.json"
    json_path.write_text(json.dumps(to_jsonable(payload), indent=2, allow_nan=False))

    from .compare_html import render_html

    html_path = out / "comparison.html"
    html_path.write_text(render_html(runs, sections, figures, written), encoding="utf-8")
    return ComparisonReport(
        out_dir=out,
        html=html_path,
        json=json_path,
        runs=[r.label for r in runs],
        figures=written,
        sections=sections,
    )


def compare_command(run_dirs: list[str], out: str, allow_different_inputs: bool = False) -> int:
    report = compare_runs(run_dirs, out, allow_different_inputs=allow_different_inputs)
    present = [s.name for s in report.sections if s.present]
    absent = [s.name for s in report.sections if not s.present]
    print(f"compared {len(report.runs)} runs: {', '.join(report.runs)}")
    print(f"sections: {', '.join(present) or 'none'}" + (f" (absent: {', '.join(absent)})" if absent else ""))
    print(f"report: {report.html}")
    return 0
