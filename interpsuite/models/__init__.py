"""Model loading (sources) and the hooked view over every architecture (adapters)."""

from .hooked import ForwardResult, HookedModel, TokenBatch, wrap
from .info import ModelInfo
from .loading import load_model
from .sources import EMBEDDED, describe_model

__all__ = [
    "EMBEDDED",
    "ForwardResult",
    "HookedModel",
    "ModelInfo",
    "TokenBatch",
    "describe_model",
    "load_model",
    "wrap",
]
