"""The `interpsuite` console script: every subcommand the docs name exists and answers."""

from __future__ import annotations

import pytest

from interpsuite.cli import COMMANDS, build_parser, main


def test_every_subcommand_is_wired():
    assert set(COMMANDS) | {"run"} == {"plugins", "models", "experiments", "cache", "new-plugin", "compare", "run"}
    assert "130 interrupted" in build_parser().epilog


def test_run_forwards_exit_codes(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["run", "model=tiny_llama", "+analyzer=activation_stats", "batch_size=abc"]) == 2
    assert capsys.readouterr().err.startswith("interpsuite: error: batch_size: expected an integer")


def test_new_plugin_scaffolds_a_package(tmp_path, capsys):
    assert main(["new-plugin", "token_norms_cli", "--dest", str(tmp_path)]) == 0
    package = tmp_path / "interpsuite-token-norms-cli"
    assert (package / "pyproject.toml").is_file()
    assert "[project.entry-points.interpsuite]" in (package / "pyproject.toml").read_text()
    assert main(["new-plugin", "token_norms_cli", "--dest", str(tmp_path)]) == 2  # never overwrites
    assert "interpsuite: error:" in capsys.readouterr().err


def test_new_plugin_refuses_a_bad_name(tmp_path, capsys):
    assert main(["new-plugin", "9 lives!", "--dest", str(tmp_path)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("interpsuite: error:")
    assert not any(tmp_path.iterdir())


def test_cache_list_and_unknown_entry(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("INTERPSUITE_CACHE", str(tmp_path))
    assert main(["cache", "list"]) == 0
    assert main(["cache", "verify", "no-such-entry"]) == 2
    assert "no-such-entry" in capsys.readouterr().err


def test_experiments_lists_every_shipped_experiment(capsys):
    from interpsuite.config import conf_dir

    assert main(["experiments"]) == 0
    out = capsys.readouterr().out
    for path in (conf_dir() / "experiment").glob("*.yaml"):
        assert path.stem in out


@pytest.mark.parametrize("argv", [["cache"], ["cache", "scrub"], ["nope"]])
def test_bad_subcommand_usage_exits_2(argv, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
