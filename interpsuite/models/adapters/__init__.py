"""Architecture adapters: one module per family, found by transformers `model_type`.

Built-ins are listed here; third-party packages add theirs through the
`interpsuite_adapters` hook (see `interpsuite.hookspecs`). A plugin's adapter for a
model_type that a built-in also handles wins: that is how a package fixes or extends one.
"""

from __future__ import annotations

from ...errors import ConfigError
from .base import Adapter, ModulePaths
from .bert import BertAdapter
from .gemma2 import Gemma2Adapter
from .gpt2 import GPT2Adapter
from .gpt_neox import GPTNeoXAdapter
from .llama import LlamaAdapter
from .mistral import MistralAdapter
from .qwen2 import Qwen2Adapter

BUILTIN_ADAPTERS: tuple[type[Adapter], ...] = (
    LlamaAdapter,
    MistralAdapter,
    Qwen2Adapter,
    Gemma2Adapter,
    GPT2Adapter,
    GPTNeoXAdapter,
    BertAdapter,
)


def registered_adapters() -> tuple[type[Adapter], ...]:
    """Plugin adapters first (they may override a built-in), then the built-ins."""
    from ...plugins import get_registry

    plugin_adapters = tuple(c.obj for c in get_registry().adapters.values())
    return (*plugin_adapters, *BUILTIN_ADAPTERS)


def adapter_for(model_type: str) -> type[Adapter]:
    adapters = registered_adapters()
    for adapter in adapters:
        if model_type in adapter.model_types:
            return adapter
    supported = sorted({t for a in adapters for t in a.model_types})
    raise ConfigError(
        f"model type {model_type!r} has no interpsuite adapter; supported: {', '.join(supported)} "
        "(a plugin can add one through the interpsuite_adapters hook)"
    )


__all__ = ["BUILTIN_ADAPTERS", "Adapter", "ModulePaths", "adapter_for", "registered_adapters"]
