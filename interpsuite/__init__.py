"""interpsuite: look inside transformer language models.

from interpsuite import InterpretabilityPipeline, load_model
"""

__version__ = "0.1.0"

from .errors import AnalyzerError, ConfigError, HookError, InterpsuiteError, ModelNotFoundError, PluginError  # noqa: E402
from .hooks import Intervention  # noqa: E402
from .models import HookedModel, load_model, wrap  # noqa: E402
from .pipeline import InterpretabilityPipeline  # noqa: E402
from .results import Check, Result, read_results  # noqa: E402

__all__ = [
    "AnalyzerError",
    "Check",
    "ConfigError",
    "HookError",
    "HookedModel",
    "InterpretabilityPipeline",
    "InterpsuiteError",
    "Intervention",
    "ModelNotFoundError",
    "PluginError",
    "Result",
    "__version__",
    "load_model",
    "read_results",
    "wrap",
]
