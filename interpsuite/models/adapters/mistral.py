"""Mistral: the Llama block with sliding-window attention.

The window lives in the attention mask (built by transformers for each layer type), so
captured scores show positions outside the window at -inf and the pattern gives them 0.
"""

from __future__ import annotations

from .llama import LlamaAdapter


class MistralAdapter(LlamaAdapter):
    architecture = "mistral"
    model_types = ("mistral",)
