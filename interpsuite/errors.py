"""Error types: every mistake a user can make surfaces as one of these, never as an `assert`.

The CLI prints an `InterpsuiteError` as a one-line message (no traceback), so the message
itself must name the problem and the fix.
"""

from __future__ import annotations


class InterpsuiteError(Exception):
    """Root of all errors raised on purpose by interpsuite."""


class ConfigError(InterpsuiteError, ValueError):
    """A configuration or input problem found before (or instead of) expensive work."""


class ModelNotFoundError(ConfigError):
    """A model name that is neither embedded, a local path, nor available from a hub."""


class PluginError(InterpsuiteError):
    """A plugin could not be registered (for example two analyzers share one name)."""


class AnalyzerError(InterpsuiteError):
    """An analyzer failed while running; the pipeline records it and goes on."""


class HookError(InterpsuiteError, ValueError):
    """An unknown hook point or an intervention that does not fit the activation shape."""
