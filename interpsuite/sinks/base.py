"""The sink contract: where results go. Sinks never touch models; analyzers never see sinks."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..results import Result


@dataclass
class RunInfo:
    """What every sink may know about the run."""

    run_dir: Path
    experiment: str
    model: dict
    inputs: dict
    config: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)


class SinkWarning(UserWarning):
    """A sink failed; the pipeline records it under `sinks.<name>` in results.json and goes on."""


class Sink:
    """Receives each analyzer's Result as soon as it finishes, then the final payload.

    `entry` is the analyzer's results.json entry (with run-dir-relative file paths), written
    by the run-directory sink, which always runs first.

    A sink raises when it fails (in `__init__`, `write` or `close`): the pipeline catches it,
    records `sinks.<name>.status/error` in results.json, warns once, and carries on with the
    other sinks and analyzers. Swallowing errors inside a sink would hide them from the record.
    """

    name: ClassVar[str]

    def __init__(self, run: RunInfo):
        self.run = run

    def write(self, analyzer: str, result: Result, entry: dict[str, Any]) -> None:
        """Called once per analyzer."""

    def close(self, payload: dict[str, Any]) -> None:
        """Called once with the whole results.json payload, after it is on disk."""
