"""The `activation` analyzer family (built-in plugin, registered via the entry-point group)."""

from __future__ import annotations

from interpsuite.hookspecs import hookimpl

from .stats import ActivationStats


@hookimpl
def interpsuite_analyzers():
    return [ActivationStats]
