"""interpsuite compare: one offline HTML report over finished runs, figures whose data is on
record, and one-line errors for every bad input before anything is written."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from interpsuite.cli import main
from interpsuite.compare import ComparisonReport, compare_runs, load_run, relative_depth
from interpsuite.errors import ConfigError


def make_run(
    path: Path,
    model: str,
    n_layers: int,
    tables: dict[str, dict[str, pd.DataFrame]] | None = None,
    checks: dict[str, dict] | None = None,
    statuses: dict[str, tuple[str, str]] | None = None,
) -> Path:
    """A run directory as the rundir sink writes it: results.json plus tables/<analyzer>/<name>.csv."""
    path.mkdir(parents=True)
    analyzers: dict[str, dict] = {}
    for analyzer, named in (tables or {}).items():
        entry = {
            "status": "ok",
            "error": None,
            "duration_s": 0.1,
            "metrics": {},
            "tables": {},
            "figures": {},
            "checks": (checks or {}).get(analyzer, {}),
            "summary": {},
            "artifacts": {},
        }
        for name, frame in named.items():
            rel = f"tables/{analyzer}/{name}.csv"
            (path / rel).parent.mkdir(parents=True, exist_ok=True)
            frame.to_csv(path / rel, index=False)
            entry["tables"][name] = rel
        analyzers[analyzer] = entry
    for analyzer, (status, error) in (statuses or {}).items():
        analyzers[analyzer] = {
            "status": status,
            "error": error,
            "duration_s": 0.0,
            "metrics": {},
            "tables": {},
            "figures": {},
            "checks": {},
            "summary": {},
            "artifacts": {},
        }
    payload = {
        "interpsuite_version": "0.1.0",
        "experiment": "synthetic",
        "status": "complete",
        "model": {"name": model, "architecture": "llama", "n_layers": n_layers, "n_heads": 4, "d_model": 64},
        "inputs": {"count": 2},
        "duration_s": 1.0,
        "analyzers": analyzers,
    }
    (path / "results.json").write_text(json.dumps(payload))
    return path


def probe_table(n_layers: int, offset: float, selectivity: bool = True) -> pd.DataFrame:
    rows = []
    for task in ("pos", "negation"):
        for layer in range(n_layers):
            acc = 0.5 + offset + 0.4 * layer / n_layers
            rows.append(
                {
                    "task": task,
                    "layer": layer,
                    "accuracy": acc,
                    "accuracy_ci_low": acc - 0.05,
                    "accuracy_ci_high": acc + 0.05,
                    "control_accuracy": 0.5 if selectivity else None,
                    "selectivity": acc - 0.5 if selectivity else None,
                    "chance": 0.5,
                }
            )
    return pd.DataFrame(rows)


def layer_cka(n_layers: int) -> pd.DataFrame:
    rows = [
        {"layer_a": a, "layer_b": b, "cka": 1.0 - 0.1 * abs(a - b)} for a in range(n_layers) for b in range(n_layers)
    ]
    return pd.DataFrame(rows)


@pytest.fixture
def synthetic(tmp_path: Path) -> tuple[Path, Path]:
    cross = pd.DataFrame(
        [{"model_b": "deep", "layer_a": a, "layer_b": b, "cka": 0.1 * a + 0.01 * b} for a in range(4) for b in range(8)]
    )
    a = make_run(
        tmp_path / "run_a",
        "shallow",
        4,
        {
            "linear_probe": {"probe_curves": probe_table(4, 0.0)},
            "representation_similarity": {"layer_similarity": layer_cka(4), "model_similarity": cross},
        },
        checks={
            "linear_probe": {
                "probe_ok": {"value": 0.5, "threshold": 0.1, "passed": False},
                "fine": {"value": 0.0, "threshold": 0.1, "passed": True},
            }
        },
    )
    b = make_run(
        tmp_path / "run_b",
        "deep",
        8,
        {"linear_probe": {"probe_curves": probe_table(8, 0.05, selectivity=False)}},
        statuses={"logit_lens": ("skipped", "needs a causal LM; deep is an encoder")},
    )
    return a, b


def test_relative_depth_ends_at_0_and_1():
    assert relative_depth([0, 3], 4) == [0.0, 1.0]
    assert relative_depth([0, 15, 29], 30)[::2] == [0.0, 1.0]
    assert relative_depth([0], 1) == [0.0]  # a one-layer model does not divide by zero


def test_report_from_synthetic_runs(synthetic, tmp_path):
    a, b = synthetic
    report = compare_runs([a, b], tmp_path / "out")
    assert isinstance(report, ComparisonReport)
    html = report.html.read_text()
    assert "shallow" in html and "deep" in html
    assert not re.search(r"""(src|href)\s*=\s*["']?https?://""", html)
    assert "http://" not in html and "https://" not in html
    assert html.count("data:image/png;base64,") == len(report.figures)
    assert '<tr class="fail"><td>linear_probe</td><td>probe_ok</td>' in html  # failed checks stand out

    data = json.loads(report.json.read_text())
    for stem in (
        "probe_accuracy_pos",
        "probe_accuracy_negation",
        "probe_selectivity_pos",
        "cka_adjacent_layers",
        "cka_shallow_vs_deep",
    ):
        assert stem in data["figures"], stem
        for suffix in (".png", ".pdf"):
            path = report.out_dir / "figures" / f"{stem}{suffix}"
            assert path.is_file() and path.stat().st_size > 1000
    assert (report.out_dir / "figures" / "probe_accuracy_pos.png").read_bytes()[:4] == b"\x89PNG"
    assert (report.out_dir / "figures" / "probe_accuracy_pos.pdf").read_bytes()[:4] == b"%PDF"

    # the figure data is the input tables' values
    series = data["figures"]["probe_accuracy_pos"]["data"]["series"]
    for run_dir, label, n_layers in ((a, "shallow", 4), (b, "deep", 8)):
        table = pd.read_csv(run_dir / "tables/linear_probe/probe_curves.csv")
        pos = table[table.task == "pos"].sort_values("layer")
        assert series[label]["accuracy"] == pytest.approx(list(pos.accuracy))
        assert series[label]["accuracy"][0] == pytest.approx(pos.accuracy.iloc[0])
        assert series[label]["accuracy_ci_low"] == pytest.approx(list(pos.accuracy_ci_low))
        assert series[label]["relative_depth"][0] == 0.0 and series[label]["relative_depth"][-1] == 1.0
        assert len(series[label]["relative_depth"]) == n_layers
        assert f"({n_layers} layers)" in series[label]["legend"]
    # selectivity only where the run has it
    assert set(data["figures"]["probe_selectivity_pos"]["data"]["series"]) == {"shallow"}
    heat = data["figures"]["cka_shallow_vs_deep"]["data"]
    assert heat["cka"][3][7] == pytest.approx(0.1 * 3 + 0.01 * 7)
    adjacent = data["figures"]["cka_adjacent_layers"]["data"]["series"]["shallow"]
    assert adjacent["cka"] == pytest.approx([0.9, 0.9, 0.9])

    sections = {s["name"]: s for s in data["sections"]}
    assert sections["probe_curves"]["present"] and sections["cka"]["present"]
    assert sections["cka"]["runs"]["deep"] == "not run"
    assert not sections["head_types"]["present"] and "not run" in sections["head_types"]["reason"]
    assert not sections["logit_lens"]["present"]
    assert sections["logit_lens"]["runs"]["deep"].startswith("skipped: needs a causal LM")
    assert not report.section("logit_lens").present
    assert "absent: no run has this analysis" in html


def test_missing_table_file_is_a_note_not_a_crash(synthetic, tmp_path):
    a, b = synthetic
    (b / "tables/linear_probe/probe_curves.csv").unlink()
    report = compare_runs([a, b], tmp_path / "out")
    probe = report.section("probe_curves")
    assert probe.present and probe.runs["deep"] == "table file tables/linear_probe/probe_curves.csv missing"


def test_same_model_twice_is_labelled_by_run_dir(tmp_path):
    a = make_run(tmp_path / "first", "same", 4, {"linear_probe": {"probe_curves": probe_table(4, 0.0)}})
    b = make_run(tmp_path / "second", "same", 4, {"linear_probe": {"probe_curves": probe_table(4, 0.1)}})
    report = compare_runs([a, b], tmp_path / "out")
    assert report.runs == ["same (first)", "same (second)"]


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory) -> tuple[Path, Path]:
    """Real run directories of a causal LM and an encoder: the table formats the analyzers write."""
    from interpsuite import InterpretabilityPipeline

    root = tmp_path_factory.mktemp("real")
    analyzers = {
        "head_classification": {"n_sequences": 4, "seq_len": 8},
        "logit_lens": {},
        "representation_similarity": {},
    }
    dirs = []
    for model in ("tiny_llama", "tiny_bert"):
        report = InterpretabilityPipeline(
            model=model,
            data=["the cat sat on the mat", "a dog ran home"],
            analyzers=analyzers,
            output_dir=root / model,
            sinks=["rundir"],
            progress=False,
        ).run()
        assert report.exit_code == 0
        dirs.append(root / model)
    return dirs[0], dirs[1]


def test_report_from_real_runs(real_runs, tmp_path):
    llama, bert = real_runs
    report = compare_runs([llama, bert], tmp_path / "out")
    data = json.loads(report.json.read_text())
    sections = {s["name"]: s for s in data["sections"]}
    assert sections["head_types"]["present"] and sections["logit_lens"]["present"] and sections["cka"]["present"]
    assert not sections["probe_curves"]["present"]
    assert sections["logit_lens"]["runs"]["tiny_bert"].startswith("skipped")  # encoder: absent, not an error

    heads = data["figures"]["head_types"]["data"]
    for run_dir, label in ((llama, "tiny_llama"), (bert, "tiny_bert")):
        scores = pd.read_csv(run_dir / "tables/head_classification/head_scores.csv")
        counts = heads["runs"][label]["counts"]
        assert counts == {k: int((scores.label == k).sum()) for k in heads["labels"]}
        assert sum(heads["runs"][label]["fractions"].values()) == pytest.approx(1.0)

    lens = pd.read_csv(llama / "tables/logit_lens/layers.csv")
    lens = lens[lens.layer >= 0]
    series = data["figures"]["logit_lens_kl_to_final"]["data"]["series"]
    assert set(series) == {"tiny_llama"}
    assert series["tiny_llama"]["kl_to_final"] == pytest.approx(list(lens.kl_to_final))
    assert series["tiny_llama"]["relative_depth"] == [0.0, 1.0]
    html = report.html.read_text()
    assert "tiny_llama" in html and "tiny_bert" in html and "https://" not in html


@pytest.mark.parametrize(
    "breakage, words",
    [
        ("one", "at least 2 run directories"),
        ("missing_dir", "does not exist"),
        ("no_results", "has no results.json"),
        ("bad_json", "is not valid JSON"),
        ("outside_table", "outside the run directory"),
        ("out_is_run", "is the run directory"),
    ],
)
def test_bad_input_is_refused_before_writing(synthetic, tmp_path, breakage, words):
    a, b = synthetic
    out = tmp_path / "out"
    runs: list[Path] = [a, b]
    if breakage == "one":
        runs = [a]
    elif breakage == "missing_dir":
        runs = [a, tmp_path / "nowhere"]
    elif breakage == "no_results":
        (b / "results.json").unlink()
    elif breakage == "bad_json":
        (b / "results.json").write_text("{not json")
    elif breakage == "outside_table":
        payload = json.loads((b / "results.json").read_text())
        payload["analyzers"]["linear_probe"]["tables"]["probe_curves"] = "../run_a/results.json"
        (b / "results.json").write_text(json.dumps(payload))
    elif breakage == "out_is_run":
        out = a
    before = sorted(p for p in tmp_path.rglob("*"))
    with pytest.raises(ConfigError, match=words) as err:
        compare_runs(runs, out)
    assert "\n" not in str(err.value)
    if breakage in ("missing_dir", "no_results", "bad_json"):
        assert ("nowhere" if breakage == "missing_dir" else "run_b") in str(err.value)
    assert not out.exists() or out == a
    assert sorted(p for p in tmp_path.rglob("*")) == before


def test_load_run_reads_the_payload(synthetic):
    run = load_run(synthetic[0])
    assert run.model_name == "shallow" and run.n_layers == 4


def test_cli_compare(synthetic, tmp_path, monkeypatch, capsys):
    a, b = synthetic
    monkeypatch.chdir(tmp_path)
    assert main(["compare", str(a), str(b)]) == 0
    assert (tmp_path / "comparison" / "comparison.html").is_file()
    assert "comparison.html" in capsys.readouterr().out
    assert main(["compare", str(a), "--out", str(tmp_path / "o2")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("interpsuite: error: compare: need at least 2 run directories")
    assert main(["compare", str(a), str(tmp_path / "nope")]) == 2
    assert "nope" in capsys.readouterr().err


def test_cli_compare_expands_a_multirun_folder(tmp_path, capsys):
    sweep = tmp_path / "multirun"
    make_run(sweep / "0", "m0", 2, {"linear_probe": {"probe_curves": probe_table(2, 0.0)}})
    make_run(sweep / "1", "m1", 3, {"linear_probe": {"probe_curves": probe_table(3, 0.0)}})
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    assert main(["compare", str(sweep), "--out", str(tmp_path / "out")]) == 0
    data = json.loads((tmp_path / "out" / "comparison.json").read_text())
    assert [r["label"] for r in data["runs"]] == ["m0", "m1"]


def test_probe_curves_of_several_hook_points_get_one_figure_each(tmp_path):
    """linear_probe writes a hook_point column; curves of different hook points never share a line."""
    tables = []
    for hook_point, offset in (("resid_post", 0.0), ("mlp.out", 0.2)):
        tables.append(probe_table(3, offset).assign(hook_point=hook_point))
    both = pd.concat(tables, ignore_index=True)
    a = make_run(tmp_path / "a", "ma", 3, {"linear_probe": {"probe_curves": both}})
    b = make_run(tmp_path / "b", "mb", 3, {"linear_probe": {"probe_curves": probe_table(3, 0.1)}})
    report = compare_runs([a, b], tmp_path / "out")
    data = json.loads(report.json.read_text())["figures"]
    assert {"probe_accuracy_pos_resid_post", "probe_accuracy_pos_mlp.out", "probe_accuracy_pos"} <= set(data)
    mlp = data["probe_accuracy_pos_mlp.out"]["data"]["series"]["ma"]
    assert mlp["layer"] == [0, 1, 2] and mlp["accuracy"][0] == pytest.approx(0.7)
