"""Figures: pyplot-free, saved in the configured formats, the same picture in every format.

interpsuite builds `matplotlib.figure.Figure` objects directly: importing it must not switch a
notebook user's backend or import pyplot, and running analyzers must not leave figures in
pyplot's global registry (which warned "More than 20 figures" and held every figure until the
process ended). The run-directory sink writes exactly `figure_formats` (png, pdf, svg).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.image import imread

from interpsuite.figures import FigureStyle
from interpsuite.pipeline import InterpretabilityPipeline
from interpsuite.results import Result
from interpsuite.sinks.base import RunInfo
from interpsuite.sinks.rundir import FIGURE_FORMATS, RunDirSink, save_figure

#: what the first bytes of each format's file look like
MAGIC = {"png": b"\x89PNG\r\n\x1a\n", "pdf": b"%PDF-", "svg": b"<?xml"}


def _demo_figure() -> Figure:
    """A small FigureStyle figure with what makes saving non-trivial: ticks, colorbar, titles."""
    style = FigureStyle()
    fig, axes = style.figure(1, 2)
    for ax in axes.flat:
        image = ax.imshow(np.arange(12.0).reshape(3, 4), cmap=style.cmap, interpolation="none")
        ax.set_xticks(range(4), ["a", "bb", "ccc", "dddd"], rotation=90)
        ax.set_title("panel")
    fig.colorbar(image, ax=axes.ravel().tolist(), label="value")
    fig.suptitle("demo")
    return fig


def _sink(run_dir: Path, options: dict) -> RunDirSink:
    return RunDirSink(RunInfo(run_dir=run_dir, experiment="test", model={}, inputs={}, options=options))


def _write(sink: RunDirSink, figures: dict[str, Figure]) -> dict:
    result = Result()
    result.figures.update(figures)
    entry: dict = {"tables": {}, "figures": {}}
    sink.write("demo", result, entry)
    return entry


# --- no pyplot, no backend switch -------------------------------------------------------------------
def test_import_keeps_the_backend_and_does_not_import_pyplot():
    """In a fresh interpreter, as a notebook would: pick a backend, then import interpsuite,
    its pipeline, sink and every built-in plugin (their plot modules included)."""
    code = textwrap.dedent(
        """
        import sys
        import matplotlib
        matplotlib.use("svg")
        import interpsuite
        from interpsuite import InterpretabilityPipeline
        import interpsuite.figures, interpsuite.pipeline, interpsuite.sinks.rundir
        from interpsuite.plugins import get_registry
        registry = get_registry()
        assert "attention_patterns" in registry.analyzers, sorted(registry.analyzers)
        assert "matplotlib.pyplot" not in sys.modules, "interpsuite imported matplotlib.pyplot"
        assert matplotlib.get_backend() == "svg", matplotlib.get_backend()
        print("ok")
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("ok")


def test_style_figures_are_plain_figures_outside_pyplot():
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # pyplot's "More than 20 figures" is one
        figures = [FigureStyle().figure()[0] for _ in range(25)]
    assert all(isinstance(f, Figure) and f.canvas.manager is None for f in figures)
    assert plt.get_fignums() == before


@pytest.fixture(scope="module")
def patterns_run(tmp_path_factory):
    """attention_patterns on tiny_llama through the pipeline (2 head figures + the grid), with
    pyplot's figure registry looked at before and after."""
    import matplotlib.pyplot as plt

    run_dir = tmp_path_factory.mktemp("patterns")
    before = plt.get_fignums()
    report = InterpretabilityPipeline(
        model="tiny_llama",
        data=["When Mary and John went to the store, John gave a drink to", "The capital of France is"],
        analyzers={"attention_patterns": {"max_texts": 2, "max_head_figures": 2}},
        sinks=["rundir"],
        output_dir=run_dir,
        progress=False,
    ).run()
    return report, before, plt.get_fignums()


def test_pipeline_figures_are_not_registered_with_pyplot(patterns_run):
    report, before, after = patterns_run
    assert report.ok, report.results["attention_patterns"].error
    figures = report.results["attention_patterns"].figures
    assert len(figures) == 3
    assert all(isinstance(f, Figure) and f.canvas.manager is None for f in figures.values())
    assert after == before


def test_pipeline_writes_the_default_formats(patterns_run):
    report, _, _ = patterns_run
    entry = report.payload["analyzers"]["attention_patterns"]
    for name, paths in entry["figures"].items():
        assert [Path(p).suffix for p in paths] == [".png", ".pdf"], name
        for rel in paths:
            path = report.run_dir / rel
            assert path.read_bytes().startswith(MAGIC[path.suffix[1:]]), rel


def test_attention_patterns_figures_save_in_every_format(patterns_run, tmp_path):
    report, _, _ = patterns_run
    entry = _write(
        _sink(tmp_path, {"figure_formats": list(FIGURE_FORMATS)}), report.results["attention_patterns"].figures
    )
    for name, paths in entry["figures"].items():
        assert [Path(p).suffix[1:] for p in paths] == list(FIGURE_FORMATS), name
        for rel in paths:
            data = (tmp_path / rel).read_bytes()
            assert data.startswith(MAGIC[Path(rel).suffix[1:]]), rel
            assert len(data) > 1000, rel


# --- figure formats ---------------------------------------------------------------------------------
@pytest.mark.parametrize("formats", [["svg"], ["png"], ["pdf"], ["pdf", "svg"], ["png", "pdf", "svg"]])
def test_figure_formats_write_exactly_those_files(tmp_path, formats):
    entry = _write(_sink(tmp_path, {"figure_formats": formats}), {"demo fig": _demo_figure()})
    assert entry["figures"] == {"demo fig": [f"figures/demo/demo_fig.{fmt}" for fmt in formats]}
    written = sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "figures").rglob("*") if p.is_file())
    assert written == sorted(entry["figures"]["demo fig"])
    for rel in written:
        assert (tmp_path / rel).read_bytes().startswith(MAGIC[Path(rel).suffix[1:]]), rel


def test_without_the_option_png_and_pdf_are_written(tmp_path):
    entry = _write(_sink(tmp_path, {}), {"fig": _demo_figure()})
    assert entry["figures"] == {"fig": ["figures/demo/fig.png", "figures/demo/fig.pdf"]}


def test_unknown_format_is_refused(tmp_path):
    with pytest.raises(ValueError, match="jpg"):
        save_figure(_demo_figure(), tmp_path / "fig", ["png", "jpg"])
    assert not list(tmp_path.iterdir())


def test_save_figure_draws_what_a_plain_tight_savefig_draws(tmp_path):
    """Layout once, box once, then every format: the PNG is pixel for pixel the plain call's,
    and the figure keeps its layout engine for whoever saves or shows it next."""
    import pickle

    figure = _demo_figure()
    twin = pickle.loads(pickle.dumps(figure))
    engine = figure.get_layout_engine()
    save_figure(figure, tmp_path / "fast", ["png", "pdf"])
    twin.savefig(tmp_path / "plain.png", bbox_inches="tight")
    fast, plain = imread(tmp_path / "fast.png"), imread(tmp_path / "plain.png")
    assert fast.shape == plain.shape
    assert np.array_equal(fast, plain)
    assert figure.get_layout_engine() is engine


def test_pattern_grid_is_one_image_however_many_heads():
    """270 heads (SmolLM2's 30 x 9) as one tiled image in one Axes, not 270 Axes to lay out."""
    from interpsuite_plugins.attention.plots import pattern_mosaic, plot_pattern_grid

    layers, heads = list(range(30)), list(range(9))
    patterns = {(layer, head): np.full((5, 5), layer / 30) for layer in layers for head in heads}
    fig = plot_pattern_grid(patterns, layers, heads, "grid", FigureStyle())
    assert len(fig.axes) == 1
    mosaic = pattern_mosaic(patterns, layers, heads, gap=1)
    assert mosaic.shape == (30 * 6 - 1, 9 * 6 - 1)
    assert mosaic[6 * 29, 6 * 8] == pytest.approx(29 / 30) and np.isnan(mosaic[5, 0])
