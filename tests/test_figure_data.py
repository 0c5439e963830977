"""Figure data (figure_data.py): what a figure is drawn from, saved without pickle and read back exactly.

A redrawn figure is only the run's figure if its arguments come back bit for bit: same dtypes,
NaN where there was NaN, None where there was None, tuple keys as tuples. And a run directory
from someone else must not be able to name an arbitrary callable or smuggle in changed data.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from interpsuite.errors import ConfigError, PluginError
from interpsuite.figure_command import saved_figures
from interpsuite.figure_data import ARRAYS_FILE, RECIPE_FILE, FigureRecipe, UnsavableArgumentError
from interpsuite.figures import FigureStyle, figure_function, preset


@figure_function
def record(*args, **kwargs):
    """A marked 'plot function' that returns its arguments, so a redraw shows what it was given."""
    return args, kwargs


def round_trip(value, tmp_path: Path):
    """`value` captured as a figure argument, saved to files, loaded and decoded again."""
    recipe = FigureRecipe.capture(record, (value,), {})
    folder = tmp_path / "fig"
    recipe.save(folder)
    json.loads((folder / RECIPE_FILE).read_text())  # strict JSON (no NaN literals)
    return FigureRecipe.load(folder).arguments(FigureStyle())[0][0]


def assert_frames_identical(left: pd.DataFrame, right: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(
        left, right, check_exact=True, check_dtype=True, check_index_type=True, check_column_type=True
    )
    assert list(left.columns) == list(right.columns)
    assert left.columns.names == right.columns.names and left.index.names == right.index.names
    for column in left.columns:  # None and NaN are different values in an object column
        for a, b in zip(left[column].tolist(), right[column].tolist(), strict=True):
            assert type(a) is type(b), (column, a, b)


FRAMES = {
    "mixed columns": lambda: pd.DataFrame(
        {
            "i": [1, 2, 3],
            "f": [1.5, np.nan, -0.0],
            "b": [True, False, True],
            "s": ["a", "b", None],
            "o": pd.Series([1, "x", None], dtype=object),
            "nan_object": pd.Series([1.5, "y", math.nan], dtype=object),
        }
    ),
    "float32 with a non-range index": lambda: pd.DataFrame(
        {"x": np.array([1.25, np.nan, -3.0], dtype=np.float32), "n": np.array([1, 2, 3], dtype=np.int16)},
        index=[10, 20, 5],
    ),
    "named string index": lambda: pd.DataFrame({"x": [1, 2]}, index=pd.Index(["a", "b"], name="key")),
    "MultiIndex rows": lambda: pd.DataFrame(
        {"x": [1.0, 2.0, 3.0]},
        index=pd.MultiIndex.from_tuples([(0, "a"), (0, "b"), (1, "a")], names=["layer", "hook"]),
    ),
    "integer column names": lambda: pd.DataFrame({0: [1.0], 7: [2.0]}),
    "MultiIndex columns": lambda: pd.DataFrame(
        [[1.0, 2.0]], columns=pd.MultiIndex.from_tuples([("acc", 0), ("acc", 1)], names=["metric", "seed"])
    ),
    "pivot table (named columns)": lambda: pd.DataFrame(
        {"layer": [0, 0, 1, 1], "head": [0, 1, 0, 1], "x": [0.1, 0.2, 0.3, 0.4]}
    ).pivot(index="layer", columns="head", values="x"),
    "categorical in category order": lambda: pd.DataFrame(
        {"c": pd.Categorical(["b", "a", "b"], categories=["b", "a", "z"], ordered=True)}
    ),
    "nullable integers": lambda: pd.DataFrame({"n": pd.array([1, None, 3], dtype="Int64")}),
    "no rows": lambda: pd.DataFrame({"x": pd.Series([], dtype=float), "s": pd.Series([], dtype=object)}),
    "no columns": lambda: pd.DataFrame(index=[3, 4]),
    "lists in cells": lambda: pd.DataFrame({"tokens": pd.Series([["a", "b"], []], dtype=object)}),
}


@pytest.mark.parametrize("name", list(FRAMES))
def test_dataframes_round_trip_exactly(name, tmp_path):
    frame = FRAMES[name]()
    assert_frames_identical(frame, round_trip(frame, tmp_path))


def test_series_round_trip_with_name_and_index(tmp_path):
    series = pd.Series([1.5, np.nan], index=pd.Index(["a", "b"], name="k"), name="value")
    back = round_trip(series, tmp_path)
    pd.testing.assert_series_equal(series, back, check_exact=True, check_index_type=True)
    assert back.name == "value" and back.index.name == "k"


ARRAYS = {
    "int8 2-d": np.arange(-3, 3, dtype=np.int8).reshape(2, 3),
    "uint64": np.array([0, 2**64 - 1], dtype=np.uint64),
    "float16 with NaN": np.array([1.5, np.nan, -0.0], dtype=np.float16),
    "float32": np.array([[1e-30, -np.inf]], dtype=np.float32),
    "float64 sliced (not contiguous)": np.arange(12.0).reshape(3, 4)[:, ::2],
    "bool": np.array([True, False]),
    "0-d float": np.array(3.5),
    "0-d int": np.array(7, dtype=np.int32),
    "empty": np.zeros((0, 3)),
    "str 1-d": np.array(["a", "bc"]),
    "str 2-d, wider dtype": np.array([["x", "y"], ["zz", ""]], dtype="<U5"),
    "0-d str": np.array("only"),
    "object": np.array([1, "a", None, 2.5], dtype=object),
}


@pytest.mark.parametrize("name", list(ARRAYS))
def test_numpy_arrays_round_trip_exactly(name, tmp_path):
    array = ARRAYS[name]
    back = round_trip(array, tmp_path)
    assert isinstance(back, np.ndarray)
    assert (back.dtype, back.shape) == (array.dtype, array.shape)
    if array.dtype.kind in "biuf":
        assert back.tobytes() == np.ascontiguousarray(array).tobytes()  # bit for bit, NaN and -0.0 included
    else:
        assert back.tolist() == array.tolist()


@pytest.mark.parametrize(
    "scalar", [np.float32(1.5), np.float64(-0.0), np.int64(-3), np.uint8(200), np.bool_(True), np.float16(np.nan)]
)
def test_numpy_scalars_come_back_as_scalars_of_their_type(scalar, tmp_path):
    back = round_trip(scalar, tmp_path)
    assert type(back) is type(scalar)
    assert np.asarray(back).tobytes() == np.asarray(scalar).tobytes()


@pytest.mark.parametrize(
    "tensor",
    [
        torch.arange(6).reshape(2, 3),
        torch.tensor([1.5, float("nan"), -0.0, 3e38], dtype=torch.bfloat16),
        torch.tensor([[0.1, -2.0]], dtype=torch.float16),
        torch.tensor(2.0),
        torch.ones(3, requires_grad=True),
        torch.arange(10.0)[::3],
        torch.tensor([True, False]),
    ],
    ids=["int64", "bf16", "fp16", "0-d", "requires_grad", "strided", "bool"],
)
def test_torch_tensors_round_trip_bit_for_bit(tensor, tmp_path):
    back = round_trip(tensor, tmp_path)
    assert isinstance(back, torch.Tensor)
    assert (back.dtype, tuple(back.shape)) == (tensor.dtype, tuple(tensor.shape))
    assert back.detach().contiguous().view(-1).view(torch.uint8).tolist() == (
        tensor.detach().contiguous().view(-1).view(torch.uint8).tolist()
    )


def test_plain_values_round_trip(tmp_path):
    value = {
        "floats": [math.inf, -math.inf, 1e300, 5e-324, 0.1],
        "big int": 2**70,
        "tuple": (1, 2.5, "a", None, (3,)),
        1: "int key",
        (2, 3): [1, [2, (3, [4])]],
        None: True,
        2.5: "float key",
        "empty": ([], (), {}),
        "str": "ünïcode \n ok",
    }
    back = round_trip(value, tmp_path)
    assert back == value
    assert list(back) == list(value)  # key order kept
    assert type(back["tuple"]) is tuple and type(back["tuple"][4]) is tuple
    assert type(back[(2, 3)][1][1]) is tuple and type(back[(2, 3)][1][1][1]) is list
    assert isinstance(back[1], str) and (2, 3) in back


def test_nan_and_negative_zero_survive(tmp_path):
    nan, zero = round_trip([math.nan, -0.0], tmp_path)
    assert math.isnan(nan)
    assert zero == 0.0 and math.copysign(1.0, zero) == -1.0


def test_the_style_argument_is_replaced_by_the_redraw_style(tmp_path):
    run_style = preset("default")
    recipe = FigureRecipe.capture(record, ([1, 2], run_style), {"style": run_style}, style=run_style)
    recipe.save(tmp_path)
    paper = preset("paper", "single")
    args, kwargs = FigureRecipe.load(tmp_path).arguments(paper)
    assert args[1] is paper and kwargs["style"] is paper
    assert FigureRecipe.load(tmp_path).style == run_style.to_dict()
    assert FigureStyle.from_dict(FigureRecipe.load(tmp_path).style) == run_style


def test_capture_is_a_snapshot(tmp_path):
    array = np.zeros(3)
    frame = pd.DataFrame({"x": [1.0, 2.0]})
    recipe = FigureRecipe.capture(record, (array, frame), {})
    array[:] = 9.0
    frame.loc[0, "x"] = 9.0
    recipe.save(tmp_path)
    args, _ = FigureRecipe.load(tmp_path).arguments(FigureStyle())
    assert args[0].tolist() == [0.0, 0.0, 0.0]
    assert args[1]["x"].tolist() == [1.0, 2.0]


@dataclass
class Point:
    x: float


@pytest.mark.parametrize(
    "value",
    [
        {1, 2},
        frozenset({1}),
        Point(1.0),
        Path("x.csv"),
        b"bytes",
        1 + 2j,
        np.array([1 + 2j]),
        np.array(["2020-01-01"], dtype="datetime64[D]"),
        pd.DataFrame({"when": pd.to_datetime(["2020-01-01"])}),
        len,
        [1, {2}],
        {"nested": Point(0.0)},
    ],
    ids=lambda v: type(v).__name__,
)
def test_unsavable_values_are_refused(value):
    with pytest.raises(UnsavableArgumentError):
        FigureRecipe.capture(record, (value,), {})


def test_a_figure_is_not_a_figure_argument():
    figure, _ = FigureStyle().figure()
    with pytest.raises(UnsavableArgumentError, match="matplotlib"):
        FigureRecipe.capture(record, (), {"fig": figure})


def test_capture_refuses_an_unmarked_or_nested_function():
    def unmarked(style):
        return None

    with pytest.raises(PluginError, match="figure_function"):
        FigureRecipe.capture(unmarked, (), {})
    with pytest.raises(PluginError, match="module-level"):
        FigureRecipe.capture(figure_function(unmarked), (), {})


# --- what a saved recipe may name and hold ----------------------------------------------------------
def _save_naming(function: str, folder: Path) -> Path:
    FigureRecipe(function, {"args": [], "kwargs": {}}).save(folder)
    return folder


@pytest.mark.parametrize(
    "function, message",
    [
        ("os:system", "not from interpsuite or an installed plugin"),
        ("subprocess:run", "not from interpsuite or an installed plugin"),
        ("interpsuite.figures:preset", "not a marked figure function"),  # exists, but unmarked
        ("interpsuite.figures:nothing_here", "not a marked figure function"),
        ("interpsuite.no_such_module:f", "No module named"),
        ("interpsuite.figures", "form package.module:function"),
        ("interpsuite..figures:f", "form package.module:function"),
        ("interpsuite.figures:preset.__call__", "form package.module:function"),
    ],
)
def test_a_recipe_naming_anything_but_a_marked_function_is_refused(function, message, tmp_path):
    recipe = FigureRecipe.load(_save_naming(function, tmp_path))
    with pytest.raises(ConfigError, match=message):
        recipe.draw(FigureStyle())


def test_a_marked_function_outside_the_allowed_packages_is_refused(tmp_path):
    """`record` is marked, but lives in the tests package, which is not a plugin."""
    recipe = FigureRecipe.capture(record, (1,), {})
    assert recipe.function == f"{__name__}:record"
    recipe.save(tmp_path)
    with pytest.raises(ConfigError, match="not from interpsuite or an installed plugin"):
        FigureRecipe.load(tmp_path).draw(FigureStyle())
    assert FigureRecipe.load(tmp_path).draw(FigureStyle(), allowed_packages={"tests"}) == ((1,), {})


def test_a_changed_arrays_file_is_detected(tmp_path):
    FigureRecipe.capture(record, (np.arange(4.0),), {}).save(tmp_path)
    path = tmp_path / ARRAYS_FILE
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # one bit of the last value
    path.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match="sha256"):
        FigureRecipe.load(tmp_path)
    path.unlink()
    with pytest.raises(ConfigError, match="missing or changed"):
        FigureRecipe.load(tmp_path)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda spec: spec.update(format_version=99), "format 99"),
        (lambda spec: spec.update(function=["os", "system"]), "damaged"),
        (lambda spec: spec["call"].update(args="x"), "damaged"),
        (lambda spec: spec.update(files={"../../etc/passwd": "0"}), "unexpected data file"),
        (lambda spec: spec["call"]["args"].append({"__float__": "1e9"}), "unknown float"),
        (lambda spec: spec["call"]["args"].append({"__pickle__": "x"}), "unknown value"),
        (lambda spec: spec["call"]["args"].append({"__array__": "a99"}), "not in"),
    ],
    ids=["version", "function", "args", "file name", "float", "marker", "array key"],
)
def test_damaged_figure_json_is_refused(change, message, tmp_path):
    FigureRecipe.capture(record, (np.arange(2.0),), {}).save(tmp_path)
    path = tmp_path / RECIPE_FILE
    spec = json.loads(path.read_text())
    change(spec)
    path.write_text(json.dumps(spec))
    with pytest.raises(ConfigError, match=message):
        FigureRecipe.load(tmp_path).arguments(FigureStyle())


def test_unreadable_figure_json_is_refused(tmp_path):
    (tmp_path / RECIPE_FILE).write_text("{not json")
    with pytest.raises(ConfigError, match="not readable figure data"):
        FigureRecipe.load(tmp_path)
    with pytest.raises(ConfigError, match="was not saved"):
        FigureRecipe.load(tmp_path / "absent")


@pytest.mark.parametrize("rel", ["../x", "figure_data/../../x", "/etc"])
def test_figure_data_outside_the_run_directory_is_refused(rel, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (tmp_path / "x").mkdir()
    entry = {"figures": {"f": ["figures/a/f.png"]}, "figure_data": {"f": rel}}
    (run / "results.json").write_text(json.dumps({"analyzers": {"a": entry}}))
    with pytest.raises(ConfigError, match="points outside the run directory"):
        saved_figures(run)


def test_figure_data_inside_the_run_directory_is_found(tmp_path):
    entry = {"figures": {"f": [], "g": []}, "figure_data": {"f": "figure_data/a/f"}}
    (tmp_path / "results.json").write_text(json.dumps({"analyzers": {"a": entry}}))
    found = {f.key: f.data for f in saved_figures(tmp_path)}
    assert found == {"a.f": (tmp_path / "figure_data/a/f").resolve(), "a.g": None}
