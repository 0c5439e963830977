"""BERT encoders (MiniLM): post-norm, bidirectional attention, no unembedding.

Post-norm changes what "the residual stream" means: each sublayer's output is added to its
input and the sum is LayerNorm-ed. So `resid_pre`/`resid_post` are the normalised block
inputs/outputs, `attn.out` and `mlp.out` are the dense projections *before* that add & norm,
`resid_mid` is the attention sublayer's normalised output (the MLP's input), and
`ln1.scale`/`ln2.scale` are the normalisers of those two add & norms. resid_post !=
resid_pre + attn.out + mlp.out (unlike pre-norm decoders). `embed` is the embeddings' output
after their LayerNorm; `final` equals the last block's `resid_post`; there is no final norm
(no `final.scale`) and no `logits` hook point.
"""

from __future__ import annotations

from .base import Adapter, ModulePaths


class BertAdapter(Adapter):
    architecture = "bert"
    model_types = ("bert",)
    norm_kind = "layer"
    post_norm = True
    has_final_norm = False
    auto_class = "AutoModel"

    module_paths = ModulePaths(
        prefixes=("bert", ""),  # inside a task head, or the bare BertModel
        blocks="encoder.layer",
        attention="attention.self",
        attn_z_proj="attention.output.dense",
        attn_out="attention.output.dense",
        resid_mid="attention",
        mlp="output.dense",
        mlp_pre_proj="intermediate.dense",
        mlp_post_proj="output.dense",
        ln1="attention.output.LayerNorm",
        ln2="output.LayerNorm",
        final=None,
        unembed=None,
    )
