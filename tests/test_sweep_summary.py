"""`interpsuite sweep-summary`: a real 6-job multirun (two swept keys) collected into one table and
one figure; every number equals the job's results.json; missing and damaged jobs are rows, not crashes.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from interpsuite.errors import ConfigError
from interpsuite.figure_data import FigureRecipe
from interpsuite.results import read_results
from interpsuite.sweep_summary import (
    JobSummary,
    SweepSummary,
    choose_figure,
    figure_lines,
    summarize_sweep,
    sweep_summary_command,
)

JOB = ["model=tiny_llama", "+analyzers.activation_stats={}", "progress=false", "wandb.mode=disabled"]
SWEEP = ["seed=0,1,2", "data.limit=2,4"]
METRIC = "activation_stats/resid_post.L01.mean_norm"


def _run(args: list[str], cwd: Path, module: str = "interpsuite") -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def multirun(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("multirun")
    proc = _run(["-m", *JOB, *SWEEP, f"hydra.sweep.dir={root / 'sweep'}"], root)
    assert proc.returncode == 0, proc.stderr
    return root / "sweep"


def _results(multirun: Path) -> dict[int, dict]:
    return {int(p.parent.name.split("_")[0]): read_results(p.parent) for p in multirun.glob("*/results.json")}


def test_every_job_in_one_table_with_its_exact_metrics(multirun, tmp_path):
    out = tmp_path / "summary"
    summary = summarize_sweep(multirun, out)
    results = _results(multirun)
    assert len(results) == 6
    # Hydra's grid order: the last swept key varies fastest
    grid = [(seed, limit) for seed in (0, 1, 2) for limit in (2, 4)]
    assert [(j.job, j.status) for j in summary.jobs] == [(n, "complete") for n in range(6)]
    assert summary.swept == {"seed": [0, 1, 2], "data.limit": [2, 4]}
    assert [(j.params["seed"], j.params["data.limit"]) for j in summary.jobs] == grid
    for job in summary.jobs:
        entry = results[job.job]["analyzers"]["activation_stats"]
        assert job.metrics == {f"activation_stats/{k}": v for k, v in entry["metrics"].items()}
        assert job.duration_s == results[job.job]["duration_s"]
        assert job.checks_passed == sum(c["passed"] for c in entry["checks"].values()) and not job.failed_checks
        assert job.wandb_group == results[job.job]["sinks"]["wandb"]["group"] == f"default-{multirun.name}"

    table = pd.read_csv(out / "sweep_summary.csv")
    assert list(table.columns[:5]) == ["job", "run_dir", "overrides", "seed", "data.limit"]
    assert list(table["job"]) == list(range(6)) and list(zip(table["seed"], table["data.limit"], strict=True)) == grid
    assert set(table["status"]) == {"complete"} and list(table["analyzers_ok"]) == [1] * 6
    for job in summary.jobs:  # the CSV holds the exact values (float round trip)
        row = table[table["job"] == job.job].iloc[0]
        assert all(row[name] == value for name, value in job.metrics.items())
        assert (multirun / row["run_dir"] / "results.json").is_file()
    saved = json.loads((out / "sweep_summary.json").read_text())
    assert saved["n_jobs"] == saved["n_with_results"] == 6
    assert [j["metrics"] for j in saved["jobs"]] == [j.metrics for j in summary.jobs]
    assert saved["figure"]["parameter"] == "seed" and saved["figure"]["metric"] == summary.metric


def test_the_figure_is_the_metric_against_the_swept_key_and_redraws(multirun, tmp_path):
    out = tmp_path / "summary"
    summary = summarize_sweep(multirun, out, metric=METRIC, parameter="seed")
    assert [p.name for p in summary.files["figure"]] == ["sweep_summary.png", "sweep_summary.pdf"]
    lines, categories = figure_lines(summary, METRIC, "seed")
    assert categories is None
    by_job = {(j.params["seed"], j.params["data.limit"]): j.metrics[METRIC] for j in summary.jobs}
    assert lines == [
        {"label": f"data.limit={limit}", "x": [0, 1, 2], "y": [by_job[(seed, limit)] for seed in (0, 1, 2)]}
        for limit in (2, 4)
    ]
    recipe = FigureRecipe.load(out / "figure_data" / "sweep")
    figure = recipe.draw()
    drawn = [(line.get_label(), list(line.get_xdata()), list(line.get_ydata())) for line in figure.axes[0].lines]
    assert drawn == [(line["label"], line["x"], line["y"]) for line in lines]
    assert figure.axes[0].get_ylabel() == METRIC and figure.axes[0].get_xlabel() == "seed"
    # the other key on x
    other = summarize_sweep(multirun, tmp_path / "by_limit", metric=METRIC, parameter="data.limit")
    lines, _ = figure_lines(other, METRIC, "data.limit")
    assert [line["label"] for line in lines] == ["seed=0", "seed=1", "seed=2"]
    assert all(line["x"] == [2, 4] for line in lines)


def test_missing_and_damaged_jobs_are_reported_per_job(multirun, tmp_path, capsys):
    damaged = tmp_path / "sweep"
    shutil.copytree(multirun, damaged)
    folders = {int(p.name.split("_")[0]): p for p in damaged.iterdir() if p.is_dir()}
    (folders[1] / "results.json").unlink()
    (folders[2] / "results.json").write_text("{not json")
    shutil.rmtree(folders[3])
    (folders[4] / "results.json").write_text("[1, 2]")
    code = sweep_summary_command(str(damaged), str(tmp_path / "out"))
    assert code == 1
    summary = summarize_sweep(damaged, tmp_path / "out2")
    assert [(j.job, j.status) for j in summary.jobs] == [
        (0, "complete"),
        (1, "missing"),
        (2, "unreadable"),
        (3, "missing"),
        (4, "unreadable"),
        (5, "complete"),
    ]
    assert summary.jobs[1].error.startswith(f"no results.json in {folders[1].name}")
    assert "not readable (JSONDecodeError" in summary.jobs[2].error
    # the job that has no folder: its overrides rebuilt from multirun.yaml, as Hydra wrote them for it
    (original,) = multirun.glob("3_*")
    assert summary.jobs[3].error.startswith("no job folder")
    assert summary.jobs[3].overrides == yaml.safe_load((original / ".hydra" / "overrides.yaml").read_text())
    assert summary.jobs[3].run_dir == ""
    printed = capsys.readouterr().out
    assert "6 jobs in" in printed and "(2 with results)" in printed
    for number in (1, 2, 3, 4):
        assert f"  job {number} (" in printed
    table = pd.read_csv(tmp_path / "out" / "sweep_summary.csv")
    assert list(table["status"]) == ["complete", "missing", "unreadable", "missing", "unreadable", "complete"]
    assert table.loc[1, METRIC] != table.loc[1, METRIC]  # NaN where a job has no results
    lines, _ = figure_lines(summary, METRIC, "seed")
    assert sum(len(line["y"]) for line in lines) == 2  # only the jobs with results are drawn


def test_bad_arguments_are_one_line_errors(multirun, tmp_path):
    with pytest.raises(ConfigError, match="is not a folder"):
        summarize_sweep(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no Hydra job folders"):
        summarize_sweep(tmp_path / "empty")
    with pytest.raises(
        ConfigError, match=r"--param 'batch_size' is not a swept key of this multirun; swept keys: seed, "
    ):
        summarize_sweep(multirun, tmp_path / "a", parameter="batch_size")
    with pytest.raises(ConfigError, match=r"--metric 'nope/x' is in no job's results; metrics \(ANALYZER/METRIC\): "):
        summarize_sweep(multirun, tmp_path / "b", metric="nope/x")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # refused before writing
    proc = _run(["sweep-summary", str(tmp_path / "nowhere")], tmp_path, module="interpsuite.cli")
    assert proc.returncode == 2
    nowhere = tmp_path / "nowhere"
    assert proc.stderr.strip().splitlines() == [
        f"interpsuite: error: {nowhere} is not a folder; give the multirun's folder (it holds multirun.yaml)"
    ]


def test_the_command_writes_table_and_figure(multirun, tmp_path):
    proc = _run(
        ["sweep-summary", str(multirun), "--out", str(tmp_path / "s"), "--param", "data.limit"],
        tmp_path,
        "interpsuite.cli",
    )
    assert proc.returncode == 0, proc.stderr
    assert f"6 jobs in {multirun} (6 with results), swept: seed, data.limit" in proc.stdout
    assert "against data.limit" in proc.stdout
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == [
        "figure_data",
        "sweep_summary.csv",
        "sweep_summary.json",
        "sweep_summary.pdf",
        "sweep_summary.png",
    ]


def test_a_categorical_key_is_drawn_on_category_positions(tmp_path):
    """Swept model names: categories on x, in sweep order; the default metric is one that varies."""
    jobs = [
        JobSummary(0, "0", ["model=tiny_llama", "seed=0"], "complete", metrics={"a/x": 1.0, "a/y": 5.0}),
        JobSummary(1, "1", ["model=tiny_gpt2", "seed=0"], "complete", metrics={"a/x": 2.0, "a/y": 5.0}),
        JobSummary(2, "2", ["model=tiny_llama", "seed=1"], "complete", metrics={"a/x": 3.0, "a/y": 5.0}),
        JobSummary(3, "3", ["model=tiny_gpt2", "seed=1"], "missing"),
    ]
    summary = SweepSummary(tmp_path, tmp_path / "out", jobs, {"model": ["tiny_llama", "tiny_gpt2"], "seed": [0, 1]})
    assert choose_figure(summary, None, None) == ("a/x", "seed")  # numeric keys first; a/y never varies
    lines, categories = figure_lines(summary, "a/x", "model")
    assert categories == ["tiny_llama", "tiny_gpt2"]
    assert lines == [{"label": "seed=0", "x": [0, 1], "y": [1.0, 2.0]}, {"label": "seed=1", "x": [0], "y": [3.0]}]
    assert math.isnan(summary.rows()[3]["a/x"])
