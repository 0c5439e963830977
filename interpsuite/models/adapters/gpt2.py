"""GPT-2: pre-norm LayerNorm, learned absolute positions, GELU MLP, fused QKV (Conv1D).

`embed` is token + position embeddings. `attn.out` and `mlp.out` are the sublayer outputs
after their residual dropout (what is added to the residual stream); `mlp.pre` is the
output of `c_fc` before the GELU.
"""

from __future__ import annotations

from ..info import ModelInfo
from .base import Adapter, ModulePaths


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

    module_paths = ModulePaths(
        blocks="transformer.h",
        attention="attn",
        attn_z_proj="attn.c_proj",
        mlp="mlp",
        mlp_pre_proj="mlp.c_fc",
        mlp_post_proj="mlp.c_proj",
        ln1="ln_1",
        ln2="ln_2",
        final="transformer.ln_f",
    )
