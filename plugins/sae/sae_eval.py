"""`sae_eval`: how good is an SAE on text it was not trained on?

A thin analyzer over `evaluation.evaluate_sae`. The SAE is `sae` (a folder saved by
`sae_train`, or a SAELens SAE), else the one `sae_train` saved earlier in this run, else one
trained here with sae_train's defaults on the same corpus. The texts are the held-out part of
the corpus under the same seeded split sae_train uses (`texts: held_out`), so an SAE from
sae_train is never scored on its own training text; `texts: all` scores every text (for an SAE
trained elsewhere).

Metrics: MSE, explained variance, L0, dead and dense latents, and for causal LMs the spliced
cross-entropy and "CE loss recovered" between zero-ablation and clean. Checks: the sanity
bounds (EV <= 1, L0 <= width, ...) and that splicing the SAE in with its error term kept
leaves the logits unchanged (the live-patch identity).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
import torch

from interpsuite.analyzer import Analyzer, RunContext
from interpsuite.errors import ConfigError
from interpsuite.models import ModelInfo
from interpsuite.results import Result


@dataclass
class SAEEvalConfig:
    sae: str | None = None  # SAE folder (interpsuite or SAELens); null = this run's sae_train SAE, else train one
    hook: str | None = None  # null = the SAE's own hook point
    allow_other_hook: bool = False  # apply the SAE at a hook point it was not trained on, on purpose
    corpus: str = "inputs"  # inputs | python_docs | files (as sae_train)
    paths: list[str] = field(default_factory=list)
    max_chars: int = 2000
    held_out: float = 0.1  # the split sae_train uses (same seed): evaluation texts = that held-out part
    texts: str = "held_out"  # held_out | all
    max_texts: int | None = None  # first N evaluation texts
    max_length: int | None = 512
    dense_threshold: float = 0.1
    downstream: bool = True  # CE clean / spliced / zero-ablated (causal LMs)


class SAEEval(Analyzer):
    name = "sae_eval"
    family = "sae"
    description = "evaluate an SAE on held-out text: MSE, explained variance, L0, dead/dense latents, CE loss recovered"
    Config = SAEEvalConfig

    def validate(self, info: ModelInfo, cfg: SAEEvalConfig) -> SAEEvalConfig:
        from .sources import check_source_options

        check_source_options(info, cfg, self.name)
        if not 0.0 < cfg.dense_threshold <= 1.0:
            raise ConfigError(f"sae_eval.dense_threshold must be in (0, 1], got {cfg.dense_threshold}")
        return cfg

    def estimate(self, info: ModelInfo, cfg: SAEEvalConfig, workload):
        """The SAE (a file, this run's sae_train SAE, or one trained here with sae_train's defaults),
        then a capturing pass, the SAE on every token and (downstream) spliced and zero-ablated passes."""
        from interpsuite.estimate_analyzers import sae_eval_cost

        from .sources import estimated_source

        cost, sae, hook, lengths = estimated_source(info, cfg, workload, self.name)
        return cost + sae_eval_cost(workload, hook, lengths, sae.d_in, sae.width, cfg.downstream) + workload.figures(1)

    def run(self, ctx: RunContext) -> Result:
        from .evaluation import evaluate_sae
        from .feature_plots import plot_feature_density
        from .sources import sae_and_texts

        cfg: SAEEvalConfig = self.cfg
        model = ctx.model
        choice, texts = sae_and_texts(ctx, cfg, self.name)
        max_length = cfg.max_length or ctx.max_length
        evaluation = evaluate_sae(
            model, choice.sae, texts, choice.hook, batch_size=ctx.batch_size, max_length=max_length,
            dense_threshold=cfg.dense_threshold, downstream=cfg.downstream, progress=ctx.progress,
        )  # fmt: skip
        result = Result()
        result.metrics.update({k: v for k, v in evaluation.metrics().items() if v is not None})
        for name, (value, threshold, mode) in evaluation.sanity().items():
            result.add_check(name, value, threshold, mode)
        if model.info.is_causal:
            result.add_check("splice_identity_max_abs_logit_diff", splice_identity(model, choice, texts[0]), 1e-5)
        result.tables["latent_density"] = pd.DataFrame(
            {"latent": range(len(evaluation.density)), "density": evaluation.density}
        )
        result.add_figure("feature_density", plot_feature_density, evaluation.density, ctx.style)
        cfg_sae = choice.sae.cfg
        result.summary = {
            "sae": choice.source,
            "hook": choice.hook,
            "architecture": cfg_sae.architecture,
            "width": cfg_sae.width,
            "d_in": cfg_sae.d_in,
            "texts": len(texts),
            "text_choice": cfg.texts,
        }
        return result


def splice_identity(model, choice, text: str) -> float:
    """Max |logit difference| between the clean model and the SAE spliced in with its error kept."""
    batch = model.tokenize([text], 64)
    with torch.no_grad():
        clean = model.forward(batch).output
        with model.sae_splice(choice.sae, choice.hook, keep_error=True, allow_other_hook=True) as splice:
            spliced = splice.run(batch, all_positions=True).logits
    return float((spliced.to(clean.dtype) - clean).abs().max())


ANALYZERS = [SAEEval]
