"""The run directory writes files a user can open safely: no spreadsheet formulas, no two
results sharing one file because their names clean to the same file name."""

from __future__ import annotations

import pandas as pd

from interpsuite.results import Result
from interpsuite.sinks.base import RunInfo
from interpsuite.sinks.rundir import RunDirSink, distinct_names, spreadsheet_safe


def sink(tmp_path) -> RunDirSink:
    return RunDirSink(RunInfo(run_dir=tmp_path, experiment="t", model={}, inputs={}))


def entry() -> dict:
    return {"tables": {}, "figures": {}}


def test_text_cells_that_spreadsheets_would_run_are_defused(tmp_path):
    table = pd.DataFrame(
        {
            "token": ["=HYPERLINK(\"http://x\")", "+1", "-cmd", "@SUM(A1)", "\tx", " Paris", "plain"],
            "value": [-1.5, 2.0, -3.0, 0.0, 1.0, 1.0, 1.0],
        }
    )
    written = entry()
    sink(tmp_path).write("demo", Result(tables={"tokens": table}), written)
    back = pd.read_csv(tmp_path / written["tables"]["tokens"], keep_default_na=False)
    assert not any(str(cell).startswith(("=", "+", "-", "@", "\t", "\r")) for cell in back["token"])
    assert list(back["token"][:4]) == ["'=HYPERLINK(\"http://x\")", "'+1", "'-cmd", "'@SUM(A1)"]
    assert list(back["token"][5:]) == [" Paris", "plain"]
    assert spreadsheet_safe(pd.DataFrame({"t": ["\rx"]}))["t"].tolist() == ["'\rx"]
    assert list(back["value"]) == list(table["value"])  # numbers, negative ones too, stay numbers
    assert list(table["token"])[0].startswith("=")  # the analyzer's own table is not changed


def test_names_that_clean_to_one_file_name_get_distinct_files(tmp_path):
    names = distinct_names(["a/b", "a_b", "A_B", "a?b"], ".csv")
    assert len({n.lower() for n in names.values()}) == 4
    tables = {name: pd.DataFrame({"x": [i]}) for i, name in enumerate(["a/b", "a_b", "a b"])}
    written = entry()
    sink(tmp_path).write("demo", Result(tables=tables), written)
    assert len(set(written["tables"].values())) == 3
    for i, name in enumerate(tables):
        assert pd.read_csv(tmp_path / written["tables"][name])["x"].tolist() == [i]
