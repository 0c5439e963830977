"""Qwen2: the Llama block with biases on the q, k and v projections (and optional sliding
window on some layers); `attn.q`/`attn.k`/`attn.v` include those biases."""

from __future__ import annotations

from .llama import LlamaAdapter


class Qwen2Adapter(LlamaAdapter):
    architecture = "qwen2"
    model_types = ("qwen2",)
