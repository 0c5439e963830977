"""Sinks: the run directory (always) and Weights & Biases (offline by default)."""

from .base import RunInfo, Sink
from .rundir import RunDirSink

__all__ = ["RunDirSink", "RunInfo", "Sink"]
