"""Curve tables (`Result.curves`) reach W&B as line series: each row logged against its own step
metric, so a training history plots as curves over steps instead of one table."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd

from interpsuite.results import Result
from interpsuite.sinks.base import RunInfo
from interpsuite.sinks.wandb_sink import WandbSink


class RecordingRun:
    def __init__(self):
        self.logged: list[dict] = []
        self.metrics: list[tuple[str, str | None]] = []
        self.summary: dict = {}

    def log(self, payload: dict) -> None:
        self.logged.append(dict(payload))

    def define_metric(self, name: str, step_metric: str | None = None) -> None:
        self.metrics.append((name, step_metric))


def test_a_curve_table_is_logged_row_by_row_against_its_step(tmp_path):
    sink = WandbSink(RunInfo(tmp_path, "test", {}, {}, options={"wandb": {"mode": "disabled"}}))
    run = sink._run = RecordingRun()
    sink._wandb = SimpleNamespace(Table=lambda dataframe: ("table", len(dataframe)))  # no wandb run needed
    result = Result()
    result.tables["history"] = pd.DataFrame({"step": [10, 20, 30], "loss": [3.0, 2.0, 1.5], "note": ["a", "b", "c"]})
    result.tables["other"] = pd.DataFrame({"step": [1], "x": [0.0]})  # not a curve: only logged as a table
    result.curves["history"] = "step"
    sink.write("sae_train", result, {})
    rows = [entry for entry in run.logged if "sae_train/history/step" in entry]
    assert rows == [
        {"sae_train/history/step": 10, "sae_train/history/loss": 3.0},
        {"sae_train/history/step": 20, "sae_train/history/loss": 2.0},
        {"sae_train/history/step": 30, "sae_train/history/loss": 1.5},
    ]  # numeric columns only, in order
    assert ("sae_train/history/*", "sae_train/history/step") in run.metrics
    assert not any("sae_train/other/step" in entry for entry in run.logged)
