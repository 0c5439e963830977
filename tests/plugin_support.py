"""Helpers and fixtures for testing plugin discovery with real installed metadata.

Nothing here registers a plugin in-process: every plugin reaches interpsuite the way a
user's would, through a `*.dist-info/entry_points.txt` on `sys.path` that
`importlib.metadata` reads.

- `install_example_plugin(target)`: `pip install --target` of the reference plugin package
  in `tests/plugin_packages/interpsuite-example-plugin`.
- `example_plugin` (session fixture): that install, put on `sys.path` for the session.
- `make_fake_distribution(...)`: a hand-written module + `.dist-info` in a directory, for
  plugins that collide, fail to import, or misspell a hook.
- `fake_site` (fixture): a fresh directory on `sys.path` for such fake distributions,
  removed again (with the modules imported from it) after the test.

Load the fixtures with `pytest_plugins = ["tests.plugin_support"]` (test module or the
top-level tests/conftest.py); import the helpers with `from tests.plugin_support import ...`.
(PYTEST_DONT_REWRITE: no asserts live here, and a test module may import this before pytest
registers it as a plugin.)
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from interpsuite import plugins

PLUGIN_PACKAGES = Path(__file__).resolve().parent / "plugin_packages"
EXAMPLE_PLUGIN_DIR = PLUGIN_PACKAGES / "interpsuite-example-plugin"
EXAMPLE_DISTRIBUTION = "interpsuite-example-plugin"
EXAMPLE_ENTRY_POINT = "example"
EXAMPLE_MODULE = "interpsuite_example_plugin"
EXAMPLE_ANALYZER = "example_token_norms"

# setuptools writes build/ and *.egg-info next to the sources: never into the checkout.
_BUILD_LITTER = shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__", "*.pyc")


def install_example_plugin(target_dir: str | Path) -> Path:
    """pip-install the example plugin package into `target_dir` (no deps, no build isolation).

    The package is copied to a temporary folder first, so the build leaves nothing behind
    in the source tree and concurrent test runs do not share a build directory.
    """
    target = Path(target_dir)
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="interpsuite-plugin-src-") as scratch:
        source = Path(scratch) / EXAMPLE_PLUGIN_DIR.name
        shutil.copytree(EXAMPLE_PLUGIN_DIR, source, ignore=_BUILD_LITTER)
        env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
        completed = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--no-deps",
                "--no-build-isolation",
                "--no-index",
                "--target",
                str(target),
                str(source),
            ],
            capture_output=True,
            text=True,
            env=env,
            cwd=scratch,
            check=False,
        )
    if completed.returncode != 0:
        raise RuntimeError(
            f"pip install of {EXAMPLE_PLUGIN_DIR} failed (exit {completed.returncode}):\n"
            f"{completed.stdout}\n{completed.stderr}"
        )
    return target


def _normalise(dist_name: str) -> str:
    """The dist-info directory spelling of a distribution name (PEP 427 / 503)."""
    return re.sub(r"[-_.]+", "_", dist_name).lower()


def make_fake_distribution(
    site_dir: str | Path,
    dist_name: str,
    module_name: str,
    module_source: str,
    entry_point_name: str,
    version: str = "0.1.0",
) -> Path:
    """Write `<module_name>.py` and a minimal `<dist>-<version>.dist-info/` into `site_dir`.

    The dist-info holds METADATA (Name, Version) and an entry_points.txt registering
    `entry_point_name = module_name` in the `interpsuite` group: what pip would leave behind
    after installing a one-module plugin. Returns the dist-info directory.
    """
    site = Path(site_dir)
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{module_name}.py").write_text(textwrap.dedent(module_source))
    dist_info = site / f"{_normalise(dist_name)}-{version}.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist_name}\nVersion: {version}\n")
    (dist_info / "entry_points.txt").write_text(f"[{plugins.GROUP}]\n{entry_point_name} = {module_name}\n")
    return dist_info


def _forget_modules_under(directory: Path) -> None:
    """Drop modules imported from `directory` so a later test cannot pick them up."""
    root = str(directory.resolve())
    for name, module in list(sys.modules.items()):
        origin = getattr(module, "__file__", None)
        if origin and os.path.abspath(origin).startswith(root + os.sep):
            del sys.modules[name]


def _remove_from_path(entry: str) -> None:
    while entry in sys.path:
        sys.path.remove(entry)
    sys.path_importer_cache.pop(entry, None)


@pytest.fixture(scope="session")
def example_plugin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The example plugin, pip-installed into a temporary directory on `sys.path`.

    Yields the install directory (use it as PYTHONPATH for subprocesses). The cached plugin
    registry is reset on entry and exit, so discovery runs against the new `sys.path`.
    """
    target = install_example_plugin(tmp_path_factory.mktemp("example-plugin-site"))
    entry = str(target)
    sys.path.insert(0, entry)
    plugins.reset_registry()
    try:
        yield target
    finally:
        _remove_from_path(entry)
        _forget_modules_under(target)
        plugins.reset_registry()


@pytest.fixture
def fake_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh directory at the front of `sys.path` for `make_fake_distribution`.

    Write the fake distributions first, then call `interpsuite.plugins.reset_registry()`
    (or just `get_registry()`: the registry is reset here before and after the test).
    """
    site = tmp_path_factory.mktemp("fake-site")
    entry = str(site)
    sys.path.insert(0, entry)
    plugins.reset_registry()
    try:
        yield site
    finally:
        _remove_from_path(entry)
        _forget_modules_under(site)
        plugins.reset_registry()
