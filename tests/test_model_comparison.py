"""`models=[...]`: one pipeline per model, all validated before any loads, then one report."""

from __future__ import annotations

import json

import pytest

from interpsuite.__main__ import run_cli
from interpsuite.compare import compare_runs
from interpsuite.errors import ConfigError
from interpsuite.model_comparison import plan_comparison

TEXTS = "data.texts=[The cat sat on the mat.,A dog ran far away.,Birds sing in the morning.,Rain fell all day long.]"
COMMON = ["+experiment=compare_models", "sinks=[rundir]", "progress=false", TEXTS]
PROBE = "analyzers.linear_probe.tasks=[sentiment]"


def test_compare_models_writes_one_run_per_model_and_the_report(tmp_path, capsys):
    run_dir = tmp_path / "cmp"
    code = run_cli([*COMMON, PROBE, "models=[tiny_llama,tiny_gpt2]", f"hydra.run.dir={run_dir}"])
    out = capsys.readouterr().out
    assert code == 0, out
    for name in ("tiny_llama", "tiny_gpt2"):
        payload = json.loads((run_dir / "models" / name / "results.json").read_text())
        assert payload["model"]["name"] == name and payload["status"] == "complete"
    html = (run_dir / "comparison.html").read_text()
    assert "tiny_llama" in html and "tiny_gpt2" in html
    report = json.loads((run_dir / "comparison.json").read_text())
    present = {s["name"] for s in report["sections"] if s["present"]}
    assert {"probe_curves", "cka", "head_types", "logit_lens"} <= present
    # cross-model CKA ran once, from the first model, on the same texts
    first = json.loads((run_dir / "models" / "tiny_llama" / "results.json").read_text())
    assert "model_similarity" in first["analyzers"]["representation_similarity"]["tables"]
    second = json.loads((run_dir / "models" / "tiny_gpt2" / "results.json").read_text())
    assert "model_similarity" not in second["analyzers"]["representation_similarity"]["tables"]
    assert "comparison of tiny_llama, tiny_gpt2" in out


@pytest.mark.parametrize(
    ("models", "message"),
    [
        ("models=[tiny_llama]", "compares nothing"),
        ("models=[tiny_llama,tiny_llama]", "names a model twice"),
        ("models=[tiny_llama,no_such_model]", "no_such_model"),
        ("models=[tiny_llama,tiny_bert] analyzers.linear_probe.layers=[3]", "layer 3 out of range"),
    ],
)
def test_every_model_is_checked_before_any_loads(tmp_path, capsys, models, message):
    run_dir = tmp_path / "cmp"
    code = run_cli([*COMMON, PROBE, *models.split(), f"hydra.run.dir={run_dir}"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and message in err
    assert not run_dir.exists()


def test_only_the_first_model_compares_across_models():
    container = {
        "model": {"name": "tiny_llama", "dtype": "float32"},
        "data": {"texts": ["a b", "c d", "e f", "g h"]},
        "analyzers": {"representation_similarity": {"pooling": "mean", "models": []}},
        "models": ["tiny_llama", "tiny_gpt2", "tiny_bert"],
        "sinks": ["rundir"],
    }
    plan = plan_comparison(container, "/tmp/unused")
    assert plan.models == ["tiny_llama", "tiny_gpt2", "tiny_bert"]
    options = [p.analyzer_options["representation_similarity"]["models"] for p in plan.pipelines]
    assert options == [["tiny_gpt2", "tiny_bert"], [], []]
    assert "models" not in container  # consumed, so the per-model pipelines never see it
    assert plan_comparison({"model": {"name": "tiny_llama"}}, "/tmp/unused") is None


def test_compare_refuses_runs_on_different_inputs(tmp_path):
    runs = []
    for name, texts in (("a", "[one text,two texts]"), ("b", "[one text]")):
        run_dir = tmp_path / name
        code = run_cli(["model=tiny_llama", "+analyzer=activation_stats", "sinks=[rundir]", "progress=false",
                        f"data.texts={texts}", f"hydra.run.dir={run_dir}"])  # fmt: skip
        assert code == 0
        runs.append(run_dir)
    with pytest.raises(ConfigError, match=r"different inputs .*--allow-different-inputs"):
        compare_runs(runs, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    report = compare_runs(runs, tmp_path / "out", allow_different_inputs=True)
    assert report.html.is_file()
