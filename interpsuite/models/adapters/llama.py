"""Llama family (SmolLM2, Llama 2/3, Mistral, Qwen2): pre-norm, RoPE, gated MLP, GQA.

`attn.pattern` and `attn.z` are per *query* head: keys and values of a grouped KV head are
expanded to each query head that reads them, so SmolLM2 shows 9 patterns per layer.
`mlp.post` is act(gate) * up, the input of `down_proj`.
"""

from __future__ import annotations

import contextlib

from torch import nn

from ..info import ModelInfo
from .base import Adapter


class LlamaAdapter(Adapter):
    architecture = "llama"
    model_types = ("llama", "mistral", "qwen2")

    @staticmethod
    def info_from_config(name: str, config) -> ModelInfo:
        n_heads = config.num_attention_heads
        return ModelInfo(
            name=name,
            architecture="llama",
            n_layers=config.num_hidden_layers,
            n_heads=n_heads,
            n_kv_heads=getattr(config, "num_key_value_heads", None) or n_heads,
            d_model=config.hidden_size,
            d_head=getattr(config, "head_dim", None) or config.hidden_size // n_heads,
            d_mlp=config.intermediate_size,
            vocab_size=config.vocab_size,
            is_causal=True,
            max_positions=config.max_position_embeddings,
        )

    @property
    def _body(self) -> nn.Module:
        return self.hf_model.model

    def layer_list(self) -> tuple[nn.Module, str]:
        return self._body, "layers"

    def attention_module(self, layer: int) -> nn.Module:
        return self.blocks()[layer].self_attn

    def attention_output_projection(self, layer: int) -> nn.Module:
        return self.blocks()[layer].self_attn.o_proj

    def mlp_output_projection(self, layer: int) -> nn.Module:
        return self.blocks()[layer].mlp.down_proj

    def final_module(self) -> nn.Module:
        return self._body.norm

    def unembed_module(self) -> nn.Module:
        return self.hf_model.lm_head

    def embeddings_pass_through(self) -> contextlib.AbstractContextManager:
        # Llama adds nothing to inputs_embeds (RoPE acts inside attention): nothing to silence.
        return contextlib.nullcontext()
