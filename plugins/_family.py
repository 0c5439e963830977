"""Each module of a family lists its analyzer classes in `ANALYZERS`; the family's hook
implementation returns them all (adding an analyzer means adding its module to MODULES)."""

from __future__ import annotations

import importlib


def collect_analyzers(package: str, modules: tuple[str, ...]) -> list[type]:
    analyzers: list[type] = []
    for name in modules:
        analyzers.extend(importlib.import_module(f"{package}.{name}").ANALYZERS)
    return analyzers
