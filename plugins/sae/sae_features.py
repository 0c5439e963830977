"""`sae_features`: browse what an SAE's latents respond to, offline.

A thin analyzer over `features.feature_report` (one streaming pass over the corpus) and
`browser.feature_browser_html`. For the chosen features (`features`, else the `top_n` picked by
`selection`) it writes:

- `feature_browser.html`: one self-contained file (no network) with search by token and by
  feature id, per-token highlighted top contexts, quantile samples, activation histograms,
  logit effects and co-firing features;
- <run>/data/sae_features/features.json: the same data, for your own tools;
- tables `features` (one row per chosen feature) and `latent_density` (every latent);
- figures: the feature-density histogram and activation-histogram cards of the first features.

The SAE is chosen as in `sae_eval` (`sae`, else this run's sae_train SAE, else one trained here).
Check: the top activation of the first features, recomputed from a fresh forward pass of that
text alone through the SAE, equals what the batched pass recorded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pandas as pd
import torch

from interpsuite.analyzer import Analyzer, RunContext
from interpsuite.errors import ConfigError
from interpsuite.models import ModelInfo
from interpsuite.results import Result

#: features whose top context is recomputed for the agreement check
RECOMPUTED = 5


@dataclass
class SAEFeaturesConfig:
    sae: str | None = None  # SAE folder (interpsuite or SAELens); null = this run's sae_train SAE, else train one
    hook: str | None = None  # null = the SAE's own hook point
    allow_other_hook: bool = False
    corpus: str = "inputs"  # inputs | python_docs | files: the text the features are browsed on
    paths: list[str] = field(default_factory=list)
    max_chars: int = 2000
    held_out: float = 0.1  # the split sae_train uses (for texts=held_out)
    texts: str = "all"  # all | held_out
    max_texts: int | None = None
    max_tokens: int | None = None  # stop the pass after this many tokens
    max_length: int | None = 512
    features: list[int] | None = None  # latent ids to browse; null = top_n by selection
    top_n: int = 50
    selection: str = "active"  # active (most frequent) | max (largest activation) | random (seeded)
    n_contexts: int = 20  # top activating tokens per feature
    context_before: int = 12  # tokens of context shown before the activating token
    context_after: int = 4
    n_quantiles: int = 5  # equal-width activation intervals sampled (sae_vis style)
    samples_per_quantile: int = 3
    histogram_bins: int = 40
    n_logit_tokens: int = 10  # top and bottom tokens of the decoder direction through the unembedding
    n_cofiring: int = 10
    cards: int = 8  # features drawn in the activation-histogram figure
    html: bool = True  # write feature_browser.html


class SAEFeatures(Analyzer):
    name = "sae_features"
    family = "sae"
    description = "SAE feature browser: top contexts, quantile samples, histograms, logit effects, co-firing (HTML)"
    Config = SAEFeaturesConfig

    def validate(self, info: ModelInfo, cfg: SAEFeaturesConfig) -> SAEFeaturesConfig:
        from .features import SELECTIONS
        from .files import read_sae_config
        from .sources import check_source_options

        what = self.name
        check_source_options(info, cfg, what)
        if cfg.selection not in SELECTIONS:
            raise ConfigError(f"{what}.selection: {cfg.selection!r} is unknown; choose one of {', '.join(SELECTIONS)}")
        for name in ("top_n", "n_contexts", "n_quantiles", "histogram_bins"):
            if getattr(cfg, name) < 1:
                raise ConfigError(f"{what}.{name} must be >= 1, got {getattr(cfg, name)}")
        for name in (
            "context_before",
            "context_after",
            "samples_per_quantile",
            "n_logit_tokens",
            "n_cofiring",
            "cards",
        ):
            if getattr(cfg, name) < 0:
                raise ConfigError(f"{what}.{name} must be >= 0, got {getattr(cfg, name)}")
        if cfg.max_tokens is not None and cfg.max_tokens < 1:
            raise ConfigError(f"{what}.max_tokens must be >= 1 or null, got {cfg.max_tokens}")
        if cfg.sae is not None:
            width = read_sae_config(cfg.sae).width
            bad = [f for f in cfg.features or [] if not 0 <= f < width]
            if bad:
                raise ConfigError(
                    f"{what}.features: {bad[0]} is not a latent of this SAE (width {width}: 0..{width - 1})"
                )
        if cfg.features is not None and not cfg.features:
            raise ConfigError(f"{what}.features is empty; give latent ids, or null for the top_n by selection")
        return cfg

    def estimate(self, info: ModelInfo, cfg: SAEFeaturesConfig, workload):
        """The SAE (as sae_eval finds it), one capturing pass with the SAE encoding every token (up to
        max_tokens), the features' decoder directions through the unembedding, the browser page."""
        from interpsuite.estimate_analyzers import sae_eval_cost

        from .sources import estimated_source

        cost, sae, hook, lengths = estimated_source(info, cfg, workload, self.name)
        if cfg.max_tokens is not None:
            kept, total = [], 0
            for n in lengths:
                if total >= cfg.max_tokens:
                    break
                kept.append(n)
                total += n
            lengths = kept
        cost = cost + sae_eval_cost(workload, hook, lengths, sae.d_in, sae.width, downstream=False)
        shown = len(cfg.features) if cfg.features is not None else cfg.top_n
        cost = cost + workload.macs(shown * sae.d_in * info.vocab_size)  # decoder directions through W_U
        page = shown * cfg.n_contexts * (cfg.context_before + cfg.context_after + 1) * 40 if cfg.html else 0
        return cost + workload.disk(page + 200 * shown) + workload.figures(2, 1 + cfg.cards)

    def run(self, ctx: RunContext) -> Result:
        from .browser import feature_browser_html
        from .feature_plots import plot_feature_cards, plot_feature_density
        from .features import feature_report
        from .sources import sae_and_texts

        cfg: SAEFeaturesConfig = self.cfg
        model = ctx.model
        choice, texts = sae_and_texts(ctx, cfg, self.name)
        max_length = cfg.max_length or ctx.max_length
        report = feature_report(
            model, choice.sae, texts, choice.hook, features=cfg.features, top_n=cfg.top_n,
            n_contexts=cfg.n_contexts, context_window=(cfg.context_before, cfg.context_after),
            n_quantiles=cfg.n_quantiles, samples_per_quantile=cfg.samples_per_quantile,
            histogram_bins=cfg.histogram_bins, n_logit_tokens=cfg.n_logit_tokens, n_cofiring=cfg.n_cofiring,
            batch_size=ctx.batch_size, max_length=max_length, max_tokens=cfg.max_tokens,
            selection=cfg.selection, seed=ctx.seed, progress=ctx.progress,
        )  # fmt: skip
        result = Result()
        payload = report.to_json()
        data_dir = ctx.data_dir(self.name)
        (data_dir / "features.json").write_text(json.dumps(payload, separators=(",", ":")), encoding="utf-8")
        title = f"SAE features: {model.info.name} {choice.hook} (width {report.width})"
        if cfg.html:
            result.artifacts["feature_browser.html"] = feature_browser_html(payload, title)
        result.tables["features"] = report.summary_table()
        result.tables["latent_density"] = pd.DataFrame(
            {
                "latent": range(report.width),
                "density": report.density,
                "max_activation": report.max_activation,
                "mean_active": report.mean_active,
            }
        )
        result.add_figure("feature_density", plot_feature_density, report.density, ctx.style, title)
        cards = report.cards(limit=cfg.cards)
        if cards:
            result.add_figure("feature_cards", plot_feature_cards, cards, ctx.style, title)
        alive = [f for f in report.features if not report.entries[f].dead]
        result.metrics.update(
            {
                "n_tokens": float(report.n_tokens),
                "n_texts": float(report.n_texts),
                "features_shown": float(len(report.features)),
                "dead_fraction": float(report.n_dead / report.width),
                "mean_density": float(report.density.mean()),
                "median_density_alive": float(pd.Series(report.density[report.density > 0]).median())
                if report.n_dead < report.width
                else 0.0,
            }
        )
        if alive:
            error = top_activation_error(model, choice, texts, report, alive[:RECOMPUTED], max_length)
            result.add_check("top_activation_recompute_rel_error", error, 1e-4)
        result.add_check("density_at_most_1", float(report.density.max(initial=0.0)), 1.0)
        result.summary = {
            "sae": choice.source,
            "hook": choice.hook,
            "width": report.width,
            "features": report.features,
            "selection": "explicit" if cfg.features is not None else cfg.selection,
            "data": str((data_dir / "features.json").resolve()),
            "notes": report.notes,
        }
        return result


def top_activation_error(model, choice, texts, report, features, max_length) -> float:
    """Largest relative difference between each feature's recorded top activation and the same
    token's activation recomputed from a forward pass of its text alone (no batch padding)."""
    worst = 0.0
    with torch.no_grad():
        for feature in features:
            top = report.entries[feature].top_contexts[0]
            batch = model.tokenize([texts[top.text_id]], max_length)
            x = model.forward(batch, capture=[choice.hook]).cache[choice.hook][0, top.position]
            value = float(choice.sae.encode(x[None].to(choice.sae.W_dec.dtype))[0, feature])
            worst = max(worst, abs(value - top.activation) / max(abs(top.activation), 1e-6))
    return worst


ANALYZERS = [SAEFeatures]
