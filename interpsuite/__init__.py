"""interpsuite: look inside transformer language models.

    from interpsuite import InterpretabilityPipeline, load_model

Everything a plugin author needs is importable from here as well (docs/plugins.md):

    from interpsuite import Analyzer, Result, RunContext, TokenMeans, check_layers, hookimpl

Names are imported on first use (PEP 562), so `import interpsuite` is cheap: pytest imports
the package in every session through the `interpsuite.testing` plugin, and a plugin module
that needs only `hookimpl` should not pay for torch and transformers. Nothing here imports
`matplotlib.pyplot`. The test kit lives in `interpsuite.testing`, the package scaffold in
`interpsuite.scaffold`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:  # pragma: no cover - the same names as _EXPORTS, for type checkers and editors
    from .analyzer import Analyzer, NoConfig, RunContext, check_heads, check_hook_points, check_layers
    from .artifacts import Artifact, ModelFingerprint, load_artifact, save_artifact
    from .commands import Command
    from .data import Dataset, Inputs
    from .errors import AnalyzerError, ConfigError, HookError, InterpsuiteError, ModelNotFoundError, PluginError
    from .figures import FigureStyle, figure_function
    from .hooks import Intervention
    from .hookspecs import hookimpl
    from .models import ForwardResult, HookedModel, ModelInfo, TokenBatch, load_model, wrap
    from .models.adapters import Adapter, ModulePaths
    from .pipeline import InterpretabilityPipeline
    from .reductions import TokenMean, TokenMeans, layer_hooks, masked_mean, masked_sum, per_layer, real_tokens
    from .results import Check, Result, read_results
    from .sinks.base import RunInfo, Sink

#: submodule -> the public names it defines (kept equal to the imports above and to __all__ by tests)
_SOURCES: dict[str, tuple[str, ...]] = {
    "analyzer": ("Analyzer", "NoConfig", "RunContext", "check_heads", "check_hook_points", "check_layers"),
    "artifacts": ("Artifact", "ModelFingerprint", "load_artifact", "save_artifact"),
    "commands": ("Command",),
    "data": ("Dataset", "Inputs"),
    "errors": ("AnalyzerError", "ConfigError", "HookError", "InterpsuiteError", "ModelNotFoundError", "PluginError"),
    "figures": ("FigureStyle", "figure_function"),
    "hooks": ("Intervention",),
    "hookspecs": ("hookimpl",),
    "models": ("ForwardResult", "HookedModel", "ModelInfo", "TokenBatch", "load_model", "wrap"),
    "models.adapters": ("Adapter", "ModulePaths"),
    "pipeline": ("InterpretabilityPipeline",),
    "reductions": ("TokenMean", "TokenMeans", "layer_hooks", "masked_mean", "masked_sum", "per_layer", "real_tokens"),
    "results": ("Check", "Result", "read_results"),
    "sinks.base": ("RunInfo", "Sink"),
}
_EXPORTS: dict[str, str] = {name: module for module, names in _SOURCES.items() for name in names}

__all__ = [
    "Adapter",
    "Analyzer",
    "AnalyzerError",
    "Artifact",
    "Check",
    "Command",
    "ConfigError",
    "Dataset",
    "FigureStyle",
    "ForwardResult",
    "HookError",
    "HookedModel",
    "Inputs",
    "InterpretabilityPipeline",
    "InterpsuiteError",
    "Intervention",
    "ModelFingerprint",
    "ModelInfo",
    "ModelNotFoundError",
    "ModulePaths",
    "NoConfig",
    "PluginError",
    "Result",
    "RunContext",
    "RunInfo",
    "Sink",
    "TokenBatch",
    "TokenMean",
    "TokenMeans",
    "__version__",
    "check_heads",
    "check_hook_points",
    "check_layers",
    "figure_function",
    "hookimpl",
    "layer_hooks",
    "load_artifact",
    "load_model",
    "masked_mean",
    "masked_sum",
    "per_layer",
    "read_results",
    "real_tokens",
    "save_artifact",
    "wrap",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
