"""Weights & Biases: offline by default (files under the run dir, no account needed).

`wandb` is imported here and nowhere else. A W&B failure raises; the pipeline records it
under `sinks.wandb` in results.json and the run goes on (the run directory holds everything).

`sinks.wandb` also records the run's mode, group and id (in every mode, `disabled` included):
the jobs of one multirun share a group (interpsuite.launchers.apply_multirun_group), and
`interpsuite sweep-summary` reads it back from each job's results.json.
"""

from __future__ import annotations

import io
import os
from typing import Any

from ..results import RESULTS_FILE, Result, write_results
from .base import RunInfo, Sink, SinkWarning

MODES = ("offline", "online", "disabled")


class WandbSinkWarning(SinkWarning):
    """W&B could not log something; local results are unaffected."""


def figure_image(figure) -> Any:
    """A matplotlib Figure as a PIL image, rendered without pyplot (wandb.Image needs pyplot for
    a Figure, and interpsuite's figures never touch pyplot's global state)."""
    from PIL import Image

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    buffer.seek(0)
    return Image.open(buffer)


class WandbSink(Sink):
    name = "wandb"

    def __init__(self, run: RunInfo):
        super().__init__(run)
        options = run.options.get("wandb", {}) or {}
        self.mode = options.get("mode", "offline")
        self.group = options.get("group") or None
        self._run = None
        if self.mode == "disabled":
            return
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
            group=self.group,
            notes=options.get("notes"),
            reinit="create_new",
        )

    def write(self, analyzer: str, result: Result, entry: dict[str, Any]) -> None:
        if self._run is None:
            return
        data: dict[str, Any] = {f"{analyzer}/{k}": v for k, v in result.metrics.items()}
        data.update({f"{analyzer}/checks/{k}": c.value for k, c in result.checks.items()})
        for name, figure in result.figures.items():
            data[f"{analyzer}/figures/{name}"] = self._wandb.Image(figure_image(figure))
        for name, table in result.tables.items():
            data[f"{analyzer}/tables/{name}"] = self._wandb.Table(dataframe=table)
        for name, text in result.artifacts.items():
            if name.endswith(".html"):
                data[f"{analyzer}/views/{name}"] = self._wandb.Html(text)
        self._run.log(data)
        self._log_curves(analyzer, result)
        self._run.summary[f"{analyzer}/status"] = result.status

    def _log_curves(self, analyzer: str, result: Result) -> None:
        """Each curve table row by row against its own step metric (`define_metric`), so the
        W&B run shows line charts over training steps rather than one table."""
        for name, step in result.curves.items():
            table = result.tables.get(name)
            if table is None or step not in table.columns:
                continue
            step_key = f"{analyzer}/{name}/{step}"
            self._run.define_metric(step_key)
            self._run.define_metric(f"{analyzer}/{name}/*", step_metric=step_key)
            numeric = [c for c in table.columns if c != step and table[c].dtype.kind in "iuf"]
            for row in table[[step, *numeric]].itertuples(index=False):
                self._run.log(
                    {step_key: row[0], **{f"{analyzer}/{name}/{c}": v for c, v in zip(numeric, row[1:], strict=True)}}
                )

    def close(self, payload: dict[str, Any]) -> None:
        self._record(payload)
        if self._run is None:
            return
        try:
            artifact = self._wandb.Artifact(f"results-{self._run.id}", type="results")
            artifact.add_file(str(self.run.run_dir / "results.json"))
            self._run.log_artifact(artifact)
            self._run.summary["duration_s"] = payload.get("duration_s")
        finally:
            self._run.finish()

    def _record(self, payload: dict[str, Any]) -> None:
        """mode, group and run id under `sinks.wandb` in results.json (rewritten: the pipeline saved
        it just before closing the sinks)."""
        entry = payload.setdefault("sinks", {}).setdefault(self.name, {"status": "ok", "error": None})
        entry.update(mode=self.mode, group=self.group, run_id=self._run.id if self._run is not None else None)
        path = self.run.run_dir / RESULTS_FILE
        if path.is_file():
            write_results(path, payload)
