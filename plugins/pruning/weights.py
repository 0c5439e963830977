"""The linear maps of every block, read as [out, in], and their statistics (issue 15, weight analysis).

Why one orientation: `nn.Linear` stores [out, in] and GPT-2's `Conv1D` stores [in, out]. Statistics
that depend on the orientation (input-feature outliers are column norms, rows are Wanda's comparison
group) must mean the same on every architecture, so `weight_matrices` hands out views transposed to
[out, in]. Pruning scores and masks are keyed by parameter name and keep the *parameter's* layout
(`calibration.py`); `LinearModule.transposed` says which layout a parameter has.

Fused projections (GPT-2 `c_attn`, GPT-NeoX `query_key_value`) are reported as ONE matrix of kind
"attn.qkv", not split into q, k and v: one row per parameter keeps every table joinable with the
scores and pruning plans keyed by parameter name, and NeoX interleaves q/k/v per head, so a split
would be an architecture-specific reshuffle. Ungated MLPs (GPT-2, BERT, NeoX) have "mlp.up" (the
d_model -> d_mlp projection) and "mlp.down"; gated ones (Llama family) also "mlp.gate".

Cost: everything but the SVD is a few passes over each matrix; the SVD is `torch.linalg.svdvals` on
CPU in float32 (float64 on request), the only superlinear step. Measured on random matrices of SmolLM2's
shapes (30 layers x 7 matrices), one shared core: ~28 s with the spectrum
(float64: ~34 s); without it a 1536 x 576 matrix takes ~0.18 s.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from torch import nn

from interpsuite.errors import ConfigError

#: every kind `weight_matrices` can report, in table order
KINDS: tuple[str, ...] = ("attn.q", "attn.k", "attn.v", "attn.qkv", "attn.o", "mlp.gate", "mlp.up", "mlp.down")
#: child names of the attention module -> kind (projections other than the output projection)
ATTENTION_CHILDREN = {
    "q_proj": "attn.q",
    "query": "attn.q",
    "k_proj": "attn.k",
    "key": "attn.k",
    "v_proj": "attn.v",
    "value": "attn.v",
    "c_attn": "attn.qkv",
    "query_key_value": "attn.qkv",
    "qkv_proj": "attn.qkv",
}
#: |w| quantile levels reported per matrix
QUANTILE_LEVELS: tuple[float, ...] = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)


def is_linear(module: nn.Module) -> bool:
    """nn.Linear or transformers' Conv1D (GPT-2), the two layouts this family reads."""
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


@dataclass(frozen=True)
class LinearModule:
    """One linear map of one block: where it sits, its parameter's name, and the module itself."""

    layer: int
    kind: str
    param: str
    module: nn.Module

    @property
    def transposed(self) -> bool:
        """True where the parameter is stored [in, out] (GPT-2 Conv1D)."""
        return not isinstance(self.module, nn.Linear)

    @property
    def parameter(self) -> torch.Tensor:
        return self.module.weight

    @property
    def weight(self) -> torch.Tensor:
        """The weight as [out, in] (a view of the parameter, never a copy)."""
        weight = self.module.weight
        return weight.t() if self.transposed else weight

    @property
    def in_features(self) -> int:
        return int(self.module.weight.shape[0 if self.transposed else 1])

    @property
    def out_features(self) -> int:
        return int(self.module.weight.shape[1 if self.transposed else 0])


class WeightMatrix(NamedTuple):
    """(layer, kind, parameter name, weight as [out, in]): what `weight_matrices` yields."""

    layer: int
    kind: str
    param: str
    weight: torch.Tensor


def _block_modules(adapter, layer: int) -> list[tuple[str, nn.Module]]:
    """(kind, module) of one block in table order, found through the adapter's accessors."""
    out_proj = adapter.attention_output_projection(layer)
    attention = []
    for child_name, child in adapter.attention_module(layer).named_children():
        if is_linear(child) and child is not out_proj:
            attention.append((ATTENTION_CHILDREN.get(child_name, f"attn.{child_name}"), child))
    attention.sort(key=lambda pair: KINDS.index(pair[0]) if pair[0] in KINDS else len(KINDS))
    entries = [*attention, ("attn.o", out_proj)]
    up = adapter.mlp_up_projection(layer)
    if up is not None:
        entries += [("mlp.gate", adapter.mlp_input_projection(layer)), ("mlp.up", up)]
    else:
        entries.append(("mlp.up", adapter.mlp_input_projection(layer)))
    entries.append(("mlp.down", adapter.mlp_output_projection(layer)))
    return [(kind, module) for kind, module in entries if is_linear(module)]


def linear_modules(
    model, layers: Sequence[int] | None = None, kinds: Sequence[str] | None = None
) -> list[LinearModule]:
    """Every linear map of the chosen blocks, ordered by layer then kind (`KINDS` order).

    `kinds` may also hold parameter names (`model.layers.0.mlp.down_proj.weight`); a kind or name
    that matches nothing on this model is a ConfigError listing what exists.
    """
    n_layers = model.info.n_layers
    chosen = range(n_layers) if layers is None else layers
    names = {id(p): n for n, p in model.hf_model.named_parameters()}
    found: list[LinearModule] = []
    for layer in chosen:
        if not 0 <= layer < n_layers:
            raise ConfigError(f"layer {layer} out of range; {model.info.name} has layers 0..{n_layers - 1}")
        for kind, module in _block_modules(model.adapter, layer):
            param = names.get(id(module.weight))
            if param is None:  # a weight shared with nothing we can name: skip rather than guess
                continue
            found.append(LinearModule(layer, kind, param, module))
    if kinds is None:
        return found
    wanted = set(kinds)
    unknown = sorted(wanted - {m.kind for m in found} - {m.param for m in found})
    if unknown:
        present = sorted({m.kind for m in found}, key=lambda k: KINDS.index(k) if k in KINDS else len(KINDS))
        raise ConfigError(
            f"modules {unknown} not found on {model.info.name}; its modules are {', '.join(present)} "
            f"(or full parameter names)"
        )
    return [m for m in found if m.kind in wanted or m.param in wanted]


def weight_matrices(
    model, layers: Sequence[int] | None = None, kinds: Sequence[str] | None = None
) -> list[WeightMatrix]:
    """Ordered (layer, kind, parameter name, weight as [out, in]) of every block's linear maps."""
    return [WeightMatrix(m.layer, m.kind, m.param, m.weight) for m in linear_modules(model, layers, kinds)]


# --- statistics of one matrix --------------------------------------------------------------------------


def sorted_quantiles(sorted_values: torch.Tensor, levels: Sequence[float]) -> list[float]:
    """Linear-interpolation quantiles (torch.quantile's default) of an already sorted 1-d tensor.

    Sorting once serves every level, the fractions below each tolerance (searchsorted) and the
    histogram; torch.quantile also refuses inputs above 16M elements (a 4096 x 14336 MLP has 58M).
    """
    n = sorted_values.numel()
    result = []
    for level in levels:
        position = level * (n - 1)
        low = math.floor(position)
        high = min(low + 1, n - 1)
        a, b = float(sorted_values[low]), float(sorted_values[high])
        result.append(a + (b - a) * (position - low))
    return result


def power_iteration_norm(weight: torch.Tensor, iterations: int = 500, seed: int = 0) -> float:
    """The spectral norm by power iteration on the smaller Gram matrix, in float64.

    An estimate independent of the SVD, used only to check it: the Rayleigh quotient converges
    from below, at a rate set by the gap between the two largest singular values.
    """
    w = weight.detach().to("cpu", torch.float64)
    gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
    generator = torch.Generator().manual_seed(seed)
    vector = torch.randn(gram.shape[0], generator=generator, dtype=torch.float64)
    for _ in range(iterations):
        product = gram @ vector
        norm = product.norm()
        if norm == 0:
            return 0.0
        vector = product / norm
    return float(torch.sqrt(torch.clamp(vector @ gram @ vector, min=0.0)))


@dataclass
class MatrixStats:
    """Everything `analyze_weights` reports about one matrix (see `matrix_stats`)."""

    out_features: int
    in_features: int
    numel: int
    mean: float
    std: float
    abs_mean: float
    abs_min: float
    abs_max: float
    n_zero: int
    quantiles: list[float]
    frac_below: list[float]
    frobenius_norm: float
    outlier_weights: int
    outlier_features: list[int]
    max_feature_ratio: float
    histogram: np.ndarray
    singular_values: torch.Tensor | None = None
    spectral_norm: float = math.nan
    effective_rank: float = math.nan
    stable_rank: float = math.nan
    sv_sq_rel_error: float = math.nan


def effective_rank(singular_values: torch.Tensor) -> float:
    """Roy & Vetterli (2007): exp of the Shannon entropy of the singular values normalised to sum 1.

    Between 1 (one direction carries everything) and the rank (all singular values equal); 0 for a
    zero matrix."""
    total = singular_values.sum()
    if total <= 0:
        return 0.0
    p = singular_values / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def matrix_stats(
    weight: torch.Tensor,
    tolerances: Sequence[float] = (1e-3, 1e-2),
    outlier_sigma: float = 6.0,
    feature_outlier_ratio: float = 5.0,
    hist_edges: np.ndarray | None = None,
    spectrum: bool = True,
    svd_dtype: torch.dtype = torch.float32,
    quantile_levels: Sequence[float] = QUANTILE_LEVELS,
) -> MatrixStats:
    """Statistics of one [out, in] matrix (moments and norms in float64, the SVD in `svd_dtype`).

    - outlier weights: |w - mean| > outlier_sigma * std;
    - outlier input features: columns whose L2 norm exceeds feature_outlier_ratio x the median
      column norm (the input dimensions LLM.int8 and Wanda are about);
    - histogram: counts of log10|w| over `hist_edges` (values outside are clamped into the end bins,
      exact zeros are left out and counted in `n_zero`, so counts + n_zero == numel).
    """
    w = weight.detach().to("cpu", torch.float32)
    w64 = w.to(torch.float64)
    out_features, in_features = w.shape
    absolute = w.abs().flatten()
    ordered = torch.sort(absolute).values
    numel = ordered.numel()
    mean = float(w64.mean())
    std = float(w64.std(correction=0))
    frobenius = float(torch.linalg.vector_norm(w64))
    n_zero = int(torch.searchsorted(ordered, ordered.new_tensor([0.0]), side="right"))
    frac_below = [
        int(torch.searchsorted(ordered, ordered.new_tensor([float(t)]), side="left")) / numel for t in tolerances
    ]
    outliers = int(((w64 - mean).abs() > outlier_sigma * std).sum()) if std > 0 else 0
    columns = torch.linalg.vector_norm(w64, dim=0)
    median = float(columns.median())
    if median > 0:
        ratio = columns / median
        outlier_features = torch.nonzero(ratio > feature_outlier_ratio).flatten().tolist()
        max_ratio = float(ratio.max())
    else:
        outlier_features, max_ratio = [], math.nan
    edges = default_edges() if hist_edges is None else hist_edges
    nonzero = ordered[n_zero:]
    if nonzero.numel():
        logs = torch.log10(nonzero.to(torch.float64)).clamp(float(edges[0]), float(edges[-1]))
        histogram = np.histogram(logs.numpy(), bins=edges)[0].astype(np.int64)
    else:
        histogram = np.zeros(len(edges) - 1, dtype=np.int64)
    stats = MatrixStats(
        out_features=int(out_features),
        in_features=int(in_features),
        numel=numel,
        mean=mean,
        std=std,
        abs_mean=float(absolute.to(torch.float64).mean()),
        abs_min=float(ordered[0]),
        abs_max=float(ordered[-1]),
        n_zero=n_zero,
        quantiles=sorted_quantiles(ordered, quantile_levels),
        frac_below=frac_below,
        frobenius_norm=frobenius,
        outlier_weights=outliers,
        outlier_features=outlier_features,
        max_feature_ratio=max_ratio,
        histogram=histogram,
    )
    if spectrum:
        values = torch.linalg.svdvals(w.to(svd_dtype)).to(torch.float64)
        stats.singular_values = values
        top = float(values[0]) if values.numel() else 0.0
        stats.spectral_norm = top
        stats.effective_rank = effective_rank(values)
        stats.stable_rank = frobenius**2 / top**2 if top > 0 else 0.0
        squared = frobenius**2
        stats.sv_sq_rel_error = abs(squared - float((values**2).sum())) / squared if squared > 0 else 0.0
    return stats


def default_edges(bins: int = 50, log10_range: tuple[float, float] = (-6.0, 1.0)) -> np.ndarray:
    """Histogram edges of log10|w|, the same for every matrix so that histograms add up and compare."""
    low, high = log10_range
    return np.linspace(low, high, bins + 1)


# --- the whole model -----------------------------------------------------------------------------------


@dataclass
class WeightAnalysis:
    """Per-matrix table, singular-value spectra and log-magnitude histograms of a model's blocks.

    `modules`: one row per matrix (layer, kind, param, shape, moments, |w| quantiles, fractions below
    each tolerance, norms, ranks, outliers). `spectra`: the top singular values of each matrix (and
    each divided by the largest). `histograms`: counts of log10|w| per bin per matrix (`hist_edges`).
    """

    modules: pd.DataFrame
    spectra: pd.DataFrame
    histograms: pd.DataFrame
    hist_edges: np.ndarray
    tolerances: list[float]
    quantile_levels: list[float] = field(default_factory=lambda: list(QUANTILE_LEVELS))
    #: which columns hold |w| quantiles and fractions below the tolerances (in level / tolerance order)
    quantile_columns: list[str] = field(default_factory=list)
    tolerance_columns: list[str] = field(default_factory=list)
    outlier_features: dict[str, list[int]] = field(default_factory=dict)

    def checks(self) -> dict[str, tuple[float, float, str]]:
        """name -> (value, threshold, mode) of every property the numbers must have.

        - frobenius_equals_sv_norm: max over matrices of | ||W||_F^2 - sum s^2 | / ||W||_F^2 (<= 1e-5);
        - spectral_norm_vs_power_iteration: max relative gap between the SVD's largest singular value
          and an independent power iteration, on the matrices it was run on (<= 1e-3);
        - quantiles_monotone: violations of min|w| <= q_0.01 <= ... <= q_0.99 <= max|w| (== 0);
        - histogram_counts_total: max | sum(bin counts) + zeros - numel | (== 0);
        - rank_bounds: nonzero matrices whose effective or stable rank lies outside [1, min(out, in)] (== 0).
        """
        table = self.modules
        checks: dict[str, tuple[float, float, str]] = {}
        quantiles = table[self.quantile_columns].to_numpy()
        bounded = np.column_stack([table["abs_min"].to_numpy(), quantiles, table["abs_max"].to_numpy()])
        checks["quantiles_monotone"] = (float((np.diff(bounded, axis=1) < 0).sum()), 0.0, "max")
        totals = self.histograms.groupby("param", sort=False)["count"].sum()
        expected = table.set_index("param")["numel"] - table.set_index("param")["n_zero"]
        checks["histogram_counts_total"] = (float((totals.reindex(expected.index) - expected).abs().max()), 0.0, "max")
        if "spectral_norm" in table and table["spectral_norm"].notna().any():
            checks["frobenius_equals_sv_norm"] = (float(table["sv_sq_rel_error"].max()), 1e-5, "max")
            checked = table.dropna(subset=["spectral_norm_power"])
            if len(checked):
                gap = (checked["spectral_norm"] - checked["spectral_norm_power"]).abs() / checked["spectral_norm"]
                checks["spectral_norm_vs_power_iteration"] = (float(gap.max()), 1e-3, "max")
            nonzero = table[table["spectral_norm"] > 0]  # a zero (fully pruned) matrix has rank 0
            limit = np.minimum(nonzero["out_features"], nonzero["in_features"]) * (1 + 1e-5)
            bad = 0
            for column in ("effective_rank", "stable_rank"):
                values = nonzero[column]
                bad += int(((values < 1 - 1e-5) | (values > limit)).sum())
            checks["rank_bounds"] = (float(bad), 0.0, "max")
        return checks


def analyze_weights(
    model,
    tolerances: Sequence[float] = (1e-3, 1e-2),
    bins: int = 50,
    spectrum: bool = True,
    outlier_sigma: float = 6.0,
    *,
    layers: Sequence[int] | None = None,
    kinds: Sequence[str] | None = None,
    feature_outlier_ratio: float = 5.0,
    log10_range: tuple[float, float] = (-6.0, 1.0),
    top_singular_values: int = 32,
    power_checks: int = 8,
    svd_dtype: torch.dtype = torch.float32,
    progress: Callable[[Iterable, str, int], Iterable] | None = None,
) -> WeightAnalysis:
    """Statistics of every linear map in the chosen blocks (see `matrix_stats`, `WeightAnalysis`).

    `power_checks`: how many matrices (spread evenly over the list) also get an independent
    power-iteration spectral norm, for the `spectral_norm_vs_power_iteration` check (0: none).
    """
    check_options(tolerances, bins, outlier_sigma, feature_outlier_ratio, log10_range, top_singular_values)
    matrices = weight_matrices(model, layers, kinds)
    edges = default_edges(bins, log10_range)
    tolerances = [float(t) for t in tolerances]
    quantile_columns = [f"abs_q{level:g}" for level in QUANTILE_LEVELS]
    tolerance_columns = [f"frac_below_{t:g}" for t in tolerances]
    checked = set()
    if spectrum and power_checks > 0 and matrices:
        checked = {int(i) for i in np.linspace(0, len(matrices) - 1, min(power_checks, len(matrices)))}
    rows, spectra, histograms, outlier_features = [], [], [], {}
    iterable = progress(matrices, "weight matrices", len(matrices)) if progress else matrices
    for index, (layer, kind, param, weight) in enumerate(iterable):
        stats = matrix_stats(
            weight, tolerances, outlier_sigma, feature_outlier_ratio, edges, spectrum, svd_dtype, QUANTILE_LEVELS
        )
        row = {
            "layer": layer,
            "kind": kind,
            "param": param,
            "out_features": stats.out_features,
            "in_features": stats.in_features,
            "numel": stats.numel,
            "mean": stats.mean,
            "std": stats.std,
            "abs_mean": stats.abs_mean,
            "abs_min": stats.abs_min,
            "abs_max": stats.abs_max,
            "n_zero": stats.n_zero,
            "frac_zero": stats.n_zero / stats.numel,
            **dict(zip(quantile_columns, stats.quantiles, strict=True)),
            **dict(zip(tolerance_columns, stats.frac_below, strict=True)),
            "frobenius_norm": stats.frobenius_norm,
            "outlier_weights": stats.outlier_weights,
            "outlier_weight_frac": stats.outlier_weights / stats.numel,
            "outlier_features": len(stats.outlier_features),
            "max_feature_ratio": stats.max_feature_ratio,
        }
        if spectrum:
            values = stats.singular_values
            row.update(
                spectral_norm=stats.spectral_norm,
                spectral_norm_power=power_iteration_norm(weight) if index in checked else math.nan,
                effective_rank=stats.effective_rank,
                effective_rank_ratio=stats.effective_rank / min(stats.out_features, stats.in_features),
                stable_rank=stats.stable_rank,
                sv_sq_rel_error=stats.sv_sq_rel_error,
            )
            top = values[:top_singular_values]
            scale = float(values[0]) if float(values[0]) > 0 else 1.0
            for rank, value in enumerate(top.tolist()):
                spectra.append({"layer": layer, "kind": kind, "param": param, "index": rank,
                                "singular_value": value, "normalised": value / scale})  # fmt: skip
        rows.append(row)
        outlier_features[param] = stats.outlier_features
        for b, count in enumerate(stats.histogram.tolist()):
            low, high = float(edges[b]), float(edges[b + 1])
            histograms.append(
                {"layer": layer, "kind": kind, "param": param, "bin": b, "log10_low": low, "log10_high": high,
                 "count": count}
            )  # fmt: skip
    spectra_columns = ["layer", "kind", "param", "index", "singular_value", "normalised"]
    hist_columns = ["layer", "kind", "param", "bin", "log10_low", "log10_high", "count"]
    return WeightAnalysis(
        modules=pd.DataFrame(rows),
        spectra=pd.DataFrame(spectra, columns=spectra_columns),
        histograms=pd.DataFrame(histograms, columns=hist_columns),
        hist_edges=edges,
        tolerances=tolerances,
        quantile_columns=quantile_columns,
        tolerance_columns=tolerance_columns,
        outlier_features=outlier_features,
    )


def check_options(
    tolerances: Sequence[float],
    bins: int,
    outlier_sigma: float,
    feature_outlier_ratio: float,
    log10_range: Sequence[float],
    top_singular_values: int,
    what: str = "analyze_weights",
) -> None:
    """One-line ConfigErrors for options that cannot work, before any matrix is read."""
    if not tolerances:
        raise ConfigError(f"{what}.tolerances is empty; give at least one positive tolerance such as 1e-3")
    bad = [t for t in tolerances if not (isinstance(t, (int, float)) and math.isfinite(t) and t > 0)]
    if bad:
        raise ConfigError(f"{what}.tolerances must be positive finite numbers, got {bad}")
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ConfigError(f"{what}.bins must be a positive integer, got {bins!r}")
    if not (math.isfinite(outlier_sigma) and outlier_sigma > 0):
        raise ConfigError(f"{what}.outlier_sigma must be a positive number of standard deviations, got {outlier_sigma}")
    if not (math.isfinite(feature_outlier_ratio) and feature_outlier_ratio > 1):
        raise ConfigError(
            f"{what}.feature_outlier_ratio must be > 1 (times the median column norm), got {feature_outlier_ratio}"
        )
    if len(log10_range) != 2 or not log10_range[0] < log10_range[1]:
        raise ConfigError(f"{what}.log10_range must be [low, high] with low < high, got {list(log10_range)}")
    if top_singular_values < 1:
        raise ConfigError(f"{what}.top_singular_values must be >= 1, got {top_singular_values}")
