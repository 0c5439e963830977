"""`interpsuite new-plugin`: the scaffolded package installs, registers, runs and passes its own tests.

The package is written into a temporary folder, pip-installed with `--target` (as
tests/plugin_support.py installs the example plugin), and exercised in subprocesses that see it
only through that folder on PYTHONPATH: its own tests run under pytest with the
`interpsuite.testing` plugin loaded through its entry point, and the pipeline finds the analyzer
through the plugin's entry point.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from interpsuite import ConfigError, plugins
from interpsuite.scaffold import main, new_plugin, new_plugin_command, plugin_names

NAME = "scaffold-probe"
IDENT = "scaffold_probe"
DISTRIBUTION = "interpsuite-scaffold-probe"
PACKAGE = "interpsuite_scaffold_probe"


def _child_env(site: Path) -> dict[str, str]:
    """The environment of a plugin author's shell: the install on the path, no test-only switches."""
    drop = ("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "PYTEST_ADDOPTS", plugins.AUTOLOAD_ENV, plugins.BLOCK_ENV)
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


@pytest.fixture(scope="module")
def scaffolded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the scaffolded source folder, the pip --target folder it is installed into)."""
    base = tmp_path_factory.mktemp("scaffold")
    root = new_plugin(NAME, base / "src")
    site = base / "site"
    completed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index"]
        + ["--target", str(site), str(root)],
        capture_output=True,
        text=True,
        cwd=base,
        env=_child_env(site),
        timeout=600,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    for litter in ("build", f"{PACKAGE}.egg-info"):  # setuptools builds in the source folder
        shutil.rmtree(root / litter, ignore_errors=True)
    return root, site


# --- names and refusals (no install) -------------------------------------------------------------


def test_names_are_derived_consistently():
    names = plugin_names("resid-norms")
    assert (names.ident, names.distribution, names.package, names.cls) == (
        "resid_norms",
        "interpsuite-resid-norms",
        "interpsuite_resid_norms",
        "ResidNormsAnalyzer",
    )
    assert plugin_names("resid_norms").distribution == "interpsuite-resid-norms"
    assert plugin_names("lens2").cls == "Lens2Analyzer"


@pytest.mark.parametrize(
    "bad", ["", "1abc", "Resid", "a b", "foo.bar", "foo--bar", "foo_", "-x", "naïve", "x/y", "interpsuite-foo"]
)
def test_bad_names_are_refused_with_a_clear_message(bad: str, tmp_path: Path):
    with pytest.raises(ConfigError, match="plugin name"):
        new_plugin(bad, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_an_installed_analyzer_name_is_refused(tmp_path: Path):
    with pytest.raises(ConfigError, match="an analyzer named 'activation_stats' already exists"):
        new_plugin("activation_stats", tmp_path)


def test_never_overwrites(tmp_path: Path):
    occupied = tmp_path / "interpsuite-taken"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="already exists and is not empty"):
        new_plugin("taken", tmp_path)
    assert [p.name for p in occupied.iterdir()] == ["notes.txt"]
    (tmp_path / "interpsuite-empty").mkdir()  # an empty folder is fine
    assert new_plugin("empty", tmp_path) == tmp_path / "interpsuite-empty"


def test_command_lists_files_and_next_steps(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert new_plugin_command("cmd_probe", str(tmp_path)) == 0
    out = capsys.readouterr().out
    root = tmp_path / "interpsuite-cmd-probe"
    for relative in (
        "pyproject.toml",
        "README.md",
        "interpsuite_cmd_probe/__init__.py",
        "interpsuite_cmd_probe/analyzer.py",
        "interpsuite_cmd_probe/conf/analyzer/cmd_probe.yaml",
        "tests/test_cmd_probe.py",
    ):
        assert (root / relative).is_file(), relative
        assert relative in out
    assert "pip install -e ." in out and "+analyzer=cmd_probe" in out
    assert main(["Bad Name", str(tmp_path)]) == 2
    assert "plugin name 'Bad Name'" in capsys.readouterr().err


def test_files_carry_the_registration(tmp_path: Path):
    root = new_plugin("files_probe", tmp_path)
    pyproject = (root / "pyproject.toml").read_text()
    assert 'name = "interpsuite-files-probe"' in pyproject
    assert '[project.entry-points.interpsuite]\nfiles_probe = "interpsuite_files_probe"' in pyproject
    assert 'interpsuite_files_probe = ["conf/*.yaml", "conf/**/*.yaml"]' in pyproject
    yaml = (root / "interpsuite_files_probe" / "conf" / "analyzer" / "files_probe.yaml").read_text()
    assert yaml.splitlines()[0] == "# @package analyzers.files_probe"
    analyzer = (root / "interpsuite_files_probe" / "analyzer.py").read_text()
    assert "from interpsuite import (" in analyzer and "from interpsuite." not in analyzer
    for path in root.rglob("*.py"):
        compile(path.read_text(), str(path), "exec")


def test_generated_code_is_ruff_clean(tmp_path: Path):
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed")
    root = new_plugin("lint_probe", tmp_path)
    completed = subprocess.run(
        [ruff, "check", "--no-cache", "--isolated", "--line-length", "120", "--select", "E,F,W,I,B,UP,N", "."],
        capture_output=True,
        text=True,
        cwd=root,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr


# --- installed (slow: pip, then fresh interpreters) -----------------------------------------------


def test_install_ships_entry_point_and_config(scaffolded: tuple[Path, Path]):
    _, site = scaffolded
    (dist_info,) = site.glob(f"{PACKAGE}-*.dist-info")
    assert f"[interpsuite]\n{IDENT} = {PACKAGE}" in (dist_info / "entry_points.txt").read_text()
    yaml = site / PACKAGE / "conf" / "analyzer" / f"{IDENT}.yaml"
    assert yaml.read_text().splitlines()[0] == f"# @package analyzers.{IDENT}"


def test_own_tests_pass_out_of_the_box(scaffolded: tuple[Path, Path], tmp_path: Path):
    root, site = scaffolded
    completed = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(root)],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # not the source folder: the package is imported from the install
        env=_child_env(site),
        timeout=600,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout[-6000:] + completed.stderr[-3000:]
    assert "passed" in completed.stdout and "skipped" not in completed.stdout


PIPELINE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path

    from interpsuite import InterpretabilityPipeline
    from interpsuite.config import compose
    from interpsuite.plugins import get_registry
    from interpsuite.results import contract_errors, read_results

    ident, out = sys.argv[1], Path(sys.argv[2])
    contribution = get_registry().analyzers[ident]
    cfg = compose(["model=tiny_llama", f"+analyzer={ident}", f"analyzers.{ident}.layers=[-1]"])
    report = InterpretabilityPipeline(
        model="tiny_llama",
        data=["some text here", "more text"],
        analyzers={ident: dict(cfg.analyzers[ident])},
        sinks=["rundir"],
        output_dir=out,
        progress=False,
    ).run()
    payload = read_results(out)
    print(json.dumps({
        "distribution": contribution.distribution,
        "module": contribution.obj.__module__,
        "file": sys.modules[contribution.obj.__module__].__file__,
        "status": report.results[ident].status,
        "error": report.results[ident].error,
        "contract_errors": contract_errors(payload, out),
        "entry": payload["analyzers"][ident],
    }))
    """
)


def test_registered_and_runs_through_the_pipeline(scaffolded: tuple[Path, Path], tmp_path: Path):
    _, site = scaffolded
    completed = subprocess.run(
        [sys.executable, "-c", PIPELINE_SCRIPT, IDENT, str(tmp_path / "run")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=_child_env(site),
        timeout=600,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-6000:]
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report["distribution"] == DISTRIBUTION
    assert Path(report["file"]).resolve().is_relative_to(site.resolve())
    assert report["status"] == "ok", report["error"]
    assert report["contract_errors"] == []
    entry = report["entry"]
    assert all(check["passed"] for check in entry["checks"].values()) and entry["checks"]
    assert entry["summary"]["layers"] == [1]  # -1 resolved by validate(), seen by run()
    assert entry["tables"]["norms"] and entry["figures"]["norms"] and entry["figure_data"]["norms"]
