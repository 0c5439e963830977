"""Each module of a family lists its analyzer classes in `ANALYZERS`; the family's hook
implementation returns them all (one place to add a module)."""

from __future__ import annotations

import importlib


def collect_analyzers(package: str, modules: tuple[str, ...]) -> list[type]:
    analyzers: list[type] = []
    for name in modules:
        try:
            module = importlib.import_module(f"{package}.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"{package}.{name}":  # not written yet: nothing to register
                continue
            raise
        analyzers.extend(module.ANALYZERS)
    return analyzers
