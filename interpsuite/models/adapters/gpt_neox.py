"""GPT-NeoX / Pythia: LayerNorm, fused QKV, partial rotary, and (usually) parallel blocks.

With `use_parallel_residual` (Pythia, GPT-NeoX-20B) attention and MLP both read the block
input, each through its own LayerNorm, and both add to it:

    resid_post = resid_pre + attn(ln1(resid_pre)) + mlp(ln2(resid_pre))

so `ModelInfo.parallel_blocks` is True and `ln2.scale` is the normaliser of `resid_pre` (the
MLP's input), not of `resid_mid`. No tensor in such a block is "after attention, before the
MLP"; `resid_mid` is *defined* as `resid_pre + attn.out` (derived on the attn.out boundary,
like every pre-norm block), so that `resid_post = resid_mid + mlp.out` still holds. It is not
an input of the MLP: writing it changes what the attention sublayer adds, never what the MLP
reads. Without `use_parallel_residual` the block is an ordinary sequential pre-norm block and
`resid_mid` is the MLP's real input.

`attn.out` and `mlp.out` are the outputs of `post_attention_dropout` / `post_mlp_dropout`:
the values actually added to the residual (identical to the projections' outputs in eval
mode, but not in training). `attn.q`/`attn.k` are after the partial rotary embedding (the
first `rotary_pct * d_head` dimensions rotated, the rest passed through). `mlp.pre` is the
output of `dense_h_to_4h` before the activation, `mlp.post` the input of `dense_4h_to_h`.
"""

from __future__ import annotations

from typing import Any

from .base import Adapter, ModulePaths


class GPTNeoXAdapter(Adapter):
    architecture = "gpt_neox"
    model_types = ("gpt_neox",)
    norm_kind = "layer"

    @classmethod
    def capabilities(cls, config) -> dict[str, Any]:
        # the config decides: Pythia is parallel, some NeoX fine-tunes are not
        return {**super().capabilities(config), "parallel_blocks": bool(getattr(config, "use_parallel_residual", True))}

    module_paths = ModulePaths(
        blocks="gpt_neox.layers",
        attention="attention",
        attn_z_proj="attention.dense",
        # the attention module returns (output, weights); the dropout after it is what is added
        attn_out="post_attention_dropout",
        mlp="post_mlp_dropout",
        mlp_pre_proj="mlp.dense_h_to_4h",
        mlp_post_proj="mlp.dense_4h_to_h",
        ln1="input_layernorm",
        ln2="post_attention_layernorm",
        final="gpt_neox.final_layer_norm",
    )
