"""Every hook of the plugin contract is documented (as datasette's test_docs does)."""

from __future__ import annotations

import inspect
from pathlib import Path

from interpsuite import hookspecs

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_every_hookspec_is_documented_and_has_a_docstring():
    text = (DOCS / "plugins.md").read_text()
    hooks = [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("interpsuite_")]
    assert hooks
    for name in hooks:
        assert f"`{name}(" in text, f"{name} missing from docs/plugins.md"
        assert inspect.getdoc(getattr(hookspecs, name)), f"{name} has no docstring"


def test_every_builtin_analyzer_is_documented():
    from interpsuite.plugins import get_registry

    text = (DOCS / "results.md").read_text()
    for name, item in get_registry().analyzers.items():
        if item.distribution == "interpsuite":
            assert f"`{name}`" in text, f"{name} missing from docs/results.md"
