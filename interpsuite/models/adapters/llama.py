"""Llama family (SmolLM2, Llama 2/3): pre-norm, RoPE, gated MLP, grouped-query attention.

`attn.pattern`, `attn.scores`, `attn.q` and `attn.z` are per *query* head; `attn.k` and
`attn.v` keep the KV heads un-expanded (query head h reads KV head h // (n_heads / n_kv_heads)).
`mlp.pre` is the gate projection's output, `mlp.up` the up projection's, `mlp.post` =
act(gate) * up, the input of `down_proj`.
"""

from __future__ import annotations

from torch import nn

from ..info import ModelInfo
from .base import Adapter


class LlamaAdapter(Adapter):
    architecture = "llama"
    model_types = ("llama",)
    norm_kind = "rms"
    gated_mlp = True

    @classmethod
    def info_from_config(cls, name: str, config) -> ModelInfo:
        n_heads = config.num_attention_heads
        return ModelInfo(
            name=name,
            architecture=cls.architecture,
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

    def mlp_module(self, layer: int) -> nn.Module:
        return self.blocks()[layer].mlp

    def mlp_input_projection(self, layer: int) -> nn.Module:
        return self.blocks()[layer].mlp.gate_proj

    def mlp_up_projection(self, layer: int) -> nn.Module:
        return self.blocks()[layer].mlp.up_proj

    def mlp_output_projection(self, layer: int) -> nn.Module:
        return self.blocks()[layer].mlp.down_proj

    def ln1(self, layer: int) -> nn.Module:
        return self.blocks()[layer].input_layernorm

    def ln2(self, layer: int) -> nn.Module:
        return self.blocks()[layer].post_attention_layernorm

    def final_module(self) -> nn.Module:
        return self._body.norm

    def unembed_module(self) -> nn.Module:
        return self.hf_model.lm_head
