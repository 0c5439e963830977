"""The experiments on offer: every `experiment/*.yaml` of interpsuite's configs and of plugin
config directories, read as plain YAML (no Hydra composition, no weights), for
`interpsuite experiments`.

An experiment's description is the first sentence of its leading comment (the lines after
`# @package ...`, up to a blank line or an example command; a long one shortened to its
headline before ": "); its analyzers are the `/analyzer/<name>` entries of its defaults list
and the keys of its `analyzers:` mapping.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .plugins import OWN_DISTRIBUTION, PluginRegistry, get_registry

#: a longer first sentence keeps its headline (the part before ": ") or is cut at a word
#: boundary, ending in "..."
MAX_DESCRIPTION = 80
_COMMAND = re.compile(r"^(python\s+-m\s+interpsuite|interpsuite\s)")
_SENTENCE_END = re.compile(r"(?<=[.?!])\s")


@dataclass(frozen=True)
class ExperimentInfo:
    """One selectable experiment: `+experiment=<name>`."""

    name: str
    description: str
    analyzers: tuple[str, ...]
    #: "interpsuite", or the distribution of the plugin whose config dir holds it
    source: str
    path: Path
    #: the description came from the file's own comment (False: derived from its analyzers)
    described: bool = True


def _comment_description(text: str) -> str:
    """The first sentence of the leading comment block, or "" if there is none."""
    lines: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line.startswith("#"):
            if lines or line:
                break  # the leading comment ends at the first non-comment line
            continue
        body = line.lstrip("#").strip()
        if body.startswith("@package"):
            continue
        if not body or _COMMAND.match(body):
            if lines:
                break
            continue
        lines.append(body)
    sentence = _SENTENCE_END.split(" ".join(lines), maxsplit=1)[0].strip() if lines else ""
    if len(sentence) > MAX_DESCRIPTION and ": " in sentence[:MAX_DESCRIPTION]:
        sentence = sentence.split(": ", 1)[0]  # "Where each head looks: patterns, entropy, ..." -> its headline
    if len(sentence) > MAX_DESCRIPTION:
        sentence = sentence[:MAX_DESCRIPTION].rsplit(" ", 1)[0].rstrip(",;:") + "..."
    return sentence


def _strip_keyword(key: str) -> str:
    for keyword in ("override ", "optional "):
        if key.startswith(keyword):
            key = key[len(keyword) :].strip()
    return key


def _analyzer_group_names(entry) -> list[str]:
    """Analyzer names selected by one defaults-list entry (`/analyzer/x`, `/analyzer: x`, ...)."""
    if isinstance(entry, str):
        path = _strip_keyword(entry.strip()).lstrip("/")
        group, _, name = path.partition("/")
        return [name.split("@", 1)[0]] if group == "analyzer" and name else []
    if isinstance(entry, dict):
        names = []
        for key, value in entry.items():
            group = _strip_keyword(str(key).strip()).lstrip("/").split("@", 1)[0]
            if group != "analyzer" or value is None:
                continue
            names += [str(v) for v in (value if isinstance(value, list) else [value])]
        return names
    return []


def read_experiment(path: Path, source: str) -> ExperimentInfo:
    """An ExperimentInfo from one experiment YAML file (a file that is not valid YAML is listed
    with the parse error as its description, not raised)."""
    import yaml

    text = path.read_text(encoding="utf-8")
    analyzers: list[str] = []
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        problem = str(err).splitlines()[0]
        return ExperimentInfo(path.stem, f"(not valid YAML: {problem})", (), source, path, described=False)
    if isinstance(data, dict):
        for entry in data.get("defaults") or []:
            analyzers += _analyzer_group_names(entry)
        options = data.get("analyzers")
        if isinstance(options, dict):
            analyzers += [str(k) for k in options]
    unique = tuple(dict.fromkeys(analyzers))
    description = _comment_description(text)
    if description:
        return ExperimentInfo(path.stem, description, unique, source, path)
    derived = f"runs {', '.join(unique)}" if unique else "selects no analyzers"
    return ExperimentInfo(path.stem, derived, unique, source, path, described=False)


def _config_dirs(registry: PluginRegistry) -> Iterable[tuple[Path, str]]:
    from .config import conf_dir

    yield conf_dir(), OWN_DISTRIBUTION
    for item in registry.config_dirs:
        yield Path(str(item.obj)), item.distribution


def list_experiments(registry: PluginRegistry | None = None) -> list[ExperimentInfo]:
    """Every `experiment/*.yaml` in interpsuite's config dir, then in each plugin config dir
    (in search-path order; within a dir, by name)."""
    registry = registry or get_registry()
    seen: set[Path] = set()
    found: list[ExperimentInfo] = []
    for folder, source in _config_dirs(registry):
        group = folder / "experiment"
        if not group.is_dir() or group.resolve() in seen:
            continue
        seen.add(group.resolve())
        found += [read_experiment(path, source) for path in sorted(group.glob("*.yaml"))]
    return found


def format_experiments(experiments: list[ExperimentInfo]) -> str:
    if not experiments:
        return "no experiments found"
    width = max(len(e.name) for e in experiments)
    lines = ["experiments (run with +experiment=<name>):"]
    for e in experiments:
        origin = "" if e.source == OWN_DISTRIBUTION else f"  (from {e.source})"
        listed = ", ".join(e.analyzers) or "none"
        lines.append(f"  {e.name:<{width}}  {e.description}  (analyzers: {listed}){origin}")
    return "\n".join(lines)


def experiments_command(args=None) -> int:
    """`interpsuite experiments`: one line per experiment; `args` (argparse) is unused."""
    print(format_experiments(list_experiments()))
    return 0
