"""Architecture adapters: one module per family, listed here by transformers model_type."""

from __future__ import annotations

from ...errors import ConfigError
from .base import Adapter
from .bert import BertAdapter
from .gpt2 import GPT2Adapter
from .llama import LlamaAdapter

ADAPTERS: tuple[type[Adapter], ...] = (LlamaAdapter, GPT2Adapter, BertAdapter)


def adapter_for(model_type: str) -> type[Adapter]:
    for adapter in ADAPTERS:
        if model_type in adapter.model_types:
            return adapter
    supported = sorted(t for a in ADAPTERS for t in a.model_types)
    raise ConfigError(f"model type {model_type!r} has no interpsuite adapter; supported: {', '.join(supported)}")


__all__ = ["ADAPTERS", "Adapter", "adapter_for"]
