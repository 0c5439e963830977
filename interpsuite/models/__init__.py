"""Model loading (sources) and the hooked view over every architecture (adapters)."""

from .hooked import ForwardResult, HookedModel, TokenBatch, load_model
from .info import ModelInfo
from .sources import EMBEDDED, describe_model

__all__ = ["EMBEDDED", "ForwardResult", "HookedModel", "ModelInfo", "TokenBatch", "describe_model", "load_model"]
