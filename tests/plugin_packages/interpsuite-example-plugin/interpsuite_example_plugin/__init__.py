"""interpsuite-example-plugin: a minimal third-party interpsuite plugin.

It contributes one analyzer, `example_token_norms`, and a Hydra config directory, through
the two hooks below. interpsuite finds this module through the entry point declared in
`pyproject.toml`:

    [project.entry-points.interpsuite]
    example = "interpsuite_example_plugin"

Nothing here touches interpsuite's internals: the analyzer asks the model for a capture
(`ctx.model.forward(batch, capture=[...])`) and returns a `Result`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from interpsuite.analyzer import Analyzer, RunContext, check_layers
from interpsuite.errors import ConfigError
from interpsuite.hookspecs import hookimpl
from interpsuite.models import ModelInfo
from interpsuite.results import Result

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

    def validate(self, info: ModelInfo, cfg: TokenNormConfig) -> None:
        check_layers(info, [cfg.layer], f"{self.name}.layer")
        if cfg.top_k < 1:
            raise ConfigError(f"{self.name}.top_k must be >= 1, got {cfg.top_k}")

    def run(self, ctx: RunContext) -> Result:
        cfg: TokenNormConfig = self.cfg
        (layer,) = check_layers(ctx.model.info, [cfg.layer], f"{self.name}.layer")
        hook = f"blocks.{layer}.resid_post"
        rows: list[dict] = []
        worst_error = 0.0
        for batch in ctx.batches(self.name):
            resid = ctx.model.forward(batch, capture=[hook]).cache[hook]  # [batch, pos, d_model]
            mask = batch.attention_mask.bool()
            norms = torch.linalg.norm(resid, dim=-1)  # [batch, pos]
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
        result.metrics["mean_norm"] = float(table["norm"].mean())
        result.metrics["max_norm"] = float(table["norm"].max())
        result.metrics["n_tokens"] = float(len(table))
        result.add_check("norm_matches_float64_reference", worst_error, 1e-5)
        top = table.sort_values("norm", ascending=False).head(cfg.top_k)
        result.summary = {
            "layer": layer,
            "hook_point": hook,
            "top_tokens": [
                {"token": r.token, "text": int(r.text), "position": int(r.position), "norm": round(r.norm, 4)}
                for r in top.itertuples(index=False)
            ],
        }
        return result


@hookimpl
def interpsuite_analyzers():
    return [TokenNormAnalyzer]


@hookimpl
def interpsuite_config_dirs():
    return [str(CONF_DIR)]
