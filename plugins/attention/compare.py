"""attention_comparison: how attention differs across inputs, and across models.

Across inputs (the run's model, the first `max_texts` texts), for every head and every pair
of texts, two Jensen-Shannon divergences (natural log, so each lies in [0, ln 2]):

- `js_prefix`: position by position over the shared prefix. With m = min(n_a, n_b) tokens,
  for each query q < m compare the head's attention row of text a with that of text b
  restricted to the first m keys, and average over the queries. For a causal model a row
  q < m lives entirely on keys <= q, so nothing is cut; for an encoder the rows are cut to
  the first m keys and renormalised. Queries whose row has a single key (q = 0 of a causal
  model) are identical by construction and are left out. It asks: does this head put its
  attention on the same positions whatever the text?
- `js_distance`: between the head's attention-distance distributions. For one text, the
  distribution of attention mass over the offset d = q - k (signed for encoders), binned
  logarithmically (0, 1, 2, 3-4, 5-8, ..., 65+ and their negatives) and averaged over the
  queries. Texts of any lengths compare. It asks: does this head look as far back for
  every text?

A head with small divergences is input-independent (positional: previous-token, first-token
sinks); large ones mark content-dependent heads.

Across models: the mean attention entropy of each layer against its relative depth
layer / (n_layers - 1), for the run's model and every model named in `models` (embedded names
such as tiny_gpt2, smollm2, minilm, or hub names / local paths). Each model sees the same texts
through its own tokenizer. Entropy is reported in nats and normalised by ln(number of keys
the query may attend to), which makes models with different tokenizations comparable. This
is the one analyzer that loads other models: each costs its load time (SmolLM2 about a
second once converted, 20 s the first time) and memory while it runs; they are loaded one at a
time and released afterwards.
"""

from __future__ import annotations

import gc
import itertools
import math
import re
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from interpsuite.analyzer import Analyzer, RunContext
from interpsuite.errors import ConfigError
from interpsuite.figures import FigureStyle, figure_function
from interpsuite.models import ModelInfo, describe_model, load_model
from interpsuite.results import Result

from .rollout import TextPatterns, capture_text_patterns

LN2 = math.log(2.0)
#: the largest |offset| bucket: offsets beyond 2**(MAX_BUCKET-2) share the last bucket
MAX_BUCKET = 8


# --- pure functions -------------------------------------------------------------------------


def js_divergence(p: np.ndarray, q: np.ndarray, axis: int = -1, clip: bool = True) -> np.ndarray:
    """Jensen-Shannon divergence (natural log) between distributions along `axis`.

    Inputs are renormalised along the axis; 0 log 0 = 0. Mathematically in [0, ln 2];
    `clip=False` keeps the rounding (for checking that bound).
    """
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    p = p / np.where((s := p.sum(axis=axis, keepdims=True)) > 0, s, 1.0)
    q = q / np.where((s := q.sum(axis=axis, keepdims=True)) > 0, s, 1.0)
    m = 0.5 * (p + q)
    safe_m = np.where(m > 0, m, 1.0)

    def kl(a: np.ndarray) -> np.ndarray:
        safe_a = np.where(a > 0, a, 1.0)
        return np.where(a > 0, a * np.log(safe_a / safe_m), 0.0).sum(axis=axis)

    value = 0.5 * kl(p) + 0.5 * kl(q)
    return np.clip(value, 0.0, LN2) if clip else value


def offset_bucket(offset: np.ndarray) -> np.ndarray:
    """Signed logarithmic buckets of an offset: 0, ±1, ±2, ±(3-4), ±(5-8), ... up to ±MAX_BUCKET."""
    offset = np.asarray(offset)
    size = np.abs(offset)
    bucket = np.where(size <= 1, size, np.ceil(np.log2(np.maximum(size, 1))) + 1).astype(int)
    return np.sign(offset) * np.minimum(bucket, MAX_BUCKET)


def distance_distribution(patterns: np.ndarray) -> np.ndarray:
    """[..., q, k] attention -> [..., 2 * MAX_BUCKET + 1] mass per offset bucket (bucket b at
    index b + MAX_BUCKET), averaged over the queries."""
    patterns = np.asarray(patterns, dtype=np.float64)
    n = patterns.shape[-1]
    q, k = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    index = (offset_bucket(q - k) + MAX_BUCKET).ravel()
    flat = patterns.reshape(*patterns.shape[:-2], n * n)
    out = np.zeros((*patterns.shape[:-2], 2 * MAX_BUCKET + 1))
    for bucket in np.unique(index):
        out[..., bucket] = flat[..., index == bucket].sum(axis=-1)
    return out / n


def prefix_js(a: np.ndarray, b: np.ndarray, causal: bool, clip: bool = True) -> np.ndarray:
    """Per-head JS over the shared prefix: a [head, n_a, n_a], b [head, n_b, n_b] -> [head].

    NaN where there is no query with more than one key to compare.
    """
    m = min(a.shape[-1], b.shape[-1])
    first = 1 if causal else 0  # a causal query 0 attends to itself only
    if m - first < 1 or m < 2:
        return np.full(a.shape[0], np.nan)
    rows_a = a[:, first:m, :m]
    rows_b = b[:, first:m, :m]
    return js_divergence(rows_a, rows_b, clip=clip).mean(axis=-1)


def row_entropy(patterns: np.ndarray, causal: bool) -> tuple[np.ndarray, np.ndarray]:
    """Entropy (nats) of each attention row [..., q, k] and the same normalised by ln(support).

    The support of query q is q + 1 keys for a causal model, all n keys for an encoder.
    Normalised entropy is NaN where the support is one key.
    """
    p = np.asarray(patterns, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=-1)
    n = p.shape[-1]
    support = np.arange(1, n + 1) if causal else np.full(n, n)
    log_support = np.log(support.astype(np.float64))
    with np.errstate(divide="ignore", invalid="ignore"):
        normalised = np.where(log_support > 0, entropy / np.where(log_support > 0, log_support, 1.0), np.nan)
    return entropy, normalised


def entropy_profile(captured: list[TextPatterns], info: ModelInfo) -> pd.DataFrame:
    """Mean attention entropy per layer over heads, queries and texts, with relative depth."""
    rows = []
    for index, layer in enumerate(captured[0].layers):
        entropies, normalised, per_head = [], [], []
        for item in captured:
            h, hn = row_entropy(item.patterns[index], info.is_causal)  # [head, q]
            entropies.append(h.ravel())
            normalised.append(hn.ravel())
            per_head.append(hn)
        flat_norm = np.concatenate(normalised)
        head_means = np.nanmean(np.concatenate(per_head, axis=1), axis=1) if np.isfinite(flat_norm).any() else None
        rows.append(
            {
                "model": info.name,
                "layer": layer,
                "n_layers": info.n_layers,
                "relative_depth": layer / (info.n_layers - 1) if info.n_layers > 1 else 0.0,
                "mean_entropy": float(np.concatenate(entropies).mean()),
                "mean_normalised_entropy": float(np.nanmean(flat_norm)) if np.isfinite(flat_norm).any() else np.nan,
                "min_head_normalised_entropy": float(head_means.min()) if head_means is not None else np.nan,
                "max_head_normalised_entropy": float(head_means.max()) if head_means is not None else np.nan,
            }
        )
    return pd.DataFrame(rows)


# --- figures --------------------------------------------------------------------------------------


@figure_function
def plot_js_by_head(by_head: pd.DataFrame, model_name: str, style: FigureStyle):
    """Heatmaps (layer x head) of the mean JS divergence over text pairs, both definitions."""
    fig, axes = style.figure(1, 2, scale=(1.3, 1.0))
    for ax, column, title in zip(
        axes.flat,
        ("js_prefix_mean", "js_distance_mean"),
        ("positions over the shared prefix", "attention-distance distributions"),
        strict=True,
    ):
        grid = by_head.pivot(index="layer", columns="head", values=column)
        image = ax.imshow(grid.to_numpy(dtype=float), cmap=style.cmap, vmin=0.0, vmax=LN2, aspect="auto")
        ax.set_title(f"JS divergence: {title}", fontsize="small")
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        fig.colorbar(image, ax=ax, shrink=0.8, label="nats (max ln 2)")
    fig.suptitle(f"Input dependence of each head's attention: {model_name}")
    return fig


@figure_function
def plot_js_pairs(pairs: pd.DataFrame, style: FigureStyle):
    """Text x text matrix of the JS divergence averaged over heads (prefix definition)."""
    texts = sorted({*pairs["text_a"], *pairs["text_b"]})
    position = {t: i for i, t in enumerate(texts)}
    grid = np.zeros((len(texts), len(texts)))
    for row in pairs.itertuples():
        i, j = position[row.text_a], position[row.text_b]
        grid[i, j] = grid[j, i] = row.js_prefix_mean
    fig, axes = style.figure(1, 1, scale=(0.8, 1.0))
    ax = axes[0, 0]
    image = ax.imshow(grid, cmap=style.cmap, vmin=0.0, aspect="equal")
    ax.set_xticks(range(len(texts)), [str(t) for t in texts])
    ax.set_yticks(range(len(texts)), [str(t) for t in texts])
    ax.set_xlabel("text")
    ax.set_ylabel("text")
    ax.set_title("JS divergence between texts (mean over heads, shared prefix)", fontsize="small")
    fig.colorbar(image, ax=ax, shrink=0.8, label="nats")
    return fig


@figure_function
def plot_entropy_by_depth(profiles: pd.DataFrame, style: FigureStyle):
    """Mean attention entropy per layer against relative depth, one line per model."""
    fig, axes = style.figure(1, 2, scale=(1.3, 1.0))
    for model, frame in profiles.groupby("model", sort=False):
        frame = frame.sort_values("relative_depth")
        axes[0, 0].plot(
            frame["relative_depth"], frame["mean_normalised_entropy"], marker="o", markersize=3, label=model
        )
        axes[0, 1].plot(frame["relative_depth"], frame["mean_entropy"], marker="o", markersize=3, label=model)
    axes[0, 0].set_title("normalised entropy (H / ln #keys)")
    axes[0, 0].set_ylim(0, 1.05)
    axes[0, 1].set_title("entropy (nats)")
    for ax in axes.flat:
        ax.set_xlabel("relative depth  layer / (n_layers - 1)")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize="small")
    fig.suptitle("Attention entropy by relative depth")
    return fig


# --- the analyzer -----------------------------------------------------------------------------------


@dataclass
class AttentionComparisonConfig:
    max_texts: int = 8
    #: other models for the entropy-by-depth comparison (each is loaded: it costs its load time)
    models: list[str] = field(default_factory=list)


class AttentionComparison(Analyzer):
    name = "attention_comparison"
    family = "attention"
    description = "per-head JS divergence of attention across inputs; entropy by relative depth across models"
    Config = AttentionComparisonConfig

    def validate(self, info: ModelInfo, cfg: AttentionComparisonConfig) -> None:
        if cfg.max_texts < 1:
            raise ConfigError(f"attention_comparison.max_texts must be >= 1, got {cfg.max_texts}")
        for name in cfg.models:
            if name != info.name:
                describe_model(name)  # raises ModelNotFoundError (a ConfigError) before weights load

    def estimate(self, info: ModelInfo, cfg: AttentionComparisonConfig, workload):
        """Patterns of every layer for the first max_texts texts (and as much for every other model,
        plus loading it); Jensen-Shannon divergences between every pair of texts."""
        names = [f"blocks.{layer}.attn.pattern" for layer in range(info.n_layers)]
        lengths = workload.first(cfg.max_texts)
        cost = workload.forward_batches(lengths, logits=1, capture=names)
        n = max(lengths, default=0)
        pairs = len(lengths) * (len(lengths) - 1) // 2
        cost = cost + workload.macs(8 * pairs * info.n_layers * info.n_heads * n * n)
        others = [m for m in dict.fromkeys(cfg.models) if m != info.name]
        if others:
            cost = cost.note(f"also loads and runs {', '.join(others)}: their time is not included")
        return cost + workload.figures(3, 5) + workload.table(len(lengths) * info.n_layers * info.n_heads * 8, 5)

    def run(self, ctx: RunContext) -> Result:
        cfg: AttentionComparisonConfig = self.cfg
        info = ctx.model.info
        texts = ctx.inputs.texts[: cfg.max_texts]
        captured = capture_text_patterns(ctx.model, texts, max_length=ctx.max_length, batch_size=ctx.batch_size)
        result = Result()
        notes: list[str] = []
        self._across_inputs(captured, info, ctx, result, notes)
        self._across_models(captured, info, ctx, cfg, result, notes)
        result.summary["notes"] = notes
        return result

    # --- across inputs ---------------------------------------------------------------------------
    def _across_inputs(self, captured, info, ctx, result: Result, notes: list[str]) -> None:
        layers, n_heads = captured[0].layers, info.n_heads
        distance = [distance_distribution(item.patterns) for item in captured]  # [layer, head, bucket]
        # JS(p, p) = 0 on the real patterns (every row of every head of every text)
        self_js = max(float(np.abs(js_divergence(c.patterns, c.patterns, clip=False)).max()) for c in captured)
        result.add_check("js_self_divergence_max", self_js, 1e-12)
        pairs = list(itertools.combinations(range(len(captured)), 2))
        prefix = np.full((len(pairs), len(layers), n_heads), np.nan)
        dist = np.full((len(pairs), len(layers), n_heads), np.nan)
        symmetry = 0.0
        for index, (i, j) in enumerate(pairs):
            a, b = captured[i], captured[j]
            for li in range(len(layers)):
                prefix[index, li] = prefix_js(a.patterns[li], b.patterns[li], info.is_causal, clip=False)
            dist[index] = js_divergence(distance[i], distance[j], clip=False)
            swapped = js_divergence(distance[j], distance[i], clip=False)
            symmetry = max(symmetry, float(np.abs(swapped - dist[index]).max()))
        # the bound [0, ln 2] on the unclipped values, then clip away the rounding for reporting
        values = np.concatenate([prefix[np.isfinite(prefix)], dist.ravel()])
        violation = 0.0 if values.size == 0 else max(0.0, -float(values.min()), float(values.max()) - LN2)
        result.add_check("js_range_violation", violation, 1e-12)
        prefix, dist = np.clip(prefix, 0.0, LN2), np.clip(dist, 0.0, LN2)
        if pairs:
            result.add_check("js_symmetry_error", symmetry, 1e-12)
        else:
            notes.append("one text only: no pairs of inputs to compare (add texts for the across-inputs part)")
        pair_rows = [
            {
                "text_a": captured[i].text_id,
                "text_b": captured[j].text_id,
                "shared_positions": min(captured[i].n, captured[j].n),
                "js_prefix_mean": _nanmean(prefix[index]),
                "js_distance_mean": float(dist[index].mean()),
            }
            for index, (i, j) in enumerate(pairs)
        ]
        by_head = pd.DataFrame(
            [
                {
                    "layer": layer,
                    "head": head,
                    "pairs": len(pairs),
                    "js_prefix_mean": _nanmean(prefix[:, li, head]),
                    "js_prefix_max": _nanmax(prefix[:, li, head]),
                    "js_distance_mean": _nanmean(dist[:, li, head]),
                    "js_distance_max": _nanmax(dist[:, li, head]),
                }
                for li, layer in enumerate(layers)
                for head in range(n_heads)
            ]
        )
        result.tables["js_by_head"] = by_head
        result.tables["js_pairs"] = pd.DataFrame(
            pair_rows, columns=["text_a", "text_b", "shared_positions", "js_prefix_mean", "js_distance_mean"]
        )
        result.tables["attention_distance"] = pd.DataFrame(
            [
                {"text": item.text_id, "layer": layer, "head": head, "offset_bucket": b - MAX_BUCKET, "mass": mass}
                for item, d in zip(captured, distance, strict=True)
                for li, layer in enumerate(item.layers)
                for head in range(n_heads)
                for b, mass in enumerate(d[li, head])
                if mass > 0
            ]
        )
        summary: dict = {"texts": len(captured), "pairs": len(pairs)}
        if pairs:
            result.metrics["js_prefix.mean"] = _nanmean(prefix)
            result.metrics["js_distance.mean"] = float(dist.mean())
            ranked = by_head.sort_values("js_distance_mean")
            summary["most_input_independent_heads"] = [
                [int(r.layer), int(r.head), round(float(r.js_distance_mean), 4)] for r in ranked.head(5).itertuples()
            ]
            summary["most_input_dependent_heads"] = [
                [int(r.layer), int(r.head), round(float(r.js_distance_mean), 4)]
                for r in ranked.tail(5).iloc[::-1].itertuples()
            ]
            result.add_figure("js_by_head", plot_js_by_head, by_head, info.name, ctx.style)
            result.add_figure("js_pairs", plot_js_pairs, result.tables["js_pairs"], ctx.style)
        result.summary["across_inputs"] = summary

    # --- across models ---------------------------------------------------------------------------
    def _across_models(self, captured, info, ctx, cfg, result: Result, notes: list[str]) -> None:
        texts = ctx.inputs.texts[: cfg.max_texts]
        profiles = [entropy_profile(captured, info)]
        models = [
            {
                "model": info.name,
                "architecture": info.architecture,
                "n_layers": info.n_layers,
                "n_heads": info.n_heads,
                "load_s": 0.0,
                "tokens": sum(c.n for c in captured),
            }
        ]
        dtype = next(ctx.model.hf_model.parameters()).dtype
        for name in dict.fromkeys(cfg.models):
            if name == info.name:
                continue
            started = time.perf_counter()
            other = load_model(name, device=str(ctx.model.device), dtype=dtype, seed=ctx.seed)
            load_s = time.perf_counter() - started
            try:
                other_captured = capture_text_patterns(
                    other, texts, max_length=ctx.max_length, batch_size=ctx.batch_size
                )
                profiles.append(entropy_profile(other_captured, other.info))
                models.append(
                    {
                        "model": other.info.name,
                        "architecture": other.info.architecture,
                        "n_layers": other.info.n_layers,
                        "n_heads": other.info.n_heads,
                        "load_s": load_s,
                        "tokens": sum(c.n for c in other_captured),
                    }
                )
            finally:
                del other
                gc.collect()
        table = pd.concat(profiles, ignore_index=True)
        result.tables["entropy_profiles"] = table
        result.tables["models"] = pd.DataFrame(models)
        result.add_figure("entropy_by_depth", plot_entropy_by_depth, table, ctx.style)
        for model, frame in table.groupby("model", sort=False):
            value = frame["mean_normalised_entropy"].mean()
            result.metrics[f"entropy.{_metric_name(model)}.mean_normalised"] = (
                float(value) if np.isfinite(value) else 0.0
            )
        result.summary["across_models"] = {
            "models": [m["model"] for m in models],
            "load_s": {m["model"]: round(m["load_s"], 2) for m in models[1:]},
        }
        if len(models) == 1:
            notes.append("no other models given (models=[...]): the entropy profile shows the run's model only")


def _nanmean(values: np.ndarray) -> float:
    finite = np.asarray(values)[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")


def _nanmax(values: np.ndarray) -> float:
    finite = np.asarray(values)[np.isfinite(values)]
    return float(finite.max()) if finite.size else float("nan")


def _metric_name(model: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]+", "_", model).strip("_") or "model"


ANALYZERS = [AttentionComparison]
