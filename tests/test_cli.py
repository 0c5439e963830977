"""The `interpsuite` console script: every subcommand the docs name exists and answers."""

from __future__ import annotations

import pytest

from interpsuite import cli, plugins
from interpsuite.cli import COMMANDS, build_parser, main
from interpsuite.commands import Command
from interpsuite.hookspecs import hookimpl


def test_every_subcommand_is_wired():
    expected = {
        "plugins", "models", "experiments", "cache", "new-plugin", "compare", "sweep-summary", "merge-shards",
        "figures", "run", "estimate", "analyze", "list-models", "serve",
    }  # fmt: skip
    assert set(COMMANDS) | {"run", "estimate"} == expected
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


class _WordsPlugin:
    """A plugin contributing one console command, as a third-party package would."""

    @staticmethod
    def _arguments(parser):
        parser.add_argument("words", nargs="*")
        parser.add_argument("--fail", action="store_true")

    @staticmethod
    def _run(args) -> int:
        from interpsuite.errors import ConfigError

        if args.fail:
            raise ConfigError("count-words: --fail was given; leave it out")
        print(len(args.words))
        return 0

    @hookimpl
    def interpsuite_commands(self):
        return [
            Command("count-words", "print how many words were given", self._arguments, self._run),
            Command("compare", "a plugin may not take over a built-in command", self._arguments, self._run),
        ]


def test_plugin_commands_run_list_and_fail_in_one_line(monkeypatch, capsys):
    monkeypatch.setattr(plugins, "_REGISTRY", plugins.get_registry(extra_plugins=[_WordsPlugin()]))
    assert main(["count-words", "a", "b", "c"]) == 0
    assert capsys.readouterr().out.strip() == "3"
    assert main(["count-words", "--fail"]) == 2
    expected = "interpsuite: error: count-words: --fail was given; leave it out"
    assert capsys.readouterr().err.strip().splitlines() == [expected]
    assert "count-words" in build_parser().format_help()
    assert main(["plugins"]) == 0
    assert "print how many words were given" in capsys.readouterr().out
    assert "compare" not in cli.plugin_commands()  # built-in names win
