"""interpsuite's own sinks, registered through the same hooks a third-party plugin uses."""

from __future__ import annotations

from .hookspecs import hookimpl
from .sinks.rundir import RunDirSink
from .sinks.wandb_sink import WandbSink


@hookimpl
def interpsuite_sinks():
    return [RunDirSink, WandbSink]
