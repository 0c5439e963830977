"""Plugin loading and the registry of analyzers, sinks, datasets and config directories.

Every plugin, built-in or third-party, arrives through the entry-point group `interpsuite`.
A plugin that fails to import is skipped with a warning naming it; two contributions with
the same name are an error naming both distributions. Environment switches:

- `INTERPSUITE_DISABLE_PLUGIN_AUTOLOAD=1`: load only interpsuite's own entry points.
- `INTERPSUITE_BLOCK_PLUGINS=a,b`: skip these entry-point names.
"""

from __future__ import annotations

import importlib.metadata
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import pluggy

from . import hookspecs
from .errors import PluginError

AUTOLOAD_ENV = "INTERPSUITE_DISABLE_PLUGIN_AUTOLOAD"
BLOCK_ENV = "INTERPSUITE_BLOCK_PLUGINS"
GROUP = hookspecs.PROJECT
OWN_DISTRIBUTION = "interpsuite"
IN_PROCESS = "(registered in-process)"


class PluginLoadWarning(UserWarning):
    """A plugin could not be loaded; everything else still works."""


@dataclass(frozen=True)
class Contribution:
    """One thing a plugin contributed, and who shipped it."""

    name: str
    obj: Any
    distribution: str
    plugin: str


@dataclass
class PluginRegistry:
    analyzers: dict[str, Contribution] = field(default_factory=dict)
    sinks: dict[str, Contribution] = field(default_factory=dict)
    datasets: dict[str, Contribution] = field(default_factory=dict)
    config_dirs: list[Contribution] = field(default_factory=list)
    adapters: dict[str, Contribution] = field(default_factory=dict)
    commands: dict[str, Contribution] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def analyzer(self, name: str):
        from .errors import ConfigError

        if name not in self.analyzers:
            known = ", ".join(sorted(self.analyzers)) or "(none)"
            raise ConfigError(f"unknown analyzer {name!r}; registered analyzers: {known}")
        return self.analyzers[name].obj

    def sink(self, name: str):
        from .errors import ConfigError

        if name not in self.sinks:
            raise ConfigError(f"unknown sink {name!r}; registered sinks: {', '.join(sorted(self.sinks))}")
        return self.sinks[name].obj


def _distribution_of(entry_point: importlib.metadata.EntryPoint) -> str:
    dist = getattr(entry_point, "dist", None)
    return dist.name if dist is not None else "(unknown distribution)"


def new_plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    return pm


def load_entry_point_plugins(pm: pluggy.PluginManager) -> tuple[dict[str, str], list[str]]:
    """Register every entry point of the group; returns {plugin name: distribution}, warnings."""
    only_own = os.environ.get(AUTOLOAD_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")
    blocked = {n.strip() for n in os.environ.get(BLOCK_ENV, "").split(",") if n.strip()}
    origins: dict[str, str] = {}
    problems: list[str] = []
    for entry_point in importlib.metadata.entry_points(group=GROUP):
        dist = _distribution_of(entry_point)
        key = f"{dist}:{entry_point.name}"
        if entry_point.name in blocked or (only_own and dist != OWN_DISTRIBUTION) or pm.has_plugin(key):
            continue
        try:
            plugin = entry_point.load()
            pm.register(plugin, name=key)
        except Exception as err:  # a broken plugin must not take the others down
            message = (
                f"interpsuite plugin {entry_point.name!r} from distribution {dist!r} "
                f"({entry_point.value}) failed to load and is skipped: {type(err).__name__}: {err}"
            )
            warnings.warn(message, PluginLoadWarning, stacklevel=2)
            problems.append(message)
            continue
        origins[key] = dist
    _check_pending(pm, origins)
    return origins, problems


def _check_pending(pm: pluggy.PluginManager, origins: dict[str, str]) -> None:
    """A misspelt hook implementation is an error naming the plugin and its distribution."""
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as err:
        who = next((name for name in origins if pm.get_plugin(name) is err.plugin), str(err.plugin))
        raise PluginError(
            f"plugin {who!r} (distribution {origins.get(who, IN_PROCESS)!r}) implements a hook that "
            f"interpsuite does not define: {err}. Hooks: interpsuite_analyzers, interpsuite_sinks, "
            f"interpsuite_datasets, interpsuite_config_dirs, interpsuite_adapters, interpsuite_commands"
        ) from err


def _collect(pm, hook_name: str, origins: dict[str, str], problems: list[str]):
    for impl in getattr(pm.hook, hook_name).get_hookimpls():
        dist = origins.get(impl.plugin_name, IN_PROCESS)
        try:
            contributed = impl.function() or []
        except Exception as err:
            message = f"plugin {impl.plugin_name!r} ({dist}) failed in {hook_name}: {type(err).__name__}: {err}"
            warnings.warn(message, PluginLoadWarning, stacklevel=2)
            problems.append(message)
            continue
        for obj in contributed:
            yield obj, dist, impl.plugin_name


def _add_unique(table: dict[str, Contribution], kind: str, item: Contribution) -> None:
    if not item.name:
        raise PluginError(f"{kind} {item.obj!r} from {item.distribution} has no `name`")
    if item.name in table:
        other = table[item.name]
        raise PluginError(
            f"two {kind}s are named {item.name!r}: one from distribution {other.distribution!r} "
            f"(plugin {other.plugin}), one from {item.distribution!r} (plugin {item.plugin}). "
            f"Uninstall one, or block one with {BLOCK_ENV}=<entry point name>."
        )
    table[item.name] = item


def build_registry(pm: pluggy.PluginManager, origins: dict[str, str], problems: list[str]) -> PluginRegistry:
    registry = PluginRegistry(warnings=list(problems))
    for kind, hook, table in (
        ("analyzer", "interpsuite_analyzers", registry.analyzers),
        ("sink", "interpsuite_sinks", registry.sinks),
        ("dataset", "interpsuite_datasets", registry.datasets),
        ("command", "interpsuite_commands", registry.commands),
    ):
        for obj, dist, plugin in _collect(pm, hook, origins, registry.warnings):
            _add_unique(table, kind, Contribution(obj.name, obj, dist, plugin))
    for obj, dist, plugin in _collect(pm, "interpsuite_adapters", origins, registry.warnings):
        architecture = getattr(obj, "architecture", None)
        if not architecture or not getattr(obj, "model_types", None):
            raise PluginError(f"adapter {obj!r} from {dist} needs `architecture` and `model_types`")
        _add_unique(registry.adapters, "adapter", Contribution(architecture, obj, dist, plugin))
    for path, dist, plugin in _collect(pm, "interpsuite_config_dirs", origins, registry.warnings):
        registry.config_dirs.append(Contribution(str(path), str(path), dist, plugin))
    return registry


_REGISTRY: PluginRegistry | None = None


def get_registry(extra_plugins: list[Any] | None = None) -> PluginRegistry:
    """The registry of installed plugins (cached), plus any plugin objects given in-process."""
    global _REGISTRY
    if extra_plugins:
        pm = new_plugin_manager()
        origins, problems = load_entry_point_plugins(pm)
        for plugin in extra_plugins:
            pm.register(plugin)
        _check_pending(pm, origins)
        return build_registry(pm, origins, problems)
    if _REGISTRY is None:
        pm = new_plugin_manager()
        origins, problems = load_entry_point_plugins(pm)
        _REGISTRY = build_registry(pm, origins, problems)
    return _REGISTRY


def reset_registry() -> None:
    """Forget the cached registry (after installing a plugin in the same process)."""
    global _REGISTRY
    _REGISTRY = None
    importlib.invalidate_caches()
