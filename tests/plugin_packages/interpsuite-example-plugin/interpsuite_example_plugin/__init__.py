"""interpsuite-example-plugin: a minimal third-party interpsuite plugin.

It contributes one analyzer, `example_token_norms`, a Hydra config directory, and an
architecture adapter for StableLM (a transformers `model_type` interpsuite has no built-in
adapter for), through the three hooks below. interpsuite finds this module through the
entry point declared in `pyproject.toml`:

    [project.entry-points.interpsuite]
    example = "interpsuite_example_plugin"

Nothing here touches interpsuite's internals: everything comes from the top-level package.
`validate` resolves the layer against the model once and returns the resolved config, which
is what `run` then reads as `self.cfg`; the analyzer asks the model for a capture
(`ctx.model.forward(batch, capture=[...])`), averages over real tokens with `TokenMean` and
returns a `Result`; the adapter only names modules of the transformers model, and
interpsuite builds the hook points from them. Its tests use `interpsuite.testing`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
import torch

from interpsuite import (
    Adapter,
    Analyzer,
    ConfigError,
    ModelInfo,
    ModulePaths,
    Result,
    RunContext,
    TokenMean,
    check_layers,
    hookimpl,
)

__version__ = "0.1.0"

CONF_DIR = Path(__file__).resolve().parent / "conf"


@dataclass
class TokenNormConfig:
    layer: int = -1  # block whose resid_post is measured; negative counts from the end
    top_k: int = 5  # how many highest-norm tokens the summary lists


class TokenNormAnalyzer(Analyzer):
    """Per-token L2 norm of the residual stream leaving one block."""

    name = "example_token_norms"
    family = "activation"
    description = "per-token L2 norms of blocks.{layer}.resid_post (example third-party plugin)"
    Config = TokenNormConfig

    def validate(self, info: ModelInfo, cfg: TokenNormConfig) -> TokenNormConfig:
        """Checks that need no weights; returns the config with `layer` resolved (-1 -> last block)."""
        (layer,) = check_layers(info, [cfg.layer], f"{self.name}.layer")
        if cfg.top_k < 1:
            raise ConfigError(f"{self.name}.top_k must be >= 1, got {cfg.top_k}")
        return replace(cfg, layer=layer)

    def run(self, ctx: RunContext) -> Result:
        cfg: TokenNormConfig = self.cfg  # as validate() returned it: layer is a block index
        hook = f"blocks.{cfg.layer}.resid_post"
        rows: list[dict] = []
        worst_error = 0.0
        mean_norm = TokenMean()
        for batch in ctx.batches(self.name):
            resid = ctx.model.forward(batch, capture=[hook]).cache[hook]  # [batch, pos, d_model], right-padded
            mask = batch.attention_mask.bool()
            norms = torch.linalg.norm(resid, dim=-1)  # [batch, pos]
            mean_norm.add(norms, batch.attention_mask)  # padding never counts
            # Self-check: the same norms another way (float64 sum of squares).
            reference = resid.to(torch.float64).pow(2).sum(dim=-1).sqrt()
            error = (norms.to(torch.float64) - reference).abs() / reference.clamp_min(1e-12)
            worst_error = max(worst_error, float(error[mask].max()))
            norms = norms.detach().cpu()
            for row, text_id in enumerate(batch.text_ids):
                for position, token in enumerate(batch.tokens[row]):
                    rows.append(
                        {
                            "text": text_id,
                            "position": position,
                            "token": token,
                            "norm": float(norms[row, position]),
                        }
                    )
        table = pd.DataFrame(rows, columns=["text", "position", "token", "norm"])
        result = Result()
        result.tables["token_norms"] = table
        result.metrics["mean_norm"] = float(mean_norm.mean())
        result.metrics["max_norm"] = float(table["norm"].max())
        result.metrics["n_tokens"] = float(mean_norm.count)
        result.add_check("norm_matches_float64_reference", worst_error, 1e-5)
        top = table.sort_values("norm", ascending=False).head(cfg.top_k)
        result.summary = {
            "layer": cfg.layer,
            "hook_point": hook,
            "top_tokens": [
                {"token": r.token, "text": int(r.text), "position": int(r.position), "norm": round(r.norm, 4)}
                for r in top.itertuples(index=False)
            ],
        }
        return result


class StableLmAdapter(Adapter):
    """StableLM (`model_type` "stablelm"): a Llama-like block with LayerNorm and partial rotary.

    Sequential blocks only: with `use_parallel_residual` one LayerNorm feeds both attention and
    MLP, so `ln1.scale` and `ln2.scale` would be one tensor; such configs are refused before
    any weight loads. `mlp.out` is the output of the block's `dropout` after the MLP (the value
    added to the residual); `attn.out` is `o_proj`'s output (the block adds it undropped).
    """

    architecture = "stablelm"
    model_types = ("stablelm",)
    norm_kind = "layer"
    gated_mlp = True

    @classmethod
    def info_from_config(cls, name: str, config) -> ModelInfo:
        if getattr(config, "use_parallel_residual", False):
            raise ConfigError(
                f"{name}: StableLM with use_parallel_residual shares one norm; this adapter needs sequential blocks"
            )
        return super().info_from_config(name, config)  # the usual config field names

    module_paths = ModulePaths(
        blocks="model.layers",
        attention="self_attn",
        attn_z_proj="self_attn.o_proj",
        mlp="dropout",  # the block's dropout after the MLP: its output is what is added
        mlp_pre_proj="mlp.gate_proj",
        mlp_up_proj="mlp.up_proj",
        mlp_post_proj="mlp.down_proj",
        ln1="input_layernorm",
        ln2="post_attention_layernorm",
        final="model.norm",
    )


@hookimpl
def interpsuite_analyzers():
    return [TokenNormAnalyzer]


@hookimpl
def interpsuite_config_dirs():
    return [str(CONF_DIR)]


@hookimpl
def interpsuite_adapters():
    return [StableLmAdapter]
