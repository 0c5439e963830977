"""The `gradient` analyzer family (built-in plugin, registered via the entry-point group)."""

from __future__ import annotations

from interpsuite.hookspecs import hookimpl

from .._family import collect_analyzers

MODULES = ("flow", "neurons")


@hookimpl
def interpsuite_analyzers():
    return collect_analyzers(__name__, MODULES)
