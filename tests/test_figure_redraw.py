"""`interpsuite figures RUN_DIR`: a finished run's figures redrawn from saved data, without the model.

On an activation_stats run of tiny_llama (two line/histogram figures): `--style run` gives the
run's PNGs pixel for pixel; the paper style gives vector PDFs with TrueType (Type 42) fonts and
file names without spaces; bad input is one line and exit code 2.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from interpsuite import InterpretabilityPipeline
from interpsuite.cli import main
from interpsuite.figure_data import ARRAYS_FILE

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Paris is the capital of France.", "Hi"]
ANALYZER = "activation_stats"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_models) -> Path:
    run = tmp_path_factory.mktemp("redraw") / "run"
    report = InterpretabilityPipeline(
        model=tiny_models["tiny_llama"],
        data=TEXTS,
        analyzers={ANALYZER: {}},
        output_dir=run,
        sinks=["rundir"],
        progress=False,
    ).run()
    assert report.ok, report.results[ANALYZER].error
    return run


@pytest.fixture(autouse=True)
def no_model(monkeypatch):
    """Redrawing must never load a model (the run fixture, module-scoped, has made its run already)."""

    def refuse(*args, **kwargs):
        raise AssertionError("interpsuite figures loaded a model")

    monkeypatch.setattr("interpsuite.models.loading.load_model", refuse)
    monkeypatch.setattr("interpsuite.pipeline.load_model", refuse)


def figure_names(run: Path) -> list[str]:
    return sorted(json.loads((run / "results.json").read_text())["analyzers"][ANALYZER]["figures"])


def pdf_facts(path: Path) -> dict:
    """What a PDF holds, from its bytes: matplotlib writes object dictionaries uncompressed
    (only content streams are deflated), so `/Subtype /Image` marks every raster image."""
    data = path.read_bytes()
    assert data.startswith(b"%PDF-")
    return {
        "subtypes": set(re.findall(rb"/Subtype\s*/(\w+)", data)),
        "type3": b"/Type3" in data,
        "media_box": [float(v) for v in re.search(rb"/MediaBox\s*\[([^\]]*)\]", data).group(1).split()],
    }


def test_run_style_redraws_the_runs_pngs_pixel_for_pixel(run_dir, tmp_path, capsys):
    out = tmp_path / "redraw"
    assert main(["figures", str(run_dir), "--style", "run", "--format", "png", "--out", str(out)]) == 0
    names = figure_names(run_dir)
    assert len(names) == 2
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{ANALYZER}-{name}.png" for name in names)
    for name in names:
        original = imread(run_dir / "figures" / ANALYZER / f"{name}.png")
        redrawn = imread(out / f"{ANALYZER}-{name}.png")
        assert original.shape == redrawn.shape, name
        assert np.array_equal(original, redrawn), name
    assert f"2 figures redrawn (2 files) in {out}" in capsys.readouterr().out


def test_paper_style_writes_vector_pdfs_with_truetype_fonts(run_dir, tmp_path):
    out = tmp_path / "paper"
    assert main(["figures", str(run_dir), "--out", str(out)]) == 0
    written = sorted(out.iterdir())
    assert [p.name for p in written] == sorted(f"{ANALYZER}-{name}.pdf" for name in figure_names(run_dir))
    for path in written:
        assert " " not in path.name
        facts = pdf_facts(path)
        assert b"Image" not in facts["subtypes"], path.name  # no raster image: lines and text stay vectors
        assert facts["subtypes"] & {b"TrueType", b"CIDFontType2"}, (path.name, facts["subtypes"])
        assert not facts["type3"], path.name


def test_the_pdf_check_sees_raster_images(tmp_path):
    """The bytes search above is not vacuous: a figure with an image does show `/Subtype /Image`."""
    from interpsuite.figures import preset
    from interpsuite.sinks.rundir import save_figure

    style = preset("paper")
    with style.context():
        fig, axes = style.figure()
        axes[0, 0].imshow(np.arange(16.0).reshape(4, 4))
        axes[0, 0].set_title("image")
        (path,) = save_figure(fig, tmp_path / "image", ["pdf"])
    facts = pdf_facts(path)
    assert b"Image" in facts["subtypes"]
    assert facts["subtypes"] & {b"TrueType", b"CIDFontType2"} and not facts["type3"]


def test_column_width_sets_the_pdf_width(run_dir, tmp_path):
    """A paper figure fits its column: the cropped page is no wider than the column (+0.1 in padding each side)."""
    widths = {}
    for column in ("single", "double"):
        out = tmp_path / column
        only = f"{ANALYZER}.layer_profile"
        assert main(["figures", str(run_dir), "--column", column, "--only", only, "--out", str(out)]) == 0
        box = pdf_facts(out / f"{ANALYZER}-layer_profile.pdf")["media_box"]
        widths[column] = (box[2] - box[0]) / 72
    assert widths["single"] <= 3.25 + 0.2
    assert 3.25 + 0.2 < widths["double"] <= 6.75 + 0.2


def test_only_selects_figures_and_formats(run_dir, tmp_path):
    out = tmp_path / "only"
    argv = ["figures", str(run_dir), "--only", f"{ANALYZER}.layer_profile", "--format", "svg", "--format", "png"]
    assert main([*argv, "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [f"{ANALYZER}-layer_profile.png", f"{ANALYZER}-layer_profile.svg"]
    out_all = tmp_path / "by_analyzer"
    assert main(["figures", str(run_dir), "--only", ANALYZER, "--out", str(out_all)]) == 0
    assert len(list(out_all.iterdir())) == 2


def test_default_output_folder_is_inside_the_run(run_dir):
    assert main(["figures", str(run_dir), "--style", "slides", "--only", f"{ANALYZER}.layer_profile"]) == 0
    out = run_dir / "figures_slides"
    try:
        assert [p.name for p in out.iterdir()] == [f"{ANALYZER}-layer_profile.pdf"]
    finally:
        shutil.rmtree(out)


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("interpsuite: error: ")
    return err


def test_unknown_only_is_one_line_and_exit_2(run_dir, tmp_path, capsys):
    assert main(["figures", str(run_dir), "--only", "nope.figure", "--out", str(tmp_path / "x")]) == 2
    err = one_error_line(capsys)
    assert "--only nope.figure" in err and f"{ANALYZER}.layer_profile" in err
    assert not (tmp_path / "x").exists()


def copy_without_figure_data(run_dir: Path, dest: Path) -> Path:
    """A copy of a run as an interpsuite older than figure data wrote it (no `figure_data`)."""
    shutil.copytree(run_dir, dest)
    payload = json.loads((dest / "results.json").read_text())
    for entry in payload["analyzers"].values():
        entry.pop("figure_data", None)
    (dest / "results.json").write_text(json.dumps(payload))
    return dest


def test_a_run_without_figure_data_says_so(run_dir, tmp_path, capsys):
    """A run directory written before figure data existed: results.json has no `figure_data`."""
    old = copy_without_figure_data(run_dir, tmp_path / "old_run")
    assert main(["figures", str(old)]) == 2
    err = one_error_line(capsys)
    assert "no saved figure data" in err and "rerun" in err


def test_a_missing_run_dir_is_exit_2(tmp_path, capsys):
    assert main(["figures", str(tmp_path / "absent")]) == 2
    assert "is not a run directory" in one_error_line(capsys)


def test_changed_data_fails_that_figure_only(run_dir, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    arrays = run / "figure_data" / ANALYZER / "layer_profile" / ARRAYS_FILE
    arrays.write_bytes(arrays.read_bytes()[:-1] + b"\x00")
    out = tmp_path / "out"
    assert main(["figures", str(run), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"{ANALYZER}.layer_profile" in err and "sha256" in err
    assert [p.name for p in out.iterdir()] == [f"{ANALYZER}-neuron_histograms.pdf"]


def test_unknown_style_is_refused_by_the_parser(run_dir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["figures", str(run_dir), "--style", "fancy"])
    assert exit_info.value.code == 2
    assert "fancy" in capsys.readouterr().err
