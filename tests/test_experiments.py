"""`interpsuite experiments`: every experiment file is listed, described and names real analyzers."""

from __future__ import annotations

from pathlib import Path

from interpsuite.config import conf_dir
from interpsuite.experiments import experiments_command, list_experiments, read_experiment
from interpsuite.hookspecs import hookimpl
from interpsuite.plugins import get_registry


def test_lists_exactly_the_shipped_experiment_files():
    shipped = sorted(p.stem for p in (conf_dir() / "experiment").glob("*.yaml"))
    assert shipped, "no experiment files found"
    own = [e for e in list_experiments() if e.source == "interpsuite"]
    assert [e.name for e in own] == shipped


def test_shipped_experiments_are_described_by_their_own_comment_and_name_registered_analyzers():
    registry = get_registry()
    for info in list_experiments(registry):
        if info.source != "interpsuite":
            continue
        assert info.described and info.description.strip(), f"{info.path}: no leading comment line describing it"
        assert not info.description.startswith("@package") and "python -m" not in info.description
        assert info.analyzers, f"{info.name} selects no analyzers"
        unknown = [name for name in info.analyzers if name not in registry.analyzers]
        assert not unknown, f"{info.name} names unregistered analyzers {unknown}"


def test_quickstart_entry_reads_defaults_and_options():
    info = next(e for e in list_experiments() if e.name == "quickstart")
    assert info.analyzers[0] == "activation_stats" and "token_attribution" in info.analyzers
    assert len(info.analyzers) == len(set(info.analyzers))  # token_attribution's options add no duplicate
    assert info.description.startswith("The end-to-end tour")


def test_plugin_experiments_are_listed_with_their_source(tmp_path):
    conf = tmp_path / "conf"
    (conf / "experiment").mkdir(parents=True)
    (conf / "experiment" / "mine.yaml").write_text(
        "# @package _global_\n"
        "# My own tour: stats and lens, for the record.\n"
        "# python -m interpsuite +experiment=mine\n"
        "defaults:\n"
        "  - /analyzer: activation_stats\n"
        "  - optional /analyzer/logit_lens@analyzers.logit_lens\n"
        "  - override /data: quickstart\n"
        "analyzers:\n"
        "  steering: {}\n"
    )
    (conf / "experiment" / "bare.yaml").write_text("defaults:\n  - /analyzer/activation_stats\n")
    (conf / "experiment" / "broken.yaml").write_text("defaults: [\n")

    class ConfPlugin:
        @hookimpl
        def interpsuite_config_dirs(self):
            return [str(conf)]

    found = {e.name: e for e in list_experiments(get_registry(extra_plugins=[ConfPlugin()]))}
    mine = found["mine"]
    assert mine.source == "(registered in-process)" and mine.path == conf / "experiment" / "mine.yaml"
    assert mine.description == "My own tour: stats and lens, for the record."
    assert mine.analyzers == ("activation_stats", "logit_lens", "steering")
    assert not found["bare"].described and found["bare"].description == "runs activation_stats"
    assert found["broken"].description.startswith("(not valid YAML") and found["broken"].analyzers == ()
    assert "quickstart" in found  # interpsuite's own are still there


def test_long_first_sentence_keeps_its_headline(tmp_path):
    path = tmp_path / "long.yaml"
    path.write_text("# Where it looks: " + "very " * 40 + "long.\n# more\nexperiment_name: long\n")
    assert read_experiment(path, "x").description == "Where it looks"
    path.write_text("# " + "word " * 40 + "end.\n")
    description = read_experiment(path, "x").description
    assert description.endswith("...") and len(description) <= 83


def test_command_prints_one_line_per_experiment(capsys):
    assert experiments_command() == 0
    lines = capsys.readouterr().out.splitlines()
    names = sorted(p.stem for p in (Path(conf_dir()) / "experiment").glob("*.yaml"))
    body = [line for line in lines if line.startswith("  ")]
    assert len(body) == len(names)
    for name in names:
        line = next(line for line in body if line.split()[0] == name)
        assert "(analyzers: " in line
