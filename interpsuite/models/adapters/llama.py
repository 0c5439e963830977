"""Llama family (SmolLM2, Llama 2/3): pre-norm, RoPE, gated MLP, grouped-query attention.

`attn.pattern`, `attn.scores`, `attn.q` and `attn.z` are per *query* head; `attn.k` and
`attn.v` keep the KV heads un-expanded (query head h reads KV head h // (n_heads / n_kv_heads)).
`mlp.pre` is the gate projection's output, `mlp.up` the up projection's, `mlp.post` =
act(gate) * up, the input of `down_proj`.
"""

from __future__ import annotations

from .base import Adapter, ModulePaths


class LlamaAdapter(Adapter):
    architecture = "llama"
    model_types = ("llama",)
    norm_kind = "rms"
    gated_mlp = True

    module_paths = ModulePaths(
        blocks="model.layers",
        attention="self_attn",
        attn_z_proj="self_attn.o_proj",
        mlp="mlp",
        mlp_pre_proj="mlp.gate_proj",
        mlp_up_proj="mlp.up_proj",
        mlp_post_proj="mlp.down_proj",
        ln1="input_layernorm",
        ln2="post_attention_layernorm",
        final="model.norm",
    )
