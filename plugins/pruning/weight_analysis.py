"""`weight_analysis`: what the weights of every block look like before anything is pruned.

A thin analyzer over `weights.analyze_weights`. Per layer and module (q, k, v or the fused qkv, o,
gate, up, down): the |w| distribution (quantiles, log10 histograms), the fraction near zero at each
tolerance, Frobenius and spectral norms, effective rank (Roy & Vetterli 2007) and stable rank,
outlier weights (beyond `outlier_sigma` standard deviations) and outlier input features (columns
whose norm exceeds `feature_outlier_ratio` x the median), and the input features whose
*activations* over the run's texts are outliers (`activation_outlier_ratio`: one forward pass per
batch; 0 reads weights only).

Tables: `modules` (one row per matrix), `spectra` (top singular values), `histograms` (log10|w|
counts), `activation_outliers` (module, feature, norm, ratio to the module's median). Figures:
layers x modules heatmaps of effective rank (divided by the largest possible rank), of the
fraction below the largest tolerance and of the spectral norm; magnitude histograms per module
kind; singular-value spectra. Checks: ||W||_F^2 == sum of squared singular values, the SVD's
spectral norm against an independent power iteration, quantiles monotone and inside
[min|w|, max|w|], histogram counts adding up to the nonzero weights, ranks inside [1, min(out, in)].
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from interpsuite.analyzer import Analyzer, RunContext, check_layers
from interpsuite.errors import ConfigError
from interpsuite.models import ModelInfo
from interpsuite.results import Result

from .weights import KINDS, check_options

SVD_DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class WeightAnalysisConfig:
    layers: list[int] | None = None  # null = every layer
    modules: list[str] | None = None  # kinds (attn.q, attn.k, attn.v, attn.qkv, attn.o, mlp.gate, mlp.up, mlp.down)
    tolerances: list[float] = field(default_factory=lambda: [1e-3, 1e-2])  # |w| below each counts as near zero
    spectrum: bool = True  # singular values, spectral norm, effective and stable rank
    outlier_sigma: float = 6.0  # outlier weight: |w - mean| > outlier_sigma * std
    feature_outlier_ratio: float = 5.0  # outlier input feature: column norm > ratio x median column norm
    bins: int = 50  # histogram bins of log10|w|
    log10_range: list[float] = field(default_factory=lambda: [-6.0, 1.0])  # histogram range (end bins clamp)
    top_singular_values: int = 32  # per matrix, in the `spectra` table
    power_checks: int = 8  # matrices also measured by power iteration (the spectral-norm check); 0 = none
    svd_dtype: str = "float32"  # float32 | float64
    #: input features whose activation norm over the run's texts exceeds this many times the
    #: module's median are listed (the outlier features of LLM.int8 and Wanda); 0 = no forward pass
    activation_outlier_ratio: float = 6.0


class WeightAnalyzer(Analyzer):
    name = "weight_analysis"
    family = "pruning"
    description = (
        "weight magnitudes, near-zero fractions, norms, spectra, effective rank and outliers per layer x module"
    )
    Config = WeightAnalysisConfig

    def validate(self, info: ModelInfo, cfg: WeightAnalysisConfig) -> WeightAnalysisConfig:
        what = self.name
        layers = list(dict.fromkeys(check_layers(info, cfg.layers, f"{what}.layers")))  # a repeat is one layer
        if cfg.modules is not None:
            if not cfg.modules:
                raise ConfigError(f"{what}.modules is empty; give module kinds such as [attn.o, mlp.down] or null")
            unknown = [m for m in cfg.modules if m not in KINDS and not str(m).endswith(".weight")]
            if unknown:
                raise ConfigError(f"{what}.modules: unknown {unknown}; module kinds are {', '.join(KINDS)}")
        if cfg.svd_dtype not in SVD_DTYPES:
            raise ConfigError(f"{what}.svd_dtype: {cfg.svd_dtype!r} is not one of {', '.join(SVD_DTYPES)}")
        if cfg.power_checks < 0:
            raise ConfigError(f"{what}.power_checks must be >= 0, got {cfg.power_checks}")
        check_options(
            cfg.tolerances, cfg.bins, cfg.outlier_sigma, cfg.feature_outlier_ratio, cfg.log10_range,
            cfg.top_singular_values, what,
        )  # fmt: skip
        return WeightAnalysisConfig(**{**cfg.__dict__, "layers": layers})

    def estimate(self, info: ModelInfo, cfg: WeightAnalysisConfig, workload):
        """Statistics and (with `spectrum`) the singular values of every weight matrix of the chosen
        layers; one pass over the inputs recording every linear input's norm (activation outliers)."""
        from interpsuite.estimate_analyzers import module_shapes, svd_macs

        layers = cfg.layers if cfg.layers is not None else list(range(info.n_layers))
        shapes = module_shapes(info)
        weights = len(layers) * sum(m * n for m, n in shapes)
        arithmetic = 20 * weights  # histograms, tolerances, outliers: a few passes over every weight
        if cfg.spectrum:
            f64 = 2 if cfg.svd_dtype == "float64" else 1
            arithmetic += f64 * len(layers) * sum(svd_macs(m, n) for m, n in shapes)
        cost = workload.macs(arithmetic)
        if cfg.activation_outlier_ratio > 0:
            cost = cost + workload.forward_inputs(logits=1)
        kinds = len(shapes)
        figures = 5 if cfg.spectrum else 2  # heatmaps (3 with spectra), histograms, spectra
        tables = workload.table(len(layers) * kinds * (1 + cfg.bins), 6)
        return cost + workload.figures(figures, figures + kinds) + tables

    def run(self, ctx: RunContext) -> Result:
        from .weight_plots import plot_magnitude_histograms, plot_module_heatmap, plot_spectra
        from .weights import analyze_weights

        cfg: WeightAnalysisConfig = self.cfg
        layers = cfg.layers if cfg.layers is not None else list(range(ctx.model.info.n_layers))
        analysis = analyze_weights(
            ctx.model, cfg.tolerances, cfg.bins, cfg.spectrum, cfg.outlier_sigma, layers=layers,
            kinds=cfg.modules, feature_outlier_ratio=cfg.feature_outlier_ratio,
            log10_range=(cfg.log10_range[0], cfg.log10_range[1]), top_singular_values=cfg.top_singular_values,
            power_checks=cfg.power_checks, svd_dtype=SVD_DTYPES[cfg.svd_dtype], progress=ctx.progress,
        )  # fmt: skip
        table = analysis.modules
        result = Result()
        result.tables["modules"] = table
        result.tables["histograms"] = analysis.histograms
        if cfg.spectrum:
            result.tables["spectra"] = analysis.spectra
        for name, (value, threshold, mode) in analysis.checks().items():
            result.add_check(name, value, threshold, mode)

        kinds = [k for k in KINDS if k in set(table["kind"])]
        kinds += [k for k in dict.fromkeys(table["kind"]) if k not in kinds]
        near_zero = analysis.tolerance_columns[int(np.argmax(analysis.tolerances))]
        heatmaps = [("near_zero", near_zero, f"fraction |w| < {max(analysis.tolerances):g}", "fraction")]
        if cfg.spectrum:
            heatmaps = [
                ("effective_rank", "effective_rank_ratio", "effective rank / min(out, in)", "ratio"),
                *heatmaps,
                ("spectral_norm", "spectral_norm", "spectral norm ||W||_2", "||W||_2"),
            ]
        for figure, column, title, label in heatmaps:
            grid = table.pivot(index="layer", columns="kind", values=column).reindex(index=layers, columns=kinds)
            result.add_figure(figure, plot_module_heatmap, grid.to_numpy(dtype=float), layers, kinds, title, label,
                              ctx.style)  # fmt: skip
        counts = analysis.histograms.groupby(["kind", "bin"])["count"].sum().unstack("bin").reindex(kinds)
        result.add_figure("magnitude_histograms", plot_magnitude_histograms, analysis.hist_edges,
                          counts.to_numpy(dtype=float), kinds, analysis.tolerances, ctx.style)  # fmt: skip
        if cfg.spectrum:
            spectra = np.full((len(kinds), len(layers), cfg.top_singular_values), np.nan)
            rows = {layer: i for i, layer in enumerate(layers)}
            for kind_index, kind in enumerate(kinds):
                part = analysis.spectra[analysis.spectra["kind"] == kind]
                for layer, index, value in zip(part["layer"], part["index"], part["normalised"], strict=True):
                    spectra[kind_index, rows[layer], index] = value
            result.add_figure("spectra", plot_spectra, spectra, layers, kinds, ctx.style)

        result.metrics.update(metrics(analysis, cfg.spectrum))
        if cfg.activation_outlier_ratio > 0:
            outliers = activation_outliers(ctx, table, layers, cfg.activation_outlier_ratio)
            result.tables["activation_outliers"] = outliers
            result.metrics["activation_outlier_features"] = float(len(outliers))
        result.summary = summary(analysis, layers, kinds, cfg.spectrum)
        return result


def activation_outliers(ctx: RunContext, table, layers: list[int], ratio: float):
    """Input features of each module whose L2 norm over the run's tokens is more than `ratio` x
    the module's median (`calibration.input_feature_norms`, one forward pass per batch).

    Why next to the weights: a weight's effect is |w| x its input's size. A few residual
    dimensions carry activations tens of times larger than the rest (Dettmers et al. 2022); they
    are why magnitude pruning removes weights that matter and Wanda does not. Adds the columns
    `act_max_ratio` and `act_outlier_features` to `table` in place."""
    import pandas as pd

    from .calibration import input_feature_norms

    norms = input_feature_norms(ctx.model, ctx.inputs.texts, ctx.batch_size, ctx.max_length,
                                modules=list(table["param"]), layers=layers, progress=ctx.progress)  # fmt: skip
    rows, max_ratio, counts = [], [], []
    for layer, kind, param in zip(table["layer"], table["kind"], table["param"], strict=True):
        norm = norms[param]
        median = float(norm.median())
        relative = norm / median if median > 0 else torch.zeros_like(norm)
        chosen = torch.nonzero(relative > ratio).flatten().tolist()
        max_ratio.append(float(relative.max()) if len(relative) else 0.0)
        counts.append(len(chosen))
        rows += [{"layer": layer, "kind": kind, "param": param, "feature": f, "norm": float(norm[f]),
                  "ratio_to_median": float(relative[f])} for f in chosen]  # fmt: skip
    table["act_max_ratio"] = max_ratio
    table["act_outlier_features"] = counts
    columns = ["layer", "kind", "param", "feature", "norm", "ratio_to_median"]
    return pd.DataFrame(rows, columns=columns)


def metrics(analysis, spectrum: bool) -> dict[str, float]:
    table = analysis.modules
    values = {
        "n_matrices": float(len(table)),
        "n_weights": float(table["numel"].sum()),
        "outlier_weights": float(table["outlier_weights"].sum()),
        "outlier_features": float(table["outlier_features"].sum()),
        "frac_zero": float(table["n_zero"].sum() / table["numel"].sum()),
    }
    for tolerance, column in zip(analysis.tolerances, analysis.tolerance_columns, strict=True):
        # weighted by size: the fraction of all analysed weights below the tolerance
        values[f"frac_below_{tolerance:g}"] = float((table[column] * table["numel"]).sum() / table["numel"].sum())
    if spectrum:
        values["mean_effective_rank_ratio"] = float(table["effective_rank_ratio"].mean())
        values["max_spectral_norm"] = float(table["spectral_norm"].max())
    return values


def summary(analysis, layers: list[int], kinds: list[str], spectrum: bool) -> dict:
    """Small JSON: what was analysed, and the matrices that stand out."""
    table = analysis.modules
    columns = ["layer", "kind", "param"]
    payload: dict = {
        "layers": layers,
        "modules": kinds,
        "fused_qkv": "attn.qkv" in kinds,
        "tolerances": analysis.tolerances,
        "most_outlier_features": table.nlargest(5, "max_feature_ratio")[[*columns, "max_feature_ratio"]].to_dict(
            "records"
        ),
    }
    if spectrum:
        lowest = table.nsmallest(5, "effective_rank_ratio")[[*columns, "effective_rank", "effective_rank_ratio"]]
        payload["lowest_effective_rank"] = lowest.to_dict("records")
    return payload


ANALYZERS = [WeightAnalyzer]
