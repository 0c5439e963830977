"""Every built-in analyzer's figures redraw from saved data, without the model.

Each analyzer runs with its default options on tiny_llama (and tiny_bert where it runs on
encoders); then `interpsuite figures` redraws every figure it listed: in the run's own style
the PNG is the run's PNG pixel for pixel (so the saved data is the whole of what the figure
shows), and in the paper style as PDF. A figure assigned to `result.figures` directly, without
`result.add_figure`, has no data and fails here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from interpsuite import InterpretabilityPipeline
from interpsuite.figure_command import redraw
from interpsuite.plugins import get_registry
from interpsuite.results import read_results

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Paris is the capital of France.", "Hi"]
MODELS = ("tiny_llama", "tiny_bert")


def builtin_analyzers() -> list[str]:
    """Read at collection time: the analyzers interpsuite itself ships."""
    return sorted(name for name, item in get_registry().analyzers.items() if item.distribution == "interpsuite")


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("analyzer_name", builtin_analyzers())
def test_every_figure_redraws_from_saved_data(analyzer_name, model_name, tiny_models, tmp_path, monkeypatch):
    registry = get_registry()
    model = tiny_models[model_name]
    if registry.analyzers[analyzer_name].obj.requires_causal_lm and not model.info.is_causal:
        pytest.skip(f"{analyzer_name} needs a causal LM")
    run = tmp_path / "run"
    report = InterpretabilityPipeline(
        model=model,
        data=TEXTS,
        analyzers={analyzer_name: {}},
        output_dir=run,
        sinks=["rundir"],
        progress=False,
    ).run()
    entry = read_results(run)["analyzers"][analyzer_name]
    assert entry["status"] in ("ok", "skipped"), report.results[analyzer_name].error
    if not entry["figures"]:
        pytest.skip(f"{analyzer_name} draws no figure with its default options on {model_name}")
    assert_figures_redraw(run, analyzer_name, tmp_path / "redrawn", monkeypatch)


def assert_figures_redraw(run: Path, analyzer_name: str, out: Path, monkeypatch) -> None:
    """Every figure of `analyzer_name` in `run` redraws without a model: in the run's style pixel
    for pixel, in the paper style as PDF."""
    entry = read_results(run)["analyzers"][analyzer_name]
    assert entry["figures"], f"{analyzer_name} drew no figure"
    without_data = sorted(set(entry["figures"]) - set(entry.get("figure_data", {})))
    assert without_data == [], f"figures drawn without result.add_figure: {without_data}"

    def refuse(*args, **kwargs):
        raise AssertionError("redrawing loaded a model")

    monkeypatch.setattr("interpsuite.models.loading.load_model", refuse)
    monkeypatch.setattr("interpsuite.pipeline.load_model", refuse)

    same = redraw(run, out / "same", style="run", formats=["png"])
    assert same.failed == {} and same.without_data == []
    assert sorted(same.written) == sorted(f"{analyzer_name}.{name}" for name in entry["figures"])
    differ = []
    for name, files in entry["figures"].items():
        (png,) = [Path(f) for f in files if f.endswith(".png")]
        (redrawn,) = same.written[f"{analyzer_name}.{name}"]
        original, again = imread(run / png), imread(redrawn)
        if original.shape != again.shape or not np.array_equal(original, again):
            differ.append(name)
    assert differ == [], f"redrawn in the run's style but not pixel-identical: {differ}"

    paper = redraw(run, out / "paper", style="paper", formats=["pdf"])
    assert paper.failed == {}
    for files in paper.written.values():
        (pdf,) = files
        assert pdf.read_bytes().startswith(b"%PDF-") and " " not in pdf.name
