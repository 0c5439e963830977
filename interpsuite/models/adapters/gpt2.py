"""GPT-2: pre-norm LayerNorm, learned absolute positions, GELU MLP, fused QKV (Conv1D).

`embed` is token + position embeddings. `attn.out` and `mlp.out` are the sublayer outputs
after their residual dropout (what is added to the residual stream); `mlp.pre` is the
output of `c_fc` before the GELU.
"""

from __future__ import annotations

from torch import nn

from ..info import ModelInfo
from .base import Adapter


class GPT2Adapter(Adapter):
    architecture = "gpt2"
    model_types = ("gpt2",)
    norm_kind = "layer"

    @classmethod
    def info_from_config(cls, name: str, config) -> ModelInfo:
        d_model = config.n_embd
        return ModelInfo(
            name=name,
            architecture=cls.architecture,
            n_layers=config.n_layer,
            n_heads=config.n_head,
            n_kv_heads=config.n_head,
            d_model=d_model,
            d_head=d_model // config.n_head,
            d_mlp=config.n_inner or 4 * d_model,
            vocab_size=config.vocab_size,
            is_causal=True,
            max_positions=config.n_positions,
        )

    @property
    def _body(self) -> nn.Module:
        return self.hf_model.transformer

    def layer_list(self) -> tuple[nn.Module, str]:
        return self._body, "h"

    def attention_module(self, layer: int) -> nn.Module:
        return self.blocks()[layer].attn

    def attention_output_projection(self, layer: int) -> nn.Module:
        return self.blocks()[layer].attn.c_proj

    def mlp_module(self, layer: int) -> nn.Module:
        return self.blocks()[layer].mlp

    def mlp_input_projection(self, layer: int) -> nn.Module:
        return self.blocks()[layer].mlp.c_fc

    def mlp_output_projection(self, layer: int) -> nn.Module:
        return self.blocks()[layer].mlp.c_proj

    def ln1(self, layer: int) -> nn.Module:
        return self.blocks()[layer].ln_1

    def ln2(self, layer: int) -> nn.Module:
        return self.blocks()[layer].ln_2

    def final_module(self) -> nn.Module:
        return self._body.ln_f

    def unembed_module(self) -> nn.Module:
        return self.hf_model.lm_head
