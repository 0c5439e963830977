"""Plugin discovery through the `interpsuite` entry-point group, with real installed metadata.

The example plugin in tests/plugin_packages/ is pip-installed into a temporary directory
(see plugin_support.py); fake distributions are hand-written `.dist-info` folders. Nothing
is registered in-process, so these tests break if entry-point discovery breaks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pluggy
import pytest
import torch

from interpsuite import plugins
from interpsuite.config import compose
from interpsuite.errors import ConfigError, PluginError
from interpsuite.hookspecs import hookimpl
from interpsuite.pipeline import InterpretabilityPipeline
from interpsuite.results import contract_errors, read_results
from tests.plugin_support import (
    EXAMPLE_ANALYZER,
    EXAMPLE_DISTRIBUTION,
    EXAMPLE_ENTRY_POINT,
    EXAMPLE_MODULE,
    make_fake_distribution,
)

# the fixtures `example_plugin` and `fake_site` (idempotent if conftest.py loads it too)
pytest_plugins = ["tests.plugin_support"]

BUILTIN_ANALYZER = "activation_stats"

DUPLICATE_PLUGIN = """
from interpsuite.analyzer import Analyzer
from interpsuite.hookspecs import hookimpl


class ImpostorStats(Analyzer):
    name = "activation_stats"


@hookimpl
def interpsuite_analyzers():
    return [ImpostorStats]
"""

BROKEN_PLUGIN = """
raise ImportError("No module named 'frobnicate' (this plugin needs it)")
"""

MISSPELT_PLUGIN = """
from interpsuite.hookspecs import hookimpl


@hookimpl
def interpsuite_analyzer():  # missing "s": not a hook interpsuite defines
    return []
"""


@pytest.fixture(autouse=True)
def _fresh_registry():
    """No test here may leave a registry cached under its own env vars or sys.path."""
    plugins.reset_registry()
    yield
    plugins.reset_registry()


def _registry() -> plugins.PluginRegistry:
    plugins.reset_registry()
    return plugins.get_registry()


# --- the example plugin, pip-installed ----------------------------------------------------


def test_install_ships_entry_point_and_config(example_plugin: Path):
    dist_infos = list(example_plugin.glob("interpsuite_example_plugin-*.dist-info"))
    assert len(dist_infos) == 1, sorted(p.name for p in example_plugin.iterdir())
    entry_points = (dist_infos[0] / "entry_points.txt").read_text()
    assert "[interpsuite]" in entry_points
    assert f"{EXAMPLE_ENTRY_POINT} = {EXAMPLE_MODULE}" in entry_points
    yaml = example_plugin / EXAMPLE_MODULE / "conf" / "analyzer" / f"{EXAMPLE_ANALYZER}.yaml"
    assert yaml.is_file(), "package data (conf/**/*.yaml) missing from the install"
    assert yaml.read_text().splitlines()[0] == f"# @package analyzers.{EXAMPLE_ANALYZER}"


def test_example_plugin_discovered_via_entry_points(example_plugin: Path):
    registry = _registry()
    contribution = registry.analyzers[EXAMPLE_ANALYZER]
    assert contribution.distribution == EXAMPLE_DISTRIBUTION
    assert contribution.plugin == f"{EXAMPLE_DISTRIBUTION}:{EXAMPLE_ENTRY_POINT}"
    module = sys.modules[EXAMPLE_MODULE]
    # imported from the pip install, not from the source tree under tests/plugin_packages
    assert Path(module.__file__).resolve().is_relative_to(example_plugin.resolve())
    assert contribution.obj.family == "activation"
    assert registry.analyzers[BUILTIN_ANALYZER].distribution == plugins.OWN_DISTRIBUTION
    config_dirs = {c.distribution: c.obj for c in registry.config_dirs}
    installed_conf = (example_plugin / EXAMPLE_MODULE / "conf").resolve()
    assert Path(config_dirs[EXAMPLE_DISTRIBUTION]).resolve() == installed_conf
    assert registry.warnings == []


def test_builtin_comes_from_interpsuite_without_plugin():
    registry = _registry()
    assert registry.analyzers[BUILTIN_ANALYZER].distribution == "interpsuite"
    assert {"rundir", "wandb"} <= set(registry.sinks)
    assert all(s.distribution == "interpsuite" for s in registry.sinks.values())


def test_cli_plugins_lists_example(example_plugin: Path, tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if k not in (plugins.AUTOLOAD_ENV, plugins.BLOCK_ENV)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(example_plugin), env.get("PYTHONPATH")]))
    completed = subprocess.run(
        [sys.executable, "-m", "interpsuite.cli", "plugins"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.splitlines()
    example_lines = [line for line in lines if line.strip().startswith(EXAMPLE_ANALYZER)]
    assert len(example_lines) == 1, completed.stdout
    assert f"(from {EXAMPLE_DISTRIBUTION})" in example_lines[0]
    assert "[activation]" in example_lines[0]
    builtin_lines = [line for line in lines if line.strip().startswith(BUILTIN_ANALYZER)]
    assert builtin_lines and "(from interpsuite)" in builtin_lines[0]
    assert str(example_plugin) in completed.stdout  # its config dir is listed
    assert "warning" not in completed.stderr.lower(), completed.stderr


def test_cli_plugins_without_example_on_path(tmp_path: Path):
    # the example plugin is on this process's sys.path at most, never on the child's
    env = {k: v for k, v in os.environ.items() if k not in (plugins.AUTOLOAD_ENV, plugins.BLOCK_ENV)}
    completed = subprocess.run(
        [sys.executable, "-m", "interpsuite.cli", "plugins"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert BUILTIN_ANALYZER in completed.stdout
    assert EXAMPLE_ANALYZER not in completed.stdout


def test_pipeline_runs_example_analyzer_by_name(example_plugin: Path, tmp_path: Path):
    plugins.reset_registry()
    report = InterpretabilityPipeline(
        model="tiny_llama",
        data=["some text here", "more text"],
        analyzers={EXAMPLE_ANALYZER: {"layer": 1}},
        output_dir=tmp_path,
        sinks=["rundir"],
        progress=False,
    ).run()
    result = report.results[EXAMPLE_ANALYZER]
    assert result.status == "ok", result.error
    payload = read_results(tmp_path)
    assert contract_errors(payload, tmp_path) == []
    entry = payload["analyzers"][EXAMPLE_ANALYZER]
    assert entry["status"] == "ok" and entry["error"] is None
    check = entry["checks"]["norm_matches_float64_reference"]
    assert check["passed"] and check["threshold"] == 1e-5
    n_tokens = payload["inputs"]["n_tokens"]
    assert entry["metrics"]["n_tokens"] == n_tokens
    assert entry["metrics"]["max_norm"] >= entry["metrics"]["mean_norm"] > 0
    assert (tmp_path / entry["tables"]["token_norms"]).is_file()
    summary = entry["summary"]
    assert summary["hook_point"] == "blocks.1.resid_post"
    top = summary["top_tokens"]
    assert len(top) == 5
    assert [t["norm"] for t in top] == sorted((t["norm"] for t in top), reverse=True)
    assert top[0]["norm"] == pytest.approx(entry["metrics"]["max_norm"], abs=1e-4)
    assert json.loads((tmp_path / "results.json").read_text()) == payload


def test_example_norms_match_independent_forward(example_plugin: Path, tmp_path: Path):
    """The plugin's norms equal those of Hugging Face's own hidden states (layer 0 output)."""
    from interpsuite import load_model

    plugins.reset_registry()
    model = load_model("tiny_llama")
    texts = ["some text here", "more text"]
    report = InterpretabilityPipeline(
        model=model,
        data=texts,
        analyzers={EXAMPLE_ANALYZER: {"layer": 0, "top_k": 3}},
        output_dir=tmp_path,
        sinks=["rundir"],
        progress=False,
    ).run()
    result = report.results[EXAMPLE_ANALYZER]
    assert result.status == "ok", result.error
    table = result.tables["token_norms"]
    batch = model.tokenize(texts)
    with torch.no_grad():
        hidden = model.hf_model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True
        ).hidden_states[1]  # output of block 0 (the last entry is after the final norm)
    expected = hidden.norm(dim=-1)
    assert len(table) == batch.n_tokens
    for row in table.itertuples(index=False):
        assert row.norm == pytest.approx(float(expected[row.text, row.position]), rel=1e-5)
    assert len(result.summary["top_tokens"]) == 3


def test_example_validate_rejects_bad_layer_before_loading(example_plugin: Path, tmp_path: Path):
    plugins.reset_registry()
    pipeline = InterpretabilityPipeline(
        model="tiny_llama",
        data=["x"],
        analyzers={EXAMPLE_ANALYZER: {"layer": 7}},
        output_dir=tmp_path,
        sinks=["rundir"],
        progress=False,
    )
    with pytest.raises(ConfigError, match=r"example_token_norms\.layer: layer 7 out of range"):
        pipeline.validate()
    pipeline = InterpretabilityPipeline(
        model="tiny_llama",
        data=["x"],
        analyzers={EXAMPLE_ANALYZER: {"top_k": 0}},
        output_dir=tmp_path,
        sinks=["rundir"],
        progress=False,
    )
    with pytest.raises(ConfigError, match="top_k"):
        pipeline.validate()


def test_hydra_selects_example_analyzer_through_plugin_config_dir(example_plugin: Path):
    plugins.reset_registry()
    cfg = compose(["+experiment=quickstart", "model=tiny_llama", f"+analyzer={EXAMPLE_ANALYZER}"])
    assert EXAMPLE_ANALYZER in cfg.analyzers
    assert dict(cfg.analyzers[EXAMPLE_ANALYZER]) == {"layer": -1, "top_k": 5}
    assert BUILTIN_ANALYZER in cfg.analyzers  # the experiment's own analyzers are kept
    cfg = compose(
        [
            "+experiment=quickstart",
            "model=tiny_llama",
            f"+analyzer={EXAMPLE_ANALYZER}",
            f"analyzers.{EXAMPLE_ANALYZER}.top_k=2",
        ]
    )
    assert cfg.analyzers[EXAMPLE_ANALYZER].top_k == 2


def test_hydra_without_plugin_does_not_know_the_analyzer(monkeypatch):
    from hydra.errors import MissingConfigException

    # the session fixture may already have put the example on sys.path: block it
    monkeypatch.setenv(plugins.BLOCK_ENV, EXAMPLE_ENTRY_POINT)
    plugins.reset_registry()
    with pytest.raises(MissingConfigException, match=EXAMPLE_ANALYZER):
        compose(["+experiment=quickstart", "model=tiny_llama", f"+analyzer={EXAMPLE_ANALYZER}"])


# --- environment switches ---------------------------------------------------------------


def test_disable_autoload_hides_third_party_keeps_builtins(example_plugin: Path, monkeypatch):
    assert EXAMPLE_ANALYZER in _registry().analyzers  # present without the switch
    monkeypatch.setenv(plugins.AUTOLOAD_ENV, "1")
    registry = _registry()
    assert EXAMPLE_ANALYZER not in registry.analyzers
    assert all(c.distribution != EXAMPLE_DISTRIBUTION for c in registry.config_dirs)
    assert registry.analyzers[BUILTIN_ANALYZER].distribution == "interpsuite"
    assert {"rundir", "wandb"} <= set(registry.sinks)
    monkeypatch.setenv(plugins.AUTOLOAD_ENV, "0")  # "0" means autoload stays on
    assert EXAMPLE_ANALYZER in _registry().analyzers


def test_disable_autoload_also_skips_broken_plugins(fake_site: Path, monkeypatch):
    make_fake_distribution(fake_site, "interpsuite-broken-b", "interpsuite_broken_b", BROKEN_PLUGIN, "broken_b")
    monkeypatch.setenv(plugins.AUTOLOAD_ENV, "1")
    with warnings.catch_warnings():
        warnings.simplefilter("error", plugins.PluginLoadWarning)
        registry = _registry()
    assert registry.warnings == []
    assert BUILTIN_ANALYZER in registry.analyzers


def test_block_plugins_skips_named_entry_point(example_plugin: Path, monkeypatch):
    monkeypatch.setenv(plugins.BLOCK_ENV, f" something_else , {EXAMPLE_ENTRY_POINT} ")
    registry = _registry()
    assert EXAMPLE_ANALYZER not in registry.analyzers
    assert EXAMPLE_DISTRIBUTION not in {c.distribution for c in registry.config_dirs}
    assert BUILTIN_ANALYZER in registry.analyzers
    monkeypatch.setenv(plugins.BLOCK_ENV, "something_else")
    assert EXAMPLE_ANALYZER in _registry().analyzers


def test_block_plugins_resolves_a_duplicate(fake_site: Path, monkeypatch):
    make_fake_distribution(fake_site, "interpsuite-dup-b", "interpsuite_dup_b", DUPLICATE_PLUGIN, "dup_b")
    monkeypatch.setenv(plugins.BLOCK_ENV, "dup_b")
    registry = _registry()
    assert registry.analyzers[BUILTIN_ANALYZER].distribution == "interpsuite"


# --- broken and conflicting plugins -------------------------------------------------------


def test_duplicate_analyzer_name_names_both_distributions(fake_site: Path):
    make_fake_distribution(fake_site, "interpsuite-dup-plugin", "interpsuite_dup_plugin", DUPLICATE_PLUGIN, "dup")
    plugins.reset_registry()
    with pytest.raises(PluginError) as excinfo:
        plugins.get_registry()
    message = str(excinfo.value)
    assert BUILTIN_ANALYZER in message
    assert "'interpsuite-dup-plugin'" in message
    assert "'interpsuite'" in message
    assert plugins.BLOCK_ENV in message  # tells the user how to resolve it


def test_plugin_failing_to_import_warns_and_others_work(fake_site: Path):
    make_fake_distribution(fake_site, "interpsuite-broken", "interpsuite_broken", BROKEN_PLUGIN, "broken")
    plugins.reset_registry()
    with pytest.warns(plugins.PluginLoadWarning) as record:
        registry = plugins.get_registry()
    messages = [str(w.message) for w in record if issubclass(w.category, plugins.PluginLoadWarning)]
    assert len(messages) == 1, messages
    assert "'broken'" in messages[0]  # the entry point
    assert "'interpsuite-broken'" in messages[0]  # the distribution
    assert "frobnicate" in messages[0]  # the cause
    assert registry.warnings == messages
    assert registry.analyzers[BUILTIN_ANALYZER].distribution == "interpsuite"
    assert {"rundir", "wandb"} <= set(registry.sinks)


def test_broken_plugin_does_not_hide_example(example_plugin: Path, fake_site: Path):
    make_fake_distribution(fake_site, "interpsuite-broken-c", "interpsuite_broken_c", BROKEN_PLUGIN, "broken_c")
    plugins.reset_registry()
    with pytest.warns(plugins.PluginLoadWarning, match="broken_c"):
        registry = plugins.get_registry()
    assert registry.analyzers[EXAMPLE_ANALYZER].distribution == EXAMPLE_DISTRIBUTION
    assert BUILTIN_ANALYZER in registry.analyzers


def test_misspelt_hookimpl_fails_check_pending():
    import types

    module = types.ModuleType("misspelt_plugin")
    exec(compile(MISSPELT_PLUGIN, "misspelt_plugin.py", "exec"), module.__dict__)
    pm = plugins.new_plugin_manager()
    pm.register(module, name="misspelt")
    with pytest.raises(pluggy.PluginValidationError, match="interpsuite_analyzer"):
        pm.check_pending()


def test_misspelt_hookimpl_in_installed_plugin_fails_loading(fake_site: Path):
    make_fake_distribution(fake_site, "interpsuite-misspelt", "interpsuite_misspelt", MISSPELT_PLUGIN, "misspelt")
    plugins.reset_registry()
    pm = plugins.new_plugin_manager()
    with pytest.raises(PluginError, match="interpsuite-misspelt.*interpsuite_analyzer"):
        plugins.load_entry_point_plugins(pm)
    with pytest.raises(PluginError):
        plugins.get_registry()


def test_correct_hookimpl_passes_check_pending():
    class Good:
        @hookimpl
        def interpsuite_analyzers(self):
            return []

    pm = plugins.new_plugin_manager()
    pm.register(Good())
    pm.check_pending()  # no error


def test_fake_site_is_cleaned_up():
    """After the fake-site tests, none of their distributions is visible any more."""
    import importlib.metadata

    plugins.reset_registry()
    names = {ep.dist.name for ep in importlib.metadata.entry_points(group=plugins.GROUP) if ep.dist}
    fakes = ("interpsuite-dup", "interpsuite-broken", "interpsuite-misspelt")
    assert not {n for n in names if n.startswith(fakes)}
