"""Metrics over training: run analyzers on each checkpoint, then summarise how they change.

`python -m interpsuite +experiment=temporal checkpoints=<dir or list>` runs the configured
analyzers on every checkpoint (`<run>/checkpoints/step_000500/` for step 500, each a normal run directory
made by the same InterpretabilityPipeline as any run), then writes the summary into `<run>`
itself as a run directory with one analyzer-like entry, `temporal`:

- tables: `metrics` (step, analyzer, metric, value: every scalar metric of every step),
  `changes` (one row per metric: largest step-to-step change and best split point),
  `heads` (step, analyzer, table, column, layer, head, value for every heatmap);
- figures: `trend_<analyzer>` (each metric against the step, small multiples), one
  `heatmap_<analyzer>_<table>_<column>` per layer x head score (one panel per step, shared
  colour scale), `top_changes`; all drawn by `@figure_function`s, so `interpsuite figures`
  redraws them;
- optionally animations/<...>.gif (`temporal.animate`).

Given a training monitor's directory instead (monitor.json), nothing is loaded: its step
run directories are read, and the `train` values of steps.jsonl (loss ...) join the metrics.

Change points, per metric over the steps s_1 < ... < s_n with values v_1..v_n:
- largest change: the consecutive pair (s_i, s_i+1) with the largest |v_i+1 - v_i|;
- best split: the k (1 <= k < n) that maximises k(n-k)/n * (mean(v_k+1..n) - mean(v_1..k))^2,
  i.e. the one change in mean that explains most of the variance (least squares, as in binary
  segmentation). The plain difference of means alone would favour splitting off a single end
  point; the weight k(n-k)/n prefers splits backed by many steps. `split_step` is s_k+1, the
  first step after the change; `relative_shift` is the mean shift divided by the metric's range.
"""

from __future__ import annotations

import copy
import fnmatch
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .checkpoints import Checkpoint, MonitorSource, ckpt_state_dict, discover, read_ckpt
from .errors import ConfigError
from .results import Result, read_results
from .settings import RunSettings, coerce_dataclass, constrained

if TYPE_CHECKING:  # pandas is imported when a summary is made, not with the CLI
    import pandas as pd

CHECKPOINTS_KEY = "checkpoints"
TEMPORAL_KEY = "temporal"
RUNS_FOLDER = "checkpoints"
ANALYZER_NAME = "temporal"
ANIMATION_FOLDER = "animations"


@dataclass
class TemporalSettings:
    """The `temporal:` block (conf/experiment/temporal.yaml)."""

    #: architecture and tokenizer of .ckpt files: an embedded model name or an HF folder
    base_model: str | None = None
    #: fnmatch patterns over `analyzer.metric` for the trend figures (null: every metric, capped)
    metrics: list[str] | None = None
    #: `analyzer.table.column` heatmaps against the step (null: every layer x head score found)
    heatmaps: list[str] | None = None
    #: false, true (= gif), gif or mp4 (mp4 needs ffmpeg)
    animate: str = constrained("false", choices=("false", "true", "gif", "mp4"))
    #: metrics listed in the summary (and the top_changes figure), by relative shift
    top_changes: int = constrained(10, min=1, example=10)
    #: panels per trend figure when `metrics` is not given (the metrics that moved most)
    max_panels: int = constrained(12, min=1, example=12)
    #: panels per heatmap figure (steps evenly spread, first and last kept)
    max_heatmap_steps: int = constrained(12, min=1, example=12)


@dataclass
class TemporalPlan:
    """What a temporal run will do, built and checked before any weights load."""

    output_dir: Path
    settings: TemporalSettings
    run_settings: RunSettings
    experiment: str = "temporal"
    checkpoints: list[Checkpoint] = field(default_factory=list)
    monitor: MonitorSource | None = None
    pipelines: list[Any] = field(default_factory=list)  # InterpretabilityPipeline per checkpoint

    def validate(self) -> None:
        """Every checkpoint's pipeline (analyzer options, data, run dir), before the first loads."""
        for pipeline in self.pipelines:
            pipeline.validate()


@dataclass
class TemporalOutcome:
    reports: list[Any]  # RunReport per checkpoint (empty for a monitor directory)
    result: Result
    run_dir: Path

    @property
    def exit_code(self) -> int:
        from .pipeline import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK

        codes = [r.exit_code for r in self.reports]
        if EXIT_INTERRUPTED in codes:
            return EXIT_INTERRUPTED
        if any(code != EXIT_OK for code in codes) or self.result.status != "ok":
            return EXIT_FAILED
        return EXIT_OK


def _animate_format(value: Any) -> str | None:
    text = str(value).lower()
    return None if text in ("false", "none", "") else ("gif" if text == "true" else text)


def _check_heatmap_specs(specs: list[str] | None) -> None:
    for spec in specs or []:
        if len(str(spec).split(".")) != 3 or not all(str(spec).split(".")):
            raise ConfigError(
                f"temporal.heatmaps: {spec!r} is not analyzer.table.column, "
                "e.g. head_classification.head_scores.induction"
            )


def plan_temporal(container: dict[str, Any], output_dir: str | Path, user_overrides=()) -> TemporalPlan | None:
    """None when `checkpoints` is not set (and no `temporal:` block asks for it); else the plan.

    `container` is the composed config as a plain dict; its `checkpoints` and `temporal` keys are
    removed, the rest configures every checkpoint's pipeline (model.name set per checkpoint).
    """
    from .pipeline import InterpretabilityPipeline

    source = container.pop(CHECKPOINTS_KEY, None)
    block = container.pop(TEMPORAL_KEY, None)
    if source in (None, "", []):
        if block is not None:
            raise ConfigError(
                "temporal: checkpoints is not set; give checkpoints=<directory> or checkpoints=[path,path,...]"
            )
        return None
    if container.get("models") not in (None, [], ""):
        raise ConfigError("checkpoints and models cannot be combined; compare models or checkpoints, one at a time")
    container.pop("models", None)
    block = dict(block or {})
    if isinstance(block.get("animate"), bool):  # YAML's true/false
        block["animate"] = str(block["animate"]).lower()
    settings = coerce_dataclass(TemporalSettings, block, TEMPORAL_KEY)
    _check_heatmap_specs(settings.heatmaps)
    if _animate_format(settings.animate) == "mp4":
        from matplotlib import animation

        if not animation.writers.is_available("ffmpeg"):
            raise ConfigError("temporal.animate=mp4 needs ffmpeg on the PATH; install it or use temporal.animate=gif")
    run_keys = {k: container[k] for k in RunSettings.__dataclass_fields__ if k in container}
    run_settings = coerce_dataclass(RunSettings, run_keys)
    output_dir = Path(output_dir)
    found = discover(source, settings.base_model)
    plan = TemporalPlan(output_dir, settings, run_settings, container.get("experiment_name") or "temporal")
    if isinstance(found, MonitorSource):
        plan.monitor = found
        return plan
    plan.checkpoints = found
    base = container.get("model") or {}
    if isinstance(base, str):
        base = {"name": base}
    for checkpoint in found:
        job = copy.deepcopy(container)
        name = str(checkpoint.path) if checkpoint.kind == "hf" else settings.base_model
        job["model"] = {**base, "name": name}
        job["experiment_name"] = plan.experiment
        run_dir = output_dir / RUNS_FOLDER / checkpoint.run_name
        plan.pipelines.append(
            InterpretabilityPipeline.from_config(job, output_dir=run_dir, user_overrides=user_overrides)
        )
    return plan


def temporal_plan(
    checkpoints: Any,
    analyzers: Any = None,
    data: Any = None,
    output_dir: str | Path = "outputs/temporal",
    temporal: dict[str, Any] | None = None,
    **settings: Any,
) -> TemporalPlan:
    """From Python: the plan for `checkpoints` (a directory, a list of paths or a monitor dir).

    `settings` are the top-level run settings (seed, batch_size, sinks, progress, figure_style ...).
    """
    if data is not None and not isinstance(data, dict):
        data = {"texts": [data]} if isinstance(data, str) else {"texts": list(data)}
    if analyzers is not None and not isinstance(analyzers, dict):
        analyzers = {name: {} for name in analyzers}
    container = {
        CHECKPOINTS_KEY: checkpoints,
        TEMPORAL_KEY: temporal or {},
        "analyzers": analyzers or {},
        "data": data or {},
        "experiment_name": settings.pop("experiment_name", "temporal"),
        **settings,
    }
    plan = plan_temporal(container, output_dir)
    assert plan is not None  # checkpoints is set
    return plan


# --- running -------------------------------------------------------------------------------


def load_lightning(checkpoint: Checkpoint, base_model: str, pipeline) -> Any:
    """The base model with the .ckpt's weights (strict: every tensor must fit), as a HookedModel."""
    from .models.hooked import HookedModel
    from .models.placement import resolve_placement
    from .models.sources import load_weights

    placement = resolve_placement(
        pipeline.device, pipeline.dtype, pipeline.device_map, pipeline.max_memory, pipeline.offload_dir
    )
    loaded = load_weights(base_model, seed=pipeline.seed, placement=placement)
    state = ckpt_state_dict(read_ckpt(checkpoint.path), checkpoint.path)
    stripped = {key[len(checkpoint.prefix) :]: value for key, value in state.items()}
    try:
        loaded.hf_model.load_state_dict(stripped, strict=True)
    except RuntimeError as err:
        detail = " ".join(str(err).split())[:300]
        raise ConfigError(
            f"checkpoint {checkpoint.path} does not fit temporal.base_model={base_model}: {detail}"
        ) from None
    return HookedModel(loaded.hf_model, loaded.tokenizer, checkpoint.info)


def run_temporal(plan: TemporalPlan) -> TemporalOutcome:
    """Run each checkpoint's pipeline in step order (one model in memory at a time), then summarise."""
    started = time.perf_counter()
    reports = []
    runs: list[tuple[int, Path]] = []
    if plan.monitor is not None:
        runs = [(s.step, s.run_dir) for s in plan.monitor.steps]
        train = {s.step: (s.record.get("train") or {}) for s in plan.monitor.steps}
    else:
        train = {}
        for checkpoint, pipeline in zip(plan.checkpoints, plan.pipelines, strict=True):
            model = None
            if checkpoint.kind == "lightning":
                model = pipeline.model = load_lightning(checkpoint, plan.settings.base_model, pipeline)
            try:
                report = pipeline.run()
            finally:
                if model is not None:
                    model.close()
                    pipeline.model = plan.settings.base_model  # drop the weights once the run is over
            reports.append(report)
            runs.append((checkpoint.step, report.run_dir))
    result = summarise(plan, runs, train)
    result.duration_s = time.perf_counter() - started
    write_summary(plan, result, runs, started)
    return TemporalOutcome(reports, result, plan.output_dir)


# --- collecting ------------------------------------------------------------------------------


def _read_table(run_dir: Path, rel: str) -> pd.DataFrame:
    import pandas as pd

    path = run_dir / rel
    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)


def collect_metrics(runs: list[tuple[int, Path]], train: dict[int, dict] | None = None) -> pd.DataFrame:
    """The long table: one row per (step, analyzer, metric) with its value (NaN where null)."""
    import pandas as pd

    rows = []
    for step, run_dir in runs:
        payload = read_results(run_dir)
        for analyzer, entry in (payload.get("analyzers") or {}).items():
            for metric, value in (entry.get("metrics") or {}).items():
                rows.append((step, analyzer, metric, math.nan if value is None else float(value)))
    for step, values in sorted((train or {}).items()):
        for metric, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                rows.append((step, "train", metric, float(value)))
    table = pd.DataFrame(rows, columns=["step", "analyzer", "metric", "value"])
    return table.sort_values(["analyzer", "metric", "step"], kind="stable").reset_index(drop=True)


def best_split(values: np.ndarray) -> int:
    """The k (1 <= k < n) maximising k(n-k)/n * (mean(values[k:]) - mean(values[:k]))^2; the first on ties.

    The least-squares single change in mean: this score is exactly how much the squared error
    about one mean drops when the series gets two means, split before index k.
    """
    n = len(values)
    total = np.cumsum(values)
    k = np.arange(1, n)
    before = total[:-1] / k
    after = (total[-1] - total[:-1]) / (n - k)
    score = k * (n - k) / n * (after - before) ** 2
    return int(np.argmax(score)) + 1


def change_points(metrics: pd.DataFrame) -> pd.DataFrame:
    """Per metric: the largest step-to-step change and the best single split (module docstring)."""
    import pandas as pd

    rows = []
    for (analyzer, metric), frame in metrics.groupby(["analyzer", "metric"], sort=True):
        frame = frame.dropna(subset=["value"]).sort_values("step")
        steps, values = frame["step"].to_numpy(), frame["value"].to_numpy(dtype=float)
        n = len(values)
        if n < 2:
            continue
        spread = float(values.max() - values.min())
        row = {"analyzer": analyzer, "metric": metric, "n_steps": n, "first": float(values[0])}
        row["last"] = float(values[-1])
        if spread == 0:  # constant: nothing moved, no change point
            rows.append({**row, "largest_change": 0.0, "mean_shift": 0.0, "relative_shift": 0.0})
            continue
        deltas = np.diff(values)
        i = int(np.argmax(np.abs(deltas)))  # the first of equal largest changes
        k = best_split(values)
        before, after = float(values[:k].mean()), float(values[k:].mean())
        rows.append(
            {
                **row,
                "largest_change_from": int(steps[i]),
                "largest_change_to": int(steps[i + 1]),
                "largest_change": float(deltas[i]),
                "split_step": int(steps[k]),
                "mean_before": before,
                "mean_after": after,
                "mean_shift": after - before,
                "relative_shift": (after - before) / spread,
            }
        )
    columns = [
        "analyzer", "metric", "n_steps", "first", "last", "largest_change_from", "largest_change_to",
        "largest_change", "split_step", "mean_before", "mean_after", "mean_shift", "relative_shift",
    ]  # fmt: skip
    table = pd.DataFrame(rows, columns=columns)
    for column in ("largest_change_from", "largest_change_to", "split_step"):
        table[column] = table[column].astype("Int64")  # empty for a constant metric
    order = table["relative_shift"].abs().sort_values(ascending=False, kind="stable").index
    return table.loc[order].reset_index(drop=True)


def _heatmap_candidates(runs: list[tuple[int, Path]]) -> list[str]:
    """analyzer.table.column of every layer x head table (one row per head) with float scores."""
    import pandas as pd

    found: list[str] = []
    for _, run_dir in runs[:1] + runs[-1:]:
        payload = read_results(run_dir)
        for analyzer, entry in (payload.get("analyzers") or {}).items():
            for name, rel in (entry.get("tables") or {}).items():
                table = _read_table(run_dir, rel)
                if not {"layer", "head"} <= set(table.columns) or table.duplicated(["layer", "head"]).any():
                    continue
                for column in table.columns:
                    if column not in ("layer", "head") and pd.api.types.is_float_dtype(table[column]):
                        spec = f"{analyzer}.{name}.{column}"
                        if spec not in found:
                            found.append(spec)
    return found


def collect_heads(runs: list[tuple[int, Path]], spec: str) -> tuple[np.ndarray, list[int], pd.DataFrame] | None:
    """[step, layer, head] values of `analyzer.table.column` (NaN where a step lacks a head); None if absent."""
    import pandas as pd

    analyzer, name, column = spec.split(".")
    frames = []
    for step, run_dir in runs:
        entry = (read_results(run_dir).get("analyzers") or {}).get(analyzer) or {}
        rel = (entry.get("tables") or {}).get(name)
        if rel is None:
            continue
        table = _read_table(run_dir, rel)
        if not {"layer", "head", column} <= set(table.columns):
            continue
        frame = table.groupby(["layer", "head"], as_index=False)[column].mean()
        frames.append(frame.assign(step=step).rename(columns={column: "value"}))
    if not frames:
        return None
    long = pd.concat(frames, ignore_index=True)
    n_layers, n_heads = int(long["layer"].max()) + 1, int(long["head"].max()) + 1
    steps = sorted(long["step"].unique().tolist())
    values = np.full((len(steps), n_layers, n_heads), np.nan)
    index = {s: i for i, s in enumerate(steps)}
    for step, layer, head, value in long[["step", "layer", "head", "value"]].itertuples(index=False):
        values[index[step], int(layer), int(head)] = value
    long = long.assign(analyzer=analyzer, table=name, column=column)
    return values, [int(s) for s in steps], long[["step", "analyzer", "table", "column", "layer", "head", "value"]]


def _selected_metrics(metrics: pd.DataFrame, changes: pd.DataFrame, settings: TemporalSettings) -> pd.DataFrame:
    """The metrics drawn: those matching `temporal.metrics`, else per analyzer the ones that moved most."""
    keys = metrics["analyzer"] + "." + metrics["metric"]
    if settings.metrics:
        chosen = keys.map(lambda key: any(fnmatch.fnmatchcase(key, p) for p in settings.metrics))
        return metrics[chosen]
    keep = []
    for analyzer, frame in changes.groupby("analyzer", sort=False):
        keep += [f"{analyzer}.{m}" for m in frame["metric"].head(settings.max_panels)]
    return metrics[keys.isin(keep)]


def summarise(plan: TemporalPlan, runs: list[tuple[int, Path]], train: dict[int, dict]) -> Result:
    """The `temporal` entry: tables, trend and heatmap figures, change points."""
    import pandas as pd

    from .temporal_figures import animate_heatmaps, plot_head_heatmaps, plot_metric_trends, plot_top_changes

    settings = plan.settings
    style = plan.run_settings.figure_style.style()
    result = Result()
    notes: list[str] = []
    metrics = collect_metrics(runs, train)
    changes = change_points(metrics)
    result.tables["metrics"] = metrics
    result.tables["changes"] = changes
    steps = [step for step, _ in runs]
    result.metrics.update({"n_steps": float(len(steps)), "first_step": float(steps[0]), "last_step": float(steps[-1])})
    result.metrics["n_metrics"] = float(len(changes))
    drawn = _selected_metrics(metrics, changes, settings)
    if settings.metrics and drawn.empty:
        notes.append(f"temporal.metrics {settings.metrics} matched no metric")
    splits = {
        (a, m): int(s)
        for a, m, s in zip(changes["analyzer"], changes["metric"], changes["split_step"], strict=True)
        if not pd.isna(s)
    }
    for analyzer, frame in drawn.groupby("analyzer", sort=True):
        if frame["step"].nunique() < 2 and len(steps) > 1:
            continue
        marks = {m: int(splits[(analyzer, m)]) for m in frame["metric"].unique() if (analyzer, m) in splits}
        table = frame[["step", "metric", "value"]].reset_index(drop=True)
        result.add_figure(f"trend_{analyzer}", plot_metric_trends, table, f"{analyzer} over training", marks, style)
    top = changes.dropna(subset=["split_step"]).head(settings.top_changes).reset_index(drop=True)
    if len(top):
        drawn_top = top[["analyzer", "metric", "split_step", "relative_shift"]].astype({"split_step": "int64"})
        result.add_figure("top_changes", plot_top_changes, drawn_top, style)
    specs = settings.heatmaps if settings.heatmaps is not None else _heatmap_candidates(runs)
    head_tables, animations = [], []
    fmt = _animate_format(settings.animate)
    for spec in specs:
        collected = collect_heads(runs, spec)
        if collected is None:
            notes.append(f"heatmap {spec}: no such table or column in the runs")
            continue
        values, head_steps, long = collected
        head_tables.append(long)
        name = "heatmap_" + spec.replace(".", "_")
        result.add_figure(name, plot_head_heatmaps, values, head_steps, spec, settings.max_heatmap_steps, style)
        if fmt is not None:
            path = plan.output_dir / ANIMATION_FOLDER / f"{spec.replace('.', '-')}.{fmt}"
            animate_heatmaps(values, head_steps, spec, path, style, fmt)
            animations.append(path.relative_to(plan.output_dir).as_posix())
    if head_tables:
        result.tables["heads"] = pd.concat(head_tables, ignore_index=True)
    if plan.monitor is not None:
        notes.append("read from the monitor's step run directories; no model was loaded")
    result.summary = {
        "source": "monitor" if plan.monitor is not None else "checkpoints",
        "steps": steps,
        "runs": {str(step): str(run_dir) for step, run_dir in runs},
        "top_changes": [
            {
                "metric": f"{row.analyzer}.{row.metric}",
                "split_step": int(row.split_step),
                "mean_before": round(row.mean_before, 6),
                "mean_after": round(row.mean_after, 6),
                "largest_change": f"{row.largest_change:+.4g} from step {row.largest_change_from} to "
                f"{row.largest_change_to}",
            }
            for row in top.itertuples()
        ],
        "heatmaps": [spec for spec in specs if f"heatmap_{spec.replace('.', '_')}" in result.figures],
        "animations": animations,
        "notes": notes,
    }
    if plan.monitor is not None:
        result.summary["monitor"] = {
            k: plan.monitor.monitor.get(k) for k in ("status", "train_time_s", "monitor_time_s", "monitor_fraction")
        }
    return result


def write_summary(plan: TemporalPlan, result: Result, runs: list[tuple[int, Path]], started: float) -> dict:
    """`<run>/results.json` with the `temporal` entry, through the run-directory sink (the contract)."""
    from .pipeline import record_result

    first = read_results(runs[0][1])
    model = plan.monitor.monitor.get("model") if plan.monitor is not None else None
    return record_result(
        plan.output_dir,
        plan.experiment,
        ANALYZER_NAME,
        result,
        model=model or first.get("model") or {},
        inputs=first.get("inputs") or {},
        config={"temporal": plan.settings.__dict__, "runs": {str(s): str(d) for s, d in runs}},
        settings=plan.run_settings,
        started=started,
        extra={"temporal": {"source": result.summary["source"], "steps": result.summary["steps"]}},
    )
