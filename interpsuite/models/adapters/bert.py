"""BERT encoders (MiniLM): post-norm, bidirectional attention, no unembedding.

Post-norm changes what "the residual stream" means: each sublayer's output is added to its
input and the sum is LayerNorm-ed. So `resid_pre`/`resid_post` are the normalised block
inputs/outputs, `attn.out` and `mlp.out` are the dense projections *before* that add & norm,
and resid_post != resid_pre + attn.out + mlp.out (unlike pre-norm decoders). `embed` is the
embeddings' output after their LayerNorm; `final` equals the last block's `resid_post`.
There is no `logits` hook point.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

from ..info import ModelInfo
from .base import Adapter


class BertAdapter(Adapter):
    architecture = "bert"
    model_types = ("bert",)

    @staticmethod
    def info_from_config(name: str, config) -> ModelInfo:
        d_model = config.hidden_size
        return ModelInfo(
            name=name,
            architecture="bert",
            n_layers=config.num_hidden_layers,
            n_heads=config.num_attention_heads,
            n_kv_heads=config.num_attention_heads,
            d_model=d_model,
            d_head=d_model // config.num_attention_heads,
            d_mlp=config.intermediate_size,
            vocab_size=config.vocab_size,
            is_causal=False,
            max_positions=config.max_position_embeddings,
        )

    @property
    def _body(self) -> nn.Module:
        return getattr(self.hf_model, "bert", self.hf_model)

    def layer_list(self) -> tuple[nn.Module, str]:
        return self._body.encoder, "layer"

    def attention_module(self, layer: int) -> nn.Module:
        return self.blocks()[layer].attention.self

    def attention_output_projection(self, layer: int) -> nn.Module:
        return self.blocks()[layer].attention.output.dense

    def mlp_output_projection(self, layer: int) -> nn.Module:
        return self.blocks()[layer].output.dense

    def final_module(self) -> None:
        return None

    @contextlib.contextmanager
    def embeddings_pass_through(self) -> Iterator[None]:
        # BERT's embeddings add position and token-type embeddings and a LayerNorm: hand the
        # given inputs_embeds (the residual stream of a later layer) through unchanged.
        def pass_through(module, args, kwargs, output):
            return kwargs["inputs_embeds"]

        pass_through.interpsuite = True
        handle = self._body.embeddings.register_forward_hook(pass_through, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()
