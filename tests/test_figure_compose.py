"""`interpsuite figures compose SPEC.yaml`: a multi-panel figure from saved figure data.

One tiny_llama run of representation_similarity (two heatmaps: layer_cka, layer_rsa) and
activation_stats (line figures): the panels are redrawn into one Figure with letters, and a
shared colour bar gives both heatmaps one scale. Bad specs are one line naming the key.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml
from matplotlib.image import imread

from interpsuite import InterpretabilityPipeline
from interpsuite.cli import main
from interpsuite.errors import ConfigError
from interpsuite.figure_compose import color_mappables, compose, load_spec, panel_letter
from interpsuite.figure_data import FigureRecipe
from interpsuite.figures import preset
from tests.test_figure_redraw import copy_without_figure_data

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Paris is the capital of France.", "Hi"]
CKA = "representation_similarity.layer_cka"
RSA = "representation_similarity.layer_rsa"
PROFILE = "activation_stats.layer_profile"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_models) -> Path:
    run = tmp_path_factory.mktemp("compose") / "runs" / "tiny"
    report = InterpretabilityPipeline(
        model=tiny_models["tiny_llama"],
        data=TEXTS,
        analyzers={"representation_similarity": {}, "activation_stats": {}},
        output_dir=run,
        sinks=["rundir"],
        progress=False,
    ).run()
    assert report.ok, {name: r.error for name, r in report.results.items()}
    return run


def write_spec(folder: Path, spec: dict, name: str = "figure1.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(spec))
    return path


def heatmap_spec(run_dir: Path, folder: Path) -> dict:
    """The 1x2 figure: both heatmaps, letters, one colour bar; the run path relative to the spec."""
    run = _relative(run_dir, folder)
    return {
        "style": "paper",
        "column": "double",
        "layout": [1, 2],
        "letters": True,
        "formats": ["pdf", "png"],
        "panels": [{"run": run, "figure": CKA}, {"run": run, "figure": RSA, "title": "RSA"}],
        "shared_colorbar": {"label": "similarity", "panels": [0, 1]},
    }


def _relative(target: Path, start: Path) -> str:
    return os.path.relpath(target, start)


def own_limits(run_dir: Path, figure: str) -> tuple[float, float]:
    """The colour limits a figure has on its own (drawn alone, as `interpsuite figures` would)."""
    analyzer, name = figure.split(".")
    recipe = FigureRecipe.load(run_dir / "figure_data" / analyzer / name)
    drawn = recipe.draw(preset("paper"))
    (image,) = [m for ax in drawn.axes if not hasattr(ax, "_colorbar") for m in ax.images]
    return image.get_clim()


def test_compose_two_heatmaps_with_letters_and_a_shared_colorbar(run_dir, tmp_path, capsys):
    spec_path = write_spec(tmp_path, heatmap_spec(run_dir, tmp_path))
    assert main(["figures", "compose", str(spec_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figure1.pdf", "figure1.png", "figure1.yaml"]
    assert imread(tmp_path / "figure1.png").shape[2] in (3, 4)
    assert (tmp_path / "figure1.pdf").read_bytes().startswith(b"%PDF-")
    assert "2 panels composed into" in capsys.readouterr().out

    figure = compose(load_spec(spec_path))
    panels = figure.subfigs
    assert len(panels) == 2
    plot_axes = [ax for panel in panels for ax in panel.axes if not hasattr(ax, "_colorbar")]
    colorbar_axes = [ax for panel in panels for ax in panel.axes if hasattr(ax, "_colorbar")]
    assert len(plot_axes) == 2 and {ax.figure for ax in plot_axes} == set(panels)
    assert len(colorbar_axes) == 1  # the panels' own two colour bars are gone, one shared bar is left
    (colorbar_ax,) = colorbar_axes
    assert colorbar_ax.get_ylabel() == "similarity"

    limits = [own_limits(run_dir, CKA), own_limits(run_dir, RSA)]
    common = (min(low for low, _ in limits), max(high for _, high in limits))
    images = [m for panel in panels for m in color_mappables(panel)]
    assert len(images) == 2
    assert all(image.get_clim() == common for image in images)
    assert colorbar_ax._colorbar.mappable.get_clim() == common
    assert colorbar_ax._colorbar.mappable in images

    letters = [[t.get_text() for t in panel.texts if t.get_fontweight() == "bold"] for panel in panels]
    assert letters == [["a"], ["b"]]
    assert panels[1]._suptitle.get_text() == "RSA"


def test_cli_out_and_format_override_the_spec(run_dir, tmp_path):
    spec = heatmap_spec(run_dir, tmp_path)
    spec["shared_colorbar"] = None
    spec["letters"] = False
    spec_path = write_spec(tmp_path, spec)
    out = tmp_path / "elsewhere" / "fig"
    assert main(["figures", "compose", str(spec_path), "--out", str(out), "--format", "svg"]) == 0
    assert [p.name for p in out.parent.iterdir()] == ["fig.svg"]
    figure = compose(load_spec(spec_path))
    colorbars = [ax for panel in figure.subfigs for ax in panel.axes if hasattr(ax, "_colorbar")]
    assert len(colorbars) == 2  # without sharing, each heatmap keeps its own bar
    assert all(not [t for t in panel.texts if t.get_fontweight() == "bold"] for panel in figure.subfigs)


def test_a_larger_layout_leaves_blank_places_and_mixes_figure_kinds(run_dir, tmp_path):
    run = _relative(run_dir, tmp_path)
    spec = {
        "layout": [2, 2],
        "size": [6.75, 5.0],
        "output": "out/mixed",
        "formats": ["png"],
        "panels": [{"run": run, "figure": CKA}, {"run": run, "figure": PROFILE}, {"run": run, "figure": RSA}],
    }
    spec_path = write_spec(tmp_path, spec)
    assert main(["figures", "compose", str(spec_path)]) == 0
    assert (tmp_path / "out" / "mixed.png").is_file()
    figure = compose(load_spec(spec_path))
    assert tuple(figure.get_size_inches()) == (6.75, 5.0)
    assert [panel.get_visible() for panel in figure.subfigs] == [True, True, True, False]
    assert len(figure.subfigs[1].axes) == 4  # layer_profile's 2x2 axes, in its panel
    assert not figure.subfigs[3].axes


def test_default_size_is_the_style_width_and_a_row_height_per_row(run_dir, tmp_path):
    run = _relative(run_dir, tmp_path)
    spec = {"column": "single", "layout": [2, 1], "panels": [{"run": run, "figure": CKA}]}
    loaded = load_spec(write_spec(tmp_path, spec))
    style = preset("paper", "single")
    assert loaded.figsize == (style.width, 2 * style.height)
    assert loaded.output == tmp_path / "figure1" and loaded.formats == ["pdf"]


def test_panel_letters_continue_past_z():
    assert [panel_letter(i) for i in (0, 1, 25, 26, 27, 51, 52)] == ["a", "b", "z", "aa", "ab", "az", "ba"]


# --- bad specs: one line naming the key, exit code 2 ------------------------------------------------
def _bad_cases(run: str) -> dict[str, tuple[object, str]]:
    panel = {"run": run, "figure": CKA}
    return {
        "empty panels": ({"panels": []}, "panels: give a non-empty list"),
        "no panels": ({"layout": [1, 1]}, "panels: give a non-empty list"),
        "layout too small": ({"layout": [1, 1], "panels": [panel, panel]}, "layout: [1, 1] has 1 places for 2"),
        "layout not a pair": ({"layout": [2], "panels": [panel]}, "layout: [2] is not [rows, columns]"),
        "unknown figure": ({"panels": [{"run": run, "figure": "nope.x"}]}, "panels[0].figure nope.x: no such"),
        "analyzer with many figures": (
            {"panels": [{"run": run, "figure": "representation_similarity"}]},
            "panels[0].figure: 'representation_similarity' names 2 figures",
        ),
        "missing run": ({"panels": [{"run": "absent", "figure": CKA}]}, "is not a run directory"),
        "panel without figure": ({"panels": [{"run": run}]}, "panels[0].figure: missing"),
        "unknown panel key": ({"panels": [{**panel, "colour": 1}]}, "panels[0].colour: unknown key"),
        "unknown key": ({"panels": [panel], "colums": 2}, "colums: unknown key"),
        "unknown style": ({"style": "fancy", "panels": [panel]}, "style: figure style 'fancy'"),
        "unknown column": ({"column": "triple", "panels": [panel]}, "column: figure style column 'triple'"),
        "bad format": ({"formats": ["jpg"], "panels": [panel]}, "formats: 'jpg' is not one of"),
        "bad size": ({"size": [3, -1], "panels": [panel]}, "size: [3, -1] is not [width, height]"),
        "letters not bool": ({"letters": "yes", "panels": [panel]}, "letters: 'yes' is not true or false"),
        "colorbar panel out of range": (
            {"panels": [panel], "shared_colorbar": {"panels": [0, 3]}},
            "shared_colorbar.panels: 3 is not a panel number",
        ),
        "colorbar on a line figure": (
            {"panels": [panel, {"run": run, "figure": PROFILE}], "shared_colorbar": {"panels": [0, 1]}},
            f"shared_colorbar.panels: panel 1 ({PROFILE}) has no image or mesh",
        ),
        "not a mapping": ([panel], "a compose spec is a mapping"),
    }


BAD = list(_bad_cases("x"))


@pytest.mark.parametrize("case", BAD)
def test_bad_specs_are_one_line_naming_the_key(case, run_dir, tmp_path, capsys):
    spec, expected = _bad_cases(_relative(run_dir, tmp_path))[case]
    spec_path = write_spec(tmp_path, spec)
    assert main(["figures", "compose", str(spec_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"interpsuite: error: {spec_path}: "), err
    assert expected in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figure1.yaml"]  # nothing written


def test_a_missing_or_unparsable_spec_is_one_line(tmp_path, capsys):
    assert main(["figures", "compose", str(tmp_path / "absent.yaml")]) == 2
    assert "no such compose spec file" in capsys.readouterr().err
    path = tmp_path / "broken.yaml"
    path.write_text("panels: [\n  - {run: x\n")
    assert main(["figures", "compose", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a readable YAML file" in err


def test_yaml_tags_are_not_executed(tmp_path):
    """safe_load: a python tag in a spec is an error, never a call."""
    path = tmp_path / "evil.yaml"
    path.write_text("panels: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ConfigError, match="not a readable YAML file"):
        load_spec(path)


def test_a_run_without_figure_data_gives_the_redraw_message(run_dir, tmp_path, capsys):
    copy_without_figure_data(run_dir, tmp_path / "old_run")
    spec_path = write_spec(tmp_path, {"panels": [{"run": "old_run", "figure": CKA}]})
    assert main(["figures", "compose", str(spec_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"panels[0]: {tmp_path / 'old_run'}: figure {CKA} has no saved figure data" in err


def test_changed_panel_data_is_refused_before_drawing(run_dir, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    arrays = run / "figure_data" / "representation_similarity" / "layer_rsa" / "arrays.safetensors"
    arrays.write_bytes(arrays.read_bytes()[:-1] + b"\x00")
    spec = {"panels": [{"run": "run", "figure": CKA}, {"run": "run", "figure": RSA}], "formats": ["png"]}
    spec_path = write_spec(tmp_path, spec)
    assert main(["figures", "compose", str(spec_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"panels[1] ({RSA}):" in err and "sha256" in err
    assert not (tmp_path / "figure1.png").exists()
