"""Weights & Biases: offline by default (files under the run dir, no account needed).

`wandb` is imported here and nowhere else. Any W&B failure becomes a warning: the run
directory already holds everything.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

from ..results import Result
from .base import RunInfo, Sink

MODES = ("offline", "online", "disabled")


class WandbSinkWarning(UserWarning):
    """W&B could not log something; local results are unaffected."""


class WandbSink(Sink):
    name = "wandb"

    def __init__(self, run: RunInfo):
        super().__init__(run)
        options = run.options.get("wandb", {}) or {}
        self.mode = options.get("mode", "offline")
        self._run = None
        if self.mode not in MODES:
            warnings.warn(
                f"wandb.mode={self.mode!r} is not one of {MODES}; W&B disabled", WandbSinkWarning, stacklevel=2
            )
            self.mode = "disabled"
        if self.mode == "disabled":
            return
        try:
            os.environ.setdefault("WANDB_SILENT", "true")
            import wandb

            self._wandb = wandb
            self._run = wandb.init(
                project=options.get("project") or "interpsuite",
                entity=options.get("entity"),
                name=run.experiment,
                mode=self.mode,
                dir=str(run.run_dir),
                config=run.config,
                tags=list(options.get("tags") or []),
                reinit="create_new",
            )
        except Exception as err:  # never lose a run because W&B is unhappy
            warnings.warn(
                f"W&B init failed ({type(err).__name__}: {err}); continuing without W&B", WandbSinkWarning, stacklevel=2
            )
            self._run = None

    def write(self, analyzer: str, result: Result, entry: dict[str, Any]) -> None:
        if self._run is None:
            return
        try:
            data: dict[str, Any] = {f"{analyzer}/{k}": v for k, v in result.metrics.items()}
            data.update({f"{analyzer}/checks/{k}": c.value for k, c in result.checks.items()})
            for name, figure in result.figures.items():
                data[f"{analyzer}/figures/{name}"] = self._wandb.Image(figure)
            for name, table in result.tables.items():
                data[f"{analyzer}/tables/{name}"] = self._wandb.Table(dataframe=table)
            for name, text in result.artifacts.items():
                if name.endswith(".html"):
                    data[f"{analyzer}/views/{name}"] = self._wandb.Html(text)
            self._run.log(data)
            self._run.summary[f"{analyzer}/status"] = result.status
        except Exception as err:
            warnings.warn(
                f"W&B logging for {analyzer} failed: {type(err).__name__}: {err}", WandbSinkWarning, stacklevel=2
            )

    def close(self, payload: dict[str, Any]) -> None:
        if self._run is None:
            return
        try:
            artifact = self._wandb.Artifact(f"results-{self._run.id}", type="results")
            artifact.add_file(str(self.run.run_dir / "results.json"))
            self._run.log_artifact(artifact)
            self._run.summary["duration_s"] = payload.get("duration_s")
        except Exception as err:
            warnings.warn(f"W&B artifact upload failed: {type(err).__name__}: {err}", WandbSinkWarning, stacklevel=2)
        finally:
            try:
                self._run.finish()
            except Exception as err:
                warnings.warn(f"W&B finish failed: {err}", WandbSinkWarning, stacklevel=2)
