"""GPT-2: pre-norm, learned absolute positions, GELU MLP, fused QKV (Conv1D projections)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from ..info import ModelInfo
from .base import Adapter


class GPT2Adapter(Adapter):
    architecture = "gpt2"
    model_types = ("gpt2",)

    @staticmethod
    def info_from_config(name: str, config) -> ModelInfo:
        d_model = config.n_embd
        return ModelInfo(
            name=name,
            architecture="gpt2",
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

    def mlp_output_projection(self, layer: int) -> nn.Module:
        return self.blocks()[layer].mlp.c_proj

    def final_module(self) -> nn.Module:
        return self._body.ln_f

    def unembed_module(self) -> nn.Module:
        return self.hf_model.lm_head

    @contextlib.contextmanager
    def embeddings_pass_through(self) -> Iterator[None]:
        # GPT-2 adds position embeddings to inputs_embeds: silence them.
        def silence(module, args, output):
            return torch.zeros_like(output)

        silence.interpsuite = True
        handle = self._body.wpe.register_forward_hook(silence)
        try:
            yield
        finally:
            handle.remove()
