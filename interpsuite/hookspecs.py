"""The whole plugin contract: every hook a plugin may implement.

A plugin is a module (or object) registered under the entry-point group `interpsuite`:

    [project.entry-points.interpsuite]
    my_plugin = "my_package.plugin"

and marks its functions with `@hookimpl` (`from interpsuite import hookimpl`; the same
marker as `interpsuite.hookspecs.hookimpl`). Each hook *returns* what the plugin
contributes; none mutates global state. interpsuite calls every implementation and merges
the answers, attributing each contribution to the distribution that shipped it.

Built-in analyzers, sinks and datasets use these same hooks (`interpsuite.builtin`,
`interpsuite_plugins.*`), so they are examples of what a third-party plugin looks like.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    from .analyzer import Analyzer
    from .commands import Command
    from .data import Dataset
    from .models.adapters.base import Adapter
    from .sinks.base import Sink

PROJECT = "interpsuite"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def interpsuite_analyzers() -> list[type[Analyzer]]:
    """Analyzer classes this plugin provides.

    Each class has a unique `name` (how configs select it: `analyzers.<name>`), a `family`,
    a dataclass `Config`, `validate(model_info, cfg)` and `run(ctx) -> Result`; see
    `interpsuite.Analyzer`. `validate` may return the config resolved against the model
    (e.g. `layers` as a list of ints from `interpsuite.check_layers`); the analyzer is then
    built with it, so `run` reads `self.cfg` resolved (returning None keeps the given one).
    Two analyzers with one name are an error that names both distributions.
    """


@hookspec
def interpsuite_sinks() -> list[type[Sink]]:
    """Sink classes (where results go: run directory, W&B, ...), selected by `name` in `sinks`."""


@hookspec
def interpsuite_datasets() -> list[Dataset]:
    """Named input sets a config can select with `data.dataset=<name>`."""


@hookspec
def interpsuite_config_dirs() -> list[str]:
    """Absolute paths of Hydra config directories to add to the search path.

    A directory may hold `analyzer/<name>.yaml` (selected with `+analyzer=<name>`),
    `experiment/<name>.yaml`, `data/<name>.yaml` and so on, exactly like interpsuite's own
    `conf/`. interpsuite's own configs win on equal names.
    """


@hookspec
def interpsuite_adapters() -> list[type[Adapter]]:
    """Architecture adapters (subclasses of `interpsuite.models.adapters.Adapter`).

    Each maps the transformers `model_type`s in its `model_types` onto the hook-point
    vocabulary by naming modules: blocks, attention, projections, norms. Its
    `architecture` must be unique. A plugin adapter for a model_type that a built-in also
    handles is used instead of the built-in.
    """


@hookspec
def interpsuite_commands() -> list[Command]:
    """Console subcommands (`interpsuite NAME ...`), as `interpsuite.Command` objects.

    A command has a unique `name`, a one-line `help`, `add_arguments(parser)` (an argparse
    subparser) and `run(args) -> exit code`. A `ConfigError` raised by `run` prints one line
    and exits 2, like interpsuite's own commands. This is how a plugin ships a tool that
    works on saved artifacts without a config run (e.g. `interpsuite predict-failure`).
    """
