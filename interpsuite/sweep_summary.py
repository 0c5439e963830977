"""`interpsuite sweep-summary MULTIRUN_DIR`: every job of a Hydra multirun in one table and one figure.

Whichever launcher ran the jobs (basic, joblib, Ray, SLURM), Hydra leaves the same folder:
`multirun.yaml` (the driver's config, with the sweep) and one folder per job holding `.hydra/`
(`overrides.yaml`: that job's overrides; `hydra.yaml`: its number) and our `results.json`.
The summary reads only those files, so it works on a copy of the folder, long after the run.

Written to the output folder (default MULTIRUN_DIR/sweep_summary):
- `sweep_summary.csv` and `sweep_summary.json`: one row per job: its number, folder, overrides,
  one column per swept key, status, duration, W&B group, analyzer and check counts, and every
  analyzer's metrics as `<analyzer>/<metric>` columns;
- `sweep_summary.png/.pdf`: one metric against one swept key (one line per combination of the
  other swept keys), its data in `figure_data/sweep/` (FigureRecipe: `FigureRecipe.load(folder).draw()`
  redraws it without the runs).

A job without results is a row, not a crash: `missing` (no folder, or no results.json) or
`unreadable` (results.json damaged), with the reason in `error`. Which jobs to expect comes from
`multirun.yaml` (the basic sweeper's grid, whichever launcher ran it), so a job that never
started is listed too.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .figures import FigureStyle, figure_function
from .results import RESULTS_FILE, to_jsonable

DEFAULT_OUT = "sweep_summary"
TABLE_STEM = "sweep_summary"
FIGURE_NAME = "sweep"
FIGURE_FORMATS = ("png", "pdf")
MISSING, UNREADABLE = "missing", "unreadable"
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
#: folders never searched for jobs: run contents that can be large and hold no job
SKIP_DIRS = frozenset({"tables", "figures", "figure_data", "wandb", "logs", "stores", ".submitit", "__pycache__"})
#: the table's leading columns; swept keys follow `overrides`, metrics come last
LEADING = ("job", "run_dir", "overrides")
TRAILING = (
    "status",
    "duration_s",
    "wandb_group",
    "analyzers_ok",
    "analyzers_failed",
    "checks_passed",
    "checks_failed",
    "failed_checks",
    "error",
)


@dataclass
class JobSummary:
    """One job of the sweep as found on disk (a row of the table)."""

    job: int | None
    run_dir: str  # relative to the multirun folder; "" when the job has no folder
    overrides: list[str]
    status: str  # results.json's status (complete, stopped, ...), or missing / unreadable
    error: str | None = None
    duration_s: float | None = None
    wandb_group: str | None = None
    analyzers: dict[str, str] = field(default_factory=dict)  # analyzer -> status
    metrics: dict[str, float] = field(default_factory=dict)  # "<analyzer>/<metric>" -> value
    checks_passed: int = 0
    failed_checks: list[str] = field(default_factory=list)  # "<analyzer>/<check>"

    @property
    def has_results(self) -> bool:
        return self.status not in (MISSING, UNREADABLE)

    @property
    def params(self) -> dict[str, Any]:
        return dict(parse_override(o) for o in self.overrides)

    def to_dict(self) -> dict[str, Any]:
        return {
            "job": self.job,
            "run_dir": self.run_dir,
            "overrides": list(self.overrides),
            "status": self.status,
            "error": self.error,
            "duration_s": self.duration_s,
            "wandb_group": self.wandb_group,
            "analyzers": dict(self.analyzers),
            "metrics": dict(self.metrics),
            "checks_passed": self.checks_passed,
            "checks_failed": len(self.failed_checks),
            "failed_checks": list(self.failed_checks),
        }


@dataclass
class SweepSummary:
    """The collected sweep and where its table and figure were written."""

    multirun_dir: Path
    out_dir: Path
    jobs: list[JobSummary]
    swept: dict[str, list[Any]]  # key -> its values, in job order, without repeats
    metric: str | None = None
    parameter: str | None = None
    figure_note: str = ""
    files: dict[str, list[Path]] = field(default_factory=dict)

    @property
    def metrics(self) -> list[str]:
        return sorted({name for job in self.jobs for name in job.metrics})

    @property
    def without_results(self) -> list[JobSummary]:
        return [job for job in self.jobs if not job.has_results]

    def rows(self) -> list[dict[str, Any]]:
        """The table: one dict per job, every row with the same columns."""
        metrics = self.metrics
        columns = self.param_columns()
        rows = []
        for job in self.jobs:
            params = job.params
            row: dict[str, Any] = {
                "job": job.job,
                "run_dir": job.run_dir,
                "overrides": " ".join(job.overrides),
            }
            row.update({column: params.get(key) for key, column in columns.items()})
            row.update(
                {
                    "status": job.status,
                    "duration_s": job.duration_s,
                    "wandb_group": job.wandb_group,
                    "analyzers_ok": sum(s == "ok" for s in job.analyzers.values()),
                    "analyzers_failed": sum(s == "failed" for s in job.analyzers.values()),
                    "checks_passed": job.checks_passed,
                    "checks_failed": len(job.failed_checks),
                    "failed_checks": "; ".join(job.failed_checks),
                    "error": job.error,
                }
            )
            row.update({name: job.metrics.get(name, math.nan) for name in metrics})
            rows.append(row)
        return rows

    def param_columns(self) -> dict[str, str]:
        """Swept key -> its column name (prefixed `override:` where it would clash with ours)."""
        taken = set(LEADING) | set(TRAILING) | set(self.metrics)
        return {key: f"override:{key}" if key in taken else key for key in self.swept}

    def to_dict(self) -> dict[str, Any]:
        return {
            "multirun_dir": str(self.multirun_dir),
            "n_jobs": len(self.jobs),
            "n_with_results": sum(job.has_results for job in self.jobs),
            "swept": {k: list(v) for k, v in self.swept.items()},
            "figure": {"metric": self.metric, "parameter": self.parameter, "note": self.figure_note},
            "jobs": [job.to_dict() for job in self.jobs],
        }


# --- reading the multirun folder -----------------------------------------------------------------
def parse_override(override: str) -> tuple[str, Any]:
    """`key=value` -> (key, value as YAML reads it: 3 -> int, 0.5 -> float, [1,2] -> list)."""
    import yaml

    key, _, value = override.partition("=")
    key = re.sub(r"^(\+\+|\+|~)", "", key.strip()).removeprefix("override ").strip()
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    if isinstance(parsed, (dict, list)):
        parsed = value  # a table cell holds the text as written
    return key, parsed


def _read_yaml(path: Path) -> Any:
    import yaml

    return yaml.safe_load(path.read_text())


def expected_jobs(multirun_dir: Path) -> list[list[str]] | None:
    """Each job's overrides, in job order, from multirun.yaml (None: not a basic-sweeper grid,
    or multirun.yaml missing or unreadable; then only the job folders on disk count)."""
    path = multirun_dir / "multirun.yaml"
    if not path.is_file():
        return None
    try:
        config = _read_yaml(path)
        hydra = config["hydra"]
        if hydra.get("sweeper", {}).get("_target_") != BASIC_SWEEPER:
            return None
        arguments = [f"{k}={v}" for k, v in (hydra["sweeper"].get("params") or {}).items()]
        arguments += list(hydra["overrides"]["task"])
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.override_parser.overrides_parser import OverridesParser

        parsed = OverridesParser.create().parse_overrides(arguments)
        batches = BasicSweeper.split_arguments(parsed, None)
    except Exception:  # a damaged or foreign multirun.yaml: fall back to the folders found
        return None
    return [list(job) for batch in batches for job in batch]


def job_folders(multirun_dir: Path, skip: Path | None = None) -> list[Path]:
    """Every folder under `multirun_dir` that Hydra made for a job (it holds `.hydra/`)."""
    found = []
    skip_resolved = skip.resolve() if skip is not None else None
    for root, dirs, _files in os.walk(multirun_dir):
        here = Path(root)
        if skip_resolved is not None and here.resolve() == skip_resolved:
            dirs[:] = []
            continue
        if ".hydra" in dirs and here != multirun_dir:
            found.append(here)
            dirs[:] = []  # a job's own subfolders hold its results, not more jobs
            continue
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and d != ".hydra")
    return found


def _job_number(folder: Path) -> int | None:
    try:
        number = _read_yaml(folder / ".hydra" / "hydra.yaml")["hydra"]["job"]["num"]
        return int(number)
    except Exception:
        match = re.match(r"(\d+)", folder.name)
        return int(match.group(1)) if match else None


def _job_overrides(folder: Path) -> list[str] | None:
    try:
        overrides = _read_yaml(folder / ".hydra" / "overrides.yaml")
    except Exception:
        return None
    return [str(o) for o in overrides] if isinstance(overrides, list) else None


def read_job(multirun_dir: Path, folder: Path, number: int | None, overrides: list[str]) -> list[JobSummary]:
    """The job's row (rows: a job that ran several pipelines, models=[...] or checkpoints, has
    its results.json files below its folder and gets one row each)."""
    rel = folder.relative_to(multirun_dir).as_posix()
    results = folder / RESULTS_FILE
    nested = [] if results.is_file() else sorted(folder.glob(f"*/*/{RESULTS_FILE}"))
    if not results.is_file() and not nested:
        return [
            JobSummary(
                number,
                rel,
                overrides,
                MISSING,
                error=f"no {RESULTS_FILE} in {rel} (the job stopped before its first analyzer finished; "
                f"see {rel}/interpsuite.log)",
            )
        ]
    paths = [results] if results.is_file() else nested
    return [_from_results(number, path.parent.relative_to(multirun_dir).as_posix(), overrides, path) for path in paths]


def _from_results(number: int | None, rel: str, overrides: list[str], path: Path) -> JobSummary:
    try:
        payload = json.loads(path.read_text())
        if not isinstance(payload, dict) or not isinstance(payload.get("analyzers", {}), dict):
            raise ValueError("not a results object")
    except (OSError, ValueError) as err:
        reason = f"{RESULTS_FILE} in {rel} is not readable ({type(err).__name__}: {err})"
        return JobSummary(number, rel, overrides, UNREADABLE, error=reason)
    job = JobSummary(number, rel, overrides, str(payload.get("status", "complete")))
    duration = payload.get("duration_s")
    job.duration_s = float(duration) if isinstance(duration, (int, float)) else None
    wandb = (payload.get("sinks") or {}).get("wandb") or {}
    job.wandb_group = wandb.get("group") if isinstance(wandb, dict) else None
    errors = []
    for analyzer, entry in sorted(payload.get("analyzers", {}).items()):
        if not isinstance(entry, dict):
            continue
        job.analyzers[analyzer] = str(entry.get("status"))
        if entry.get("status") == "failed":
            errors.append(f"{analyzer}: {entry.get('error')}")
        for name, value in (entry.get("metrics") or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                job.metrics[f"{analyzer}/{name}"] = float(value)
            elif value is None:  # NaN and infinities are written as null
                job.metrics[f"{analyzer}/{name}"] = math.nan
        for name, check in (entry.get("checks") or {}).items():
            if isinstance(check, dict) and check.get("passed") is True:
                job.checks_passed += 1
            elif isinstance(check, dict):
                job.failed_checks.append(f"{analyzer}/{name}")
    job.error = "; ".join(errors) or None
    return job


def collect(multirun_dir: str | Path, skip: Path | None = None) -> tuple[list[JobSummary], dict[str, list[Any]]]:
    """Every job of the multirun (expected ones without a folder included), and the swept keys."""
    multirun_dir = Path(multirun_dir)
    if not multirun_dir.is_dir():
        raise ConfigError(f"{multirun_dir} is not a folder; give the multirun's folder (it holds multirun.yaml)")
    expected = expected_jobs(multirun_dir)
    folders = job_folders(multirun_dir, skip)
    if not folders and not expected:
        raise ConfigError(
            f"{multirun_dir} holds no Hydra job folders (with .hydra/) and no multirun.yaml; give the folder a "
            "multirun (python -m interpsuite -m ...) wrote, e.g. multirun/<experiment>/<date_time>"
        )
    jobs: list[JobSummary] = []
    seen: set[int] = set()
    for folder in folders:
        number = _job_number(folder)
        overrides = _job_overrides(folder)
        if overrides is None:
            known = expected is not None and number is not None and number < len(expected)
            overrides = expected[number] if known else []
        jobs.extend(read_job(multirun_dir, folder, number, overrides))
        if number is not None:
            seen.add(number)
    for number, overrides in enumerate(expected or []):
        if number not in seen:
            error = "no job folder (the job did not start, or its folder was removed)"
            jobs.append(JobSummary(number, "", overrides, MISSING, error=error))
    jobs.sort(key=lambda j: (j.job is None, j.job if j.job is not None else 0, j.run_dir))
    return jobs, swept_values(jobs)


def swept_values(jobs: list[JobSummary]) -> dict[str, list[Any]]:
    """Keys whose value differs between jobs (or that only some jobs set), with their values."""
    keys: list[str] = []
    for job in jobs:
        keys += [k for k in job.params if k not in keys]
    swept = {}
    for key in keys:
        values = [job.params.get(key) for job in jobs]
        distinct: list[Any] = []
        for value in values:
            if value not in distinct:
                distinct.append(value)
        if len(distinct) > 1:
            swept[key] = distinct
    return swept


# --- the figure ----------------------------------------------------------------------------------
def _numeric(values: list[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def choose_figure(summary: SweepSummary, metric: str | None, parameter: str | None) -> tuple[str | None, str | None]:
    """The metric (y) and swept key (x) to plot: the ones asked for, else a varying metric and
    the first numeric swept key."""
    metrics = summary.metrics
    if parameter is not None and parameter not in summary.swept:
        swept = ", ".join(summary.swept) or "none (every job has the same overrides)"
        raise ConfigError(f"--param {parameter!r} is not a swept key of this multirun; swept keys: {swept}")
    if metric is not None and metric not in metrics:
        shown = ", ".join(metrics[:8]) + (", ..." if len(metrics) > 8 else "")
        raise ConfigError(f"--metric {metric!r} is in no job's results; metrics (ANALYZER/METRIC): {shown or 'none'}")
    if parameter is None and summary.swept:
        numeric = [k for k, v in summary.swept.items() if _numeric([x for x in v if x is not None])]
        parameter = (numeric or list(summary.swept))[0]
    if metric is None and metrics:
        varying = [m for m in metrics if len({_key(j.metrics.get(m)) for j in summary.jobs if j.has_results}) > 1]
        metric = (varying or metrics)[0]
    return metric, parameter


def _key(value: Any) -> Any:
    return "nan" if isinstance(value, float) and math.isnan(value) else value


def figure_lines(summary: SweepSummary, metric: str, parameter: str | None) -> tuple[list[dict], list[str] | None]:
    """One line per combination of the other swept keys: x (the swept key, or category index) and y."""
    with_results = [job for job in summary.jobs if job.has_results]
    if parameter is None:  # nothing swept: the metric per job
        points = [
            (job.job if job.job is not None else i, job.metrics.get(metric, math.nan))
            for i, job in enumerate(with_results)
        ]
        return [{"label": metric, "x": [p[0] for p in points], "y": [p[1] for p in points]}], None
    values = summary.swept[parameter]
    categories = None
    if not _numeric([v for v in values if v is not None]):
        categories = [str(v) for v in values]
    others = [k for k in summary.swept if k != parameter]
    groups: dict[str, list[tuple[Any, float]]] = {}
    for job in with_results:
        params = job.params
        label = ", ".join(f"{k}={params.get(k)}" for k in others) or metric
        x = params.get(parameter)
        if x is None:
            continue
        position = categories.index(str(x)) if categories is not None else x
        groups.setdefault(label, []).append((position, job.metrics.get(metric, math.nan)))
    lines = []
    for label, points in groups.items():
        points.sort(key=lambda p: p[0])
        lines.append({"label": label, "x": [p[0] for p in points], "y": [p[1] for p in points]})
    return lines, categories


@figure_function
def plot_sweep(
    lines: list[dict], x_label: str, y_label: str, title: str, categories: list[str] | None, style: FigureStyle
):
    """A metric against a swept key, one line (with markers) per combination of the other keys."""
    fig, axes = style.figure(1, 1)
    ax = axes[0, 0]
    for line in lines:
        ax.plot(line["x"], line["y"], marker="o", markersize=4, label=line["label"])
    if categories is not None:
        ax.set_xticks(range(len(categories)), categories, rotation=30 if len(categories) > 4 else 0, ha="right")
    elif all(float(x).is_integer() for line in lines for x in line["x"]):
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # seeds, layers, counts: no 0.5 ticks
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if 1 < len(lines) <= 12:
        ax.legend(fontsize="x-small")
    return fig


# --- writing -------------------------------------------------------------------------------------
def summarize_sweep(
    multirun_dir: str | Path,
    out_dir: str | Path | None = None,
    metric: str | None = None,
    parameter: str | None = None,
    style: FigureStyle | None = None,
) -> SweepSummary:
    """Collect the multirun's jobs and write the table (CSV, JSON) and the figure (PNG, PDF)."""
    multirun_dir = Path(multirun_dir)
    out = Path(out_dir) if out_dir is not None else multirun_dir / DEFAULT_OUT
    jobs, swept = collect(multirun_dir, skip=out)
    summary = SweepSummary(multirun_dir, out, jobs, swept)
    summary.metric, summary.parameter = choose_figure(summary, metric, parameter)
    from .settings import check_writable_dir

    check_writable_dir(out, "sweep summary folder (--out)")
    summary.files["table"] = _write_table(summary)
    summary.files["figure"] = _write_figure(summary, style or FigureStyle())
    summary.files["json"] = [out / f"{TABLE_STEM}.json"]
    _write_json(summary)
    return summary


def _write_table(summary: SweepSummary) -> list[Path]:
    import pandas as pd

    rows = summary.rows()
    columns = [*LEADING, *summary.param_columns().values(), *TRAILING, *summary.metrics]
    frame = pd.DataFrame(rows, columns=columns)
    path = summary.out_dir / f"{TABLE_STEM}.csv"
    tmp = path.with_suffix(".csv.tmp")
    frame.to_csv(tmp, index=False)
    tmp.replace(path)
    return [path]


def _write_json(summary: SweepSummary) -> None:
    path = summary.out_dir / f"{TABLE_STEM}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(to_jsonable(summary.to_dict()), indent=2, allow_nan=False))
    tmp.replace(path)


def _write_figure(summary: SweepSummary, style: FigureStyle) -> list[Path]:
    from .figure_data import FigureRecipe
    from .sinks.rundir import save_figure

    if summary.metric is None:
        summary.figure_note = "no figure: no job has metrics"
        return []
    lines, categories = figure_lines(summary, summary.metric, summary.parameter)
    plotted = sum(1 for line in lines for y in line["y"] if not math.isnan(y))
    n_jobs = len(summary.jobs)
    title = f"{summary.metric} ({plotted} of {n_jobs} jobs)"
    args = (lines, summary.parameter or "job", summary.metric, title, categories, style)
    recipe = FigureRecipe.capture(plot_sweep, args, {}, style)
    recipe.save(summary.out_dir / "figure_data" / FIGURE_NAME)
    with style.context():
        figure = plot_sweep(*args)
    try:
        return save_figure(figure, summary.out_dir / TABLE_STEM, FIGURE_FORMATS)
    finally:
        figure.clear()


def sweep_summary_command(
    multirun_dir: str, out: str | None = None, metric: str | None = None, parameter: str | None = None
) -> int:
    """Print where the table and figure are and which jobs have no results; exit 1 if any."""
    summary = summarize_sweep(multirun_dir, out, metric=metric, parameter=parameter)
    n_ok = len(summary.jobs) - len(summary.without_results)
    swept = ", ".join(summary.swept) or "nothing"
    print(f"{len(summary.jobs)} jobs in {summary.multirun_dir} ({n_ok} with results), swept: {swept}")
    for job in summary.without_results:
        where = f" ({' '.join(job.overrides)})" if job.overrides else ""
        print(f"  job {job.job if job.job is not None else '?'}{where}: {job.status}: {job.error}")
    for job in summary.jobs:
        if job.has_results and (job.error or job.failed_checks):
            checks = f"failed checks: {', '.join(job.failed_checks)}" if job.failed_checks else ""
            detail = "; ".join(x for x in (job.error, checks) if x)
            print(f"  job {job.job} ({' '.join(job.overrides)}): {detail}")
    print(f"table: {', '.join(str(p) for p in summary.files['table'] + summary.files['json'])}")
    if summary.files["figure"]:
        x = summary.parameter or "job"
        print(f"figure ({summary.metric} against {x}): {', '.join(str(p) for p in summary.files['figure'])}")
    else:
        print(summary.figure_note)
    return 1 if summary.without_results else 0
