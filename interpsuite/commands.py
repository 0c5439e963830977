"""Console subcommands contributed by plugins (hook `interpsuite_commands`).

Shaped like datasette's `register_commands`: a plugin that saves something users act on
later (a failure predictor, an anomaly detector) also ships the command that acts on it,
and `interpsuite --help` lists it beside the built-in ones.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    name: str  # the subcommand: `interpsuite <name> ...`
    help: str  # one line for `interpsuite --help`
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]  # returns the exit code
