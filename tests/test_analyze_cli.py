"""`interpsuite analyze` and `interpsuite list-models` (in process, tiny_llama)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import interpsuite.models
from interpsuite.analyzer import Analyzer
from interpsuite.cli import main
from interpsuite.plugins import Contribution, get_registry
from interpsuite.results import read_results

BASE = ["analyze", "--model", "tiny_llama", "--text", "The cat sat on the mat.", "--text", "Paris is in France."]


class _Boom(Analyzer):
    name = "test_cli_boom"

    def run(self, ctx):
        raise RuntimeError("boom on purpose")


def _run(capsys, args):
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def no_model_load(monkeypatch):
    """Input errors must be reported before the weights load."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(interpsuite.models, "load_model", refuse)


def test_analyze_prints_status_metrics_and_deletes_its_temp_folder(capsys):
    code, out, err = _run(capsys, [*BASE, "--analyzers", "activation_stats,logit_lens", "--quiet"])
    assert code == 0, err
    assert "activation_stats: ok" in out and "logit_lens: ok" in out
    assert "resid_post.L00.mean = " in out and "checks 3/3 passed" in out
    assert out.strip().endswith("run directory deleted (keep it: --out DIR)")
    code, out, err = _run(capsys, [*BASE, "--analyzers", "attention_entropy", "--json"])
    run_dir = Path(json.loads(out)["run_dir"])
    assert code == 0 and run_dir.name.startswith("20") and not run_dir.parent.exists()  # the temp folder is gone


def test_analyze_json_and_out_keep_the_run(capsys, tmp_path):
    args = [*BASE, "--analyzers", "activation_stats", "--set", "activation_stats.layers=[1]", "--json"]
    code, out, err = _run(capsys, [*args, "--out", str(tmp_path / "runs"), "--quiet"])
    assert code == 0, err
    outcome = json.loads(out)
    assert set(outcome) == {"run_id", "run_dir", "status", "exit_code", "analyzers"}
    assert outcome["status"] == "complete" and outcome["exit_code"] == 0
    entry = outcome["analyzers"]["activation_stats"]
    assert entry["status"] == "ok" and entry["cached"] is False
    assert all(isinstance(rows, list) and isinstance(rows[0], dict) for rows in entry["tables"].values())
    assert entry["figures"] and all(isinstance(path, str) for path in entry["figures"])
    assert set(entry["metrics"]) and all(".L01." in name for name in entry["metrics"])  # --set reached the analyzer
    run_dir = Path(outcome["run_dir"])
    assert run_dir.parent == (tmp_path / "runs").resolve()
    assert read_results(run_dir)["analyzers"]["activation_stats"]["metrics"] == entry["metrics"]
    assert all((run_dir / path).is_file() for path in entry["figures"])


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--analyzers", "no_such_analyzer"], "unknown analyzer 'no_such_analyzer'"),
        (["--analyzers", "activation_stats", "--set", "activation_stats.layerz=[0]"], "Key 'layerz' not in"),
        (["--analyzers", "activation_stats", "--set", "activation_stats.layers=[9]"], "layer 9 out of range"),
        (["--analyzers", "activation_stats", "--set", "logit_lens.k=1"], "logit_lens is not in --analyzers"),
        (["--analyzers", "activation_stats", "--set", "layers"], "expected ANALYZER.KEY=VALUE"),
        (["--analyzers", " , "], "--analyzers: no analyzer named"),
        (["--analyzers", "activation_stats", "--text", " "], "texts[2] is empty"),
        (["--analyzers", "activation_stats", "--file", "/no/such/file.txt"], "/no/such/file.txt"),
    ],
)
def test_bad_input_is_one_line_and_exit_2_before_the_model_loads(capsys, no_model_load, extra, expected):
    code, out, err = _run(capsys, [*BASE, *extra])
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("interpsuite: error: ") and expected in err


def test_texts_from_a_file(capsys, tmp_path):
    path = tmp_path / "texts.txt"
    path.write_text("First text here.\n\nSecond text here.\n")
    code, out, err = _run(
        capsys, ["analyze", "--model", "tiny_llama", "--file", str(path), "--analyzers", "attention_entropy", "--json"]
    )
    assert code == 0, err
    assert json.loads(out)["analyzers"]["attention_entropy"]["inputs"]["count"] == 2


def test_a_failed_analyzer_exits_1(capsys, monkeypatch):
    registry = get_registry()
    monkeypatch.setitem(registry.analyzers, _Boom.name, Contribution(_Boom.name, _Boom, "tests", "tests"))
    code, out, err = _run(capsys, [*BASE, "--analyzers", f"attention_entropy,{_Boom.name}", "--quiet"])
    assert code == 1
    assert "attention_entropy: ok" in out and f"{_Boom.name}: failed" in out and "boom on purpose" in out


def test_list_models_is_the_models_listing(capsys):
    assert _run(capsys, ["list-models"])[:2] == _run(capsys, ["models"])[:2]
    assert "tiny_llama" in _run(capsys, ["list-models"])[1]
