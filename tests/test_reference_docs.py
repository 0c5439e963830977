"""docs/reference.md covers every config key, and no page names a file that does not exist.

What test_docs.py checks (hooks in plugins.md, analyzers in results.md) is not repeated here.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from interpsuite.config import conf_dir
from interpsuite.data import DataConfig

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "docs" / "reference.md"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: a path in a page is checked when its first part is one of these (run outputs such as
#: `figures/<analyzer>/...` or `outputs/...` are not files of the repository)
REPO_TOP = ("docs", "tests", "benchmarks", "scripts", "conf", "plugins", "interpsuite", ".ci")
REPO_FILES = ("README.md", "pyproject.toml")
_PLACEHOLDER = re.compile(r"[<>*{}$|]|\.\.\.")


def _leaf_keys(mapping: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in mapping.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            keys += _leaf_keys(value, dotted + ".")
        else:
            keys.append(dotted)
    return keys


def test_every_top_level_config_key_is_documented():
    text = REFERENCE.read_text(encoding="utf-8")
    config = yaml.safe_load((conf_dir() / "config.yaml").read_text(encoding="utf-8"))
    assert "sinks" in config and "hydra" in config
    missing = [f"`{key}`" for key in config if f"`{key}" not in text]
    missing += [f"`{key}`" for key in _leaf_keys(config) if "." in key and f"`{key}" not in text]
    assert not missing, f"docs/reference.md does not mention {missing}"


def test_every_data_and_model_field_is_documented():
    text = REFERENCE.read_text(encoding="utf-8")
    fields = [f"data.{f.name}" for f in dataclasses.fields(DataConfig)]
    for path in sorted((conf_dir() / "model").glob("*.yaml")):
        fields += [f"model.{key}" for key in yaml.safe_load(path.read_text(encoding="utf-8")) or {}]
    for path in sorted((conf_dir() / "data").glob("*.yaml")):
        fields += [f"data.{key}" for key in yaml.safe_load(path.read_text(encoding="utf-8")) or {}]
    missing = sorted({f for f in fields if f"`{f}" not in text})
    assert not missing, f"docs/reference.md does not mention {missing}"


def _subcommands(parser: argparse.ArgumentParser) -> set[str]:
    return {
        name for action in parser._actions if isinstance(action, argparse._SubParsersAction) for name in action.choices
    }


def _inline_code(text: str) -> list[str]:
    return re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))


def _shell_blocks(text: str) -> list[str]:
    """Fenced blocks of shell commands or plain text (python blocks name plugin-relative paths)."""
    return [
        body
        for lang, body in re.findall(r"```([^\n]*)\n(.*?)```", text, flags=re.S)
        if lang.strip() in ("", "bash", "sh", "shell", "console", "text")
    ]


def _code_spans(text: str) -> list[str]:
    return _inline_code(text) + [token for block in _shell_blocks(text) for token in block.split()]


def test_every_documented_subcommand_exists():
    from interpsuite import cli

    if not hasattr(cli, "build_parser"):
        pytest.skip("interpsuite.cli has no build_parser() yet")
    known = _subcommands(cli.build_parser()) | {"run"}  # `run` is forwarded before the parser
    named = set()
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        commands = _inline_code(text) + [line for block in _shell_blocks(text) for line in block.splitlines()]
        for command in commands:
            named |= set(re.findall(r"^\s*(?:\$\s*)?interpsuite ([a-z][a-z-]*)", command))
    unknown = sorted(named - known)
    assert not unknown, f"the docs name `interpsuite {unknown}`, which the CLI does not have (has {sorted(known)})"


def referenced_paths(page: Path) -> list[tuple[str, Path]]:
    """(as written, resolved) for each repository path a page names: markdown links (relative
    to the page) and paths in code, inline or in shell/text blocks (relative to the repository
    root)."""
    text = page.read_text(encoding="utf-8")
    found = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # a URL or an anchor on the same page
        found.append((target, (page.parent / target.split("#", 1)[0]).resolve()))
    for span in _code_spans(text):
        for token in span.split():
            token = token.strip("'\"`(),;:")
            first = token.split("/", 1)[0]
            if ("/" in token and first in REPO_TOP) or token in REPO_FILES:
                if not _PLACEHOLDER.search(token):
                    found.append((token, ROOT / token))
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_path_a_page_names_exists(page):
    missing = sorted({written for written, path in referenced_paths(page) if not path.exists()})
    assert not missing, f"{page.relative_to(ROOT)} names files that do not exist: {missing}"


def test_path_finder_sees_links_and_code(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "See [the cache](caching.md#where), `docs/results.md`, [site](https://x.org), `figures/<a>/b.png`.\n"
        "```bash\nbash scripts/install.sh --test && python benchmarks/nope.py\n```\n"
    )
    written = [w for w, _ in referenced_paths(page)]
    assert written == ["caching.md#where", "docs/results.md", "scripts/install.sh", "benchmarks/nope.py"]
    page.write_text("```python\nCONF = here / 'conf'  # conf/analyzer/mine.yaml, in the plugin package\n```\n")
    assert referenced_paths(page) == []
    assert not (ROOT / "benchmarks" / "nope.py").exists()  # so a page naming it would fail
