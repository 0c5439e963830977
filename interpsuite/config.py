"""Where the Hydra configs live and how plugin config directories join the search path.

The source tree keeps them in `conf/`; the wheel ships them as the package
`interpsuite.conf`, so `pkg://interpsuite.conf` works for editable and regular installs.
Plugin config dirs (hook `interpsuite_config_dirs`) are appended through `hydra.searchpath`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .plugins import PluginRegistry, get_registry

PRIMARY_CONFIG = "pkg://interpsuite.conf"
CONFIG_NAME = "config"


def conf_dir() -> Path:
    import importlib.resources

    return Path(str(importlib.resources.files("interpsuite.conf")))


def plugin_search_path(registry: PluginRegistry | None = None) -> list[str]:
    registry = registry or get_registry()
    return [f"file://{Path(c.obj).resolve()}" for c in registry.config_dirs]


def searchpath_override(registry: PluginRegistry | None = None, user: Sequence[str] = ()) -> str | None:
    """A `hydra.searchpath=[...]` override adding plugin config dirs (None if there are none)."""
    paths = plugin_search_path(registry)
    if not paths or any(arg.lstrip("+~").startswith("hydra.searchpath") for arg in user):
        return None  # a user's own searchpath wins; they can list plugin dirs in it
    quoted = ["'" + p.replace("\\", "\\\\").replace("'", "\\'") + "'" for p in paths]
    return "hydra.searchpath=[" + ",".join(quoted) + "]"


def compose(overrides: Sequence[str] = (), registry: PluginRegistry | None = None, return_hydra_config: bool = False):
    """Compose the run config the way `python -m interpsuite` would (for tests and notebooks)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    extra = searchpath_override(registry, overrides)
    all_overrides = [*overrides, *([extra] if extra else [])]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(conf_dir()), version_base="1.3"):
            return hydra_compose(CONFIG_NAME, overrides=all_overrides, return_hydra_config=return_hydra_config)
    finally:
        GlobalHydra.instance().clear()
