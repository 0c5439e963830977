"""Each module of a family lists its analyzer classes in `ANALYZERS`; the family's hook
implementation returns them all (adding an analyzer means adding its module to MODULES)."""

from __future__ import annotations

import importlib


def collect_analyzers(package: str, modules: tuple[str, ...]) -> list[type]:
    analyzers: list[type] = []
    for name in modules:
        analyzers.extend(importlib.import_module(f"{package}.{name}").ANALYZERS)
    return analyzers


def lazy_exports(package: str, exports: dict[str, str]):
    """A family package's module-level `__getattr__` and `__dir__`: each name in `exports`
    (name -> submodule) is imported from its submodule on first use and cached in the package.

    Why: registering a plugin imports its package; the engines behind the names import torch
    and transformers, which a command such as `interpsuite plugins` should not pay for."""
    import sys

    def __getattr__(name: str):  # noqa: N807 (the module protocol's name)
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{module}", package), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:  # noqa: N807
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__
