"""attention_patterns and attention_entropy: what each head looks at, and how spread out it is.

Both read `blocks.{L}.attn.pattern` ([batch, query head, q_pos, k_pos], post-softmax, GQA
expanded) for all chosen layers in one pass per batch. Only real tokens count: padding
queries are dropped, and the checks verify that no real query attends to a padding key.

Conventions shared with `head_classification`:

- "first token" (sink) attention is the weight a query puts on position 0, averaged over
  queries at positions >= 1 (query 0 of a causal model can only attend to itself).
- entropies are in nats, -sum_k p log p over the keys of one query row; the largest
  possible value is log(k_allowed), k_allowed = position + 1 for causal models and the
  text's length for bidirectional encoders.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from interpsuite.analyzer import Analyzer, RunContext, check_heads, check_layers
from interpsuite.errors import ConfigError
from interpsuite.models import ModelInfo
from interpsuite.results import Result

from .plots import (
    plot_entropy_by_position,
    plot_head_patterns,
    plot_layer_head_heatmap,
    plot_pattern_grid,
)

#: Tolerances of the checks (float32 patterns, statistics in float64).
ROW_SUM_TOLERANCE = 1e-5
MASKED_TOLERANCE = 1e-6
ENTROPY_TOLERANCE = 1e-5


def pattern_name(layer: int) -> str:
    return f"blocks.{layer}.attn.pattern"


# --- pattern arithmetic (pure functions; tests call them on hand-built tensors) -------------------
def real_query_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """[batch, 1, q, 1] boolean: the query is a real token."""
    return attention_mask.bool()[:, None, :, None]


def allowed_keys(attention_mask: torch.Tensor, causal: bool) -> torch.Tensor:
    """[batch, 1, q, k] boolean: real query, real key and (causal) key <= query."""
    mask = attention_mask.bool()
    allowed = mask[:, None, :, None] & mask[:, None, None, :]
    if causal:
        n = mask.shape[1]
        allowed = allowed & torch.ones(n, n, dtype=torch.bool, device=mask.device).tril()
    return allowed


def row_entropy(pattern: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of each query row: [..., q, k] -> [..., q], computed in float64."""
    p = pattern.to(torch.float64)
    return -torch.special.xlogy(p, p).sum(-1)


def key_counts(attention_mask: torch.Tensor, causal: bool) -> torch.Tensor:
    """[batch, q] number of keys each query may attend to (its maximum entropy is the log)."""
    mask = attention_mask.bool()
    lengths = mask.sum(1, keepdim=True)
    if causal:
        positions = torch.arange(mask.shape[1], device=mask.device)[None, :] + 1
        return torch.minimum(positions, lengths)
    return lengths.expand_as(mask)


@dataclass
class PatternErrors:
    """The worst violations of what every attention pattern must satisfy."""

    row_sum: float = 0.0  # max |sum_k p - 1| over real queries
    padding: float = 0.0  # max weight a real query puts on a padding key
    above_diagonal: float = 0.0  # max weight above the diagonal (causal models)

    def update(self, pattern: torch.Tensor, attention_mask: torch.Tensor, causal: bool) -> None:
        p = pattern.to(torch.float64)
        real_q = real_query_mask(attention_mask)
        sums = p.sum(-1, keepdim=True)
        self.row_sum = max(self.row_sum, float(((sums - 1).abs() * real_q).amax()))
        pad_keys = ~attention_mask.bool()[:, None, None, :]
        self.padding = max(self.padding, float((p * (real_q & pad_keys)).amax()))
        if causal:
            n = p.shape[-1]
            upper = torch.ones(n, n, dtype=torch.bool, device=p.device).triu(1)
            self.above_diagonal = max(self.above_diagonal, float((p * (real_q & upper)).amax()))

    def add_checks(self, result: Result, causal: bool) -> None:
        result.add_check("pattern_rows_sum_to_one", self.row_sum, ROW_SUM_TOLERANCE)
        result.add_check("no_attention_to_padding", self.padding, MASKED_TOLERANCE)
        if causal:
            result.add_check("causal_zero_above_diagonal", self.above_diagonal, MASKED_TOLERANCE)


def head_summary(pattern: torch.Tensor, attention_mask: torch.Tensor, causal: bool) -> dict[str, torch.Tensor]:
    """Per-head sums over real queries of one layer's pattern [b, h, q, k] (divide by the counts).

    Returns float64 [heads] tensors: entropy, max_weight, distance (attention-weighted
    |query - key|) summed over all real queries (`n_queries`), and first_token,
    previous_token, self summed over real queries at positions >= 1 (`n_queries_after_first`).
    """
    p = pattern.to(torch.float64)
    mask = attention_mask.bool()
    real = mask.to(torch.float64)[:, None, :]  # [b, 1, q]
    later = real.clone()
    later[..., 0] = 0.0
    n = p.shape[-1]
    positions = torch.arange(n, device=p.device, dtype=torch.float64)
    distance = (positions[:, None] - positions[None, :]).abs()
    previous = torch.zeros_like(p[..., 0])
    previous[..., 1:] = p.diagonal(-1, dim1=-2, dim2=-1)
    return {
        "entropy": (row_entropy(p) * real).sum((0, 2)),
        "max_weight": (p.amax(-1) * real).sum((0, 2)),
        "distance": ((p * distance).sum(-1) * real).sum((0, 2)),
        "first_token": (p[..., 0] * later).sum((0, 2)),
        "previous_token": (previous * later).sum((0, 2)),
        "self": (p.diagonal(0, dim1=-2, dim2=-1) * later).sum((0, 2)),
        "n_queries": real.sum(),
        "n_queries_after_first": later.sum(),
    }


# --- attention_patterns ---------------------------------------------------------------------------
@dataclass
class AttentionPatternsConfig:
    layers: list[int] | None = None  # None: all layers
    heads: list[int] | None = None  # None: all heads
    max_texts: int = 4  # the first texts of the input set
    max_head_figures: int = 12  # per-head heatmap figures (spread evenly over the chosen heads)
    grid_text: int = 0  # which shown text the layer x head grid figure uses
    max_label_tokens: int = 48  # beyond this many tokens, every k-th tick is labelled


def spread_evenly(items: list, k: int) -> list:
    """k items spread evenly over the list (all of them if there are at most k)."""
    if k <= 0:
        return []
    if len(items) <= k:
        return list(items)
    picks = np.linspace(0, len(items) - 1, k).round().astype(int)
    return [items[i] for i in dict.fromkeys(picks.tolist())]


class AttentionPatterns(Analyzer):
    name = "attention_patterns"
    window_outputs = "per_window"  # a pattern per window
    family = "attention"
    description = "attention patterns with tokens: per-head heatmaps, a layer x head grid, a per-head summary"
    Config = AttentionPatternsConfig

    def validate(self, info: ModelInfo, cfg: AttentionPatternsConfig) -> None:
        check_layers(info, cfg.layers, "attention_patterns.layers")
        heads = check_heads(info, cfg.heads, "attention_patterns.heads")
        if not heads:
            raise ConfigError("attention_patterns.heads: empty head list; give head indices or null for all heads")
        if cfg.max_texts < 1:
            raise ConfigError(f"attention_patterns.max_texts must be >= 1, got {cfg.max_texts}")
        if cfg.max_head_figures < 0:
            raise ConfigError(f"attention_patterns.max_head_figures must be >= 0, got {cfg.max_head_figures}")
        if not 0 <= cfg.grid_text < cfg.max_texts:
            raise ConfigError(
                f"attention_patterns.grid_text must be in 0..max_texts-1 = 0..{cfg.max_texts - 1}, got {cfg.grid_text}"
            )
        if cfg.max_label_tokens < 2:
            raise ConfigError(f"attention_patterns.max_label_tokens must be >= 2, got {cfg.max_label_tokens}")

    def estimate(self, info: ModelInfo, cfg: AttentionPatternsConfig, workload):
        """One pass over the first max_texts texts capturing every pattern; a figure per chosen head
        (a panel per text), the layer x head grid, and the long table of the figured patterns."""
        layers = check_layers(info, cfg.layers, "attention_patterns.layers")
        heads = check_heads(info, cfg.heads, "attention_patterns.heads")
        lengths = workload.first(cfg.max_texts)
        cost = workload.forward(len(lengths), max(lengths), logits=1, capture=[pattern_name(L) for L in layers])
        figured = min(cfg.max_head_figures, len(layers) * len(heads))
        figures = workload.figures(figured + 1, figured * len(lengths) + len(layers) * len(heads))
        rows = figured * sum(n * (n + 1) // 2 if info.is_causal else n * n for n in lengths)
        return cost + figures + workload.table(rows, 8)

    def run(self, ctx: RunContext) -> Result:
        cfg: AttentionPatternsConfig = self.cfg
        info = ctx.model.info
        layers = check_layers(info, cfg.layers, "attention_patterns.layers")
        heads = check_heads(info, cfg.heads, "attention_patterns.heads")
        causal = info.is_causal
        texts = ctx.inputs.texts[: cfg.max_texts]
        batch = ctx.model.tokenize(texts, ctx.max_length)
        cache = ctx.model.forward(batch, capture=[pattern_name(layer) for layer in layers], logits_to_keep=1).cache
        lengths = batch.lengths.tolist()
        result = Result()

        errors = PatternErrors()
        rows = []
        for layer in layers:
            pattern = cache[pattern_name(layer)][:, heads]
            errors.update(pattern, batch.attention_mask, causal)
            sums = head_summary(pattern, batch.attention_mask, causal)
            n_all, n_later = float(sums["n_queries"]), max(float(sums["n_queries_after_first"]), 1.0)
            for i, head in enumerate(heads):
                rows.append(
                    {
                        "layer": layer,
                        "head": head,
                        "mean_entropy": float(sums["entropy"][i]) / n_all,
                        "mean_max_weight": float(sums["max_weight"][i]) / n_all,
                        "mean_distance": float(sums["distance"][i]) / n_all,
                        "first_token": float(sums["first_token"][i]) / n_later,
                        "previous_token": float(sums["previous_token"][i]) / n_later,
                        "self": float(sums["self"][i]) / n_later,
                    }
                )
        errors.add_checks(result, causal)
        table = pd.DataFrame(rows)
        result.tables["head_summary"] = table
        result.tables["tokens"] = pd.DataFrame(
            [
                {"text": b, "position": pos, "token": token}
                for b, tokens in enumerate(batch.tokens)
                for pos, token in enumerate(tokens)
            ]
        )

        def matrix(b: int, layer: int, head: int) -> np.ndarray:
            n = lengths[b]
            return cache[pattern_name(layer)][b, head, :n, :n].float().cpu().numpy()

        all_heads = [(layer, head) for layer in layers for head in heads]
        figured = spread_evenly(all_heads, cfg.max_head_figures)
        long_rows = []
        for layer, head in figured:
            panels = []
            for b in range(len(texts)):
                m = matrix(b, layer, head)
                panels.append((f"text {b} ({lengths[b]} tokens)", m, batch.tokens[b]))
                q, k = np.nonzero(np.tril(np.ones_like(m)) if causal else np.ones_like(m))
                long_rows.append(
                    pd.DataFrame(
                        {
                            "text": b,
                            "layer": layer,
                            "head": head,
                            "query_pos": q,
                            "key_pos": k,
                            "query_token": [batch.tokens[b][i] for i in q],
                            "key_token": [batch.tokens[b][j] for j in k],
                            "weight": m[q, k],
                        }
                    )
                )
            title = f"{info.name}: attention of layer {layer}, head {head}"
            result.add_figure(
                f"head_L{layer:02d}_H{head:02d}", plot_head_patterns, panels, title, ctx.style, cfg.max_label_tokens
            )
        if long_rows:
            result.tables["patterns"] = pd.concat(long_rows, ignore_index=True)

        grid_text = min(cfg.grid_text, len(texts) - 1)
        grid = {(layer, head): matrix(grid_text, layer, head) for layer, head in all_heads}
        preview = "".join(batch.tokens[grid_text])[:60]
        result.add_figure(
            "pattern_grid",
            plot_pattern_grid,
            grid,
            layers,
            heads,
            f"{info.name}: attention patterns of text {grid_text} ({preview!r})",
            ctx.style,
        )

        result.metrics["n_texts"] = float(len(texts))
        result.metrics["n_tokens"] = float(batch.n_tokens)
        result.metrics["n_heads"] = float(len(all_heads))
        result.metrics["mean_entropy"] = float(table["mean_entropy"].mean())
        result.metrics["mean_first_token"] = float(table["first_token"].mean())
        result.summary = {
            "texts": [
                {"text": b, "tokens": lengths[b], "start": "".join(batch.tokens[b])[:80]} for b in range(len(texts))
            ],
            "head_figures": [f"L{layer}H{head}" for layer, head in figured],
            "grid_text": grid_text,
            "top_previous_token_heads": _top(table, "previous_token"),
            "top_first_token_heads": _top(table, "first_token"),
            "lowest_entropy_heads": _top(table, "mean_entropy", ascending=True),
        }
        return result


def _top(table: pd.DataFrame, column: str, k: int = 5, ascending: bool = False) -> list[dict]:
    frame = table.sort_values(column, ascending=ascending).head(k)
    return [
        {"head": f"L{int(r.layer)}H{int(r.head)}", column: round(float(getattr(r, column)), 4)}
        for r in frame.itertuples()
    ]


# --- attention_entropy ----------------------------------------------------------------------------
@dataclass
class AttentionEntropyConfig:
    layers: list[int] | None = None  # None: all layers


class EntropyAccumulator:
    """Streaming sums per (layer, head, query position) over real tokens, in float64."""

    def __init__(self, n_layers: int, n_heads: int):
        self.n_layers, self.n_heads = n_layers, n_heads
        self.entropy = torch.zeros(n_layers, n_heads, 0, dtype=torch.float64)
        self.counts = torch.zeros(0, dtype=torch.float64)
        self.normalized = torch.zeros(n_layers, n_heads, dtype=torch.float64)
        self.normalized_count = 0.0
        self.sink = torch.zeros(n_layers, n_heads, dtype=torch.float64)
        self.sink_count = 0.0
        self.violation = -math.inf  # max over rows of max(-H, H - log k_allowed)

    def _grow(self, n: int) -> None:
        if n > self.counts.shape[0]:
            extra = n - self.counts.shape[0]
            self.entropy = torch.cat(
                [self.entropy, torch.zeros(self.n_layers, self.n_heads, extra, dtype=torch.float64)], 2
            )
            self.counts = torch.cat([self.counts, torch.zeros(extra, dtype=torch.float64)])

    def update(
        self, index: int, pattern: torch.Tensor, attention_mask: torch.Tensor, causal: bool, first: bool
    ) -> None:
        """One layer's pattern [b, h, q, k]; `first` marks the first layer of a batch (counts)."""
        n = pattern.shape[-2]
        self._grow(n)
        real = attention_mask.bool()
        real_f = real.to(torch.float64).cpu()
        h = row_entropy(pattern).cpu()  # [b, heads, q]
        k_allowed = key_counts(attention_mask, causal).to(torch.float64).cpu()  # [b, q]
        log_k = k_allowed.log()[:, None, :]
        worst = torch.maximum(-h, h - log_k)[real.cpu()[:, None, :].expand_as(h)]
        if worst.numel():
            self.violation = max(self.violation, float(worst.max()))
        self.entropy[index, :, :n] += (h * real_f[:, None, :]).sum(0)
        informative = real_f * (k_allowed >= 2)
        self.normalized[index] += (h / log_k.clamp_min(1e-12) * informative[:, None, :]).sum((0, 2))
        later = real_f.clone()
        later[:, 0] = 0.0
        self.sink[index] += (pattern[..., 0].to(torch.float64).cpu() * later[:, None, :]).sum((0, 2))
        if first:
            self.counts[:n] += real_f.sum(0)
            self.normalized_count += float(informative.sum())
            self.sink_count += float(later.sum())


class AttentionEntropy(Analyzer):
    name = "attention_entropy"
    window_outputs = "per_window"  # entropies per window
    family = "attention"
    description = "attention entropy per layer, head and query position; attention to the first token"
    Config = AttentionEntropyConfig

    def validate(self, info: ModelInfo, cfg: AttentionEntropyConfig) -> None:
        check_layers(info, cfg.layers, "attention_entropy.layers")

    def estimate(self, info: ModelInfo, cfg: AttentionEntropyConfig, workload):
        """One pass over the inputs capturing the patterns of the chosen layers; three figures."""
        layers = check_layers(info, cfg.layers, "attention_entropy.layers")
        cost = workload.forward_inputs(logits=1, capture=[pattern_name(L) for L in layers])
        positions = max(workload.lengths, default=0)
        return cost + workload.figures(3) + workload.table(len(layers) * info.n_heads * positions, 5)

    def run(self, ctx: RunContext) -> Result:
        cfg: AttentionEntropyConfig = self.cfg
        info = ctx.model.info
        layers = check_layers(info, cfg.layers, "attention_entropy.layers")
        causal = info.is_causal
        acc = EntropyAccumulator(len(layers), info.n_heads)
        errors = PatternErrors()
        names = [pattern_name(layer) for layer in layers]
        for batch in ctx.batches("attention_entropy"):
            cache = ctx.model.forward(batch, capture=names, logits_to_keep=1).cache
            for index, name in enumerate(names):
                pattern = cache.pop(name)
                acc.update(index, pattern, batch.attention_mask, causal, first=index == 0)
                errors.update(pattern, batch.attention_mask, causal)
            del cache
        result = Result()
        result.add_check("entropy_within_bounds", max(acc.violation, 0.0) + 0.0, ENTROPY_TOLERANCE)
        errors.add_checks(result, causal)

        n_queries = float(acc.counts.sum())
        mean_entropy = (acc.entropy.sum(2) / max(n_queries, 1.0)).numpy()  # [layers, heads]
        normalized = (acc.normalized / max(acc.normalized_count, 1.0)).numpy()
        sink = (acc.sink / max(acc.sink_count, 1.0)).numpy()
        by_head = pd.DataFrame(
            [
                {
                    "layer": layer,
                    "head": head,
                    "mean_entropy": float(mean_entropy[i, head]),
                    "mean_normalized_entropy": float(normalized[i, head]) if acc.normalized_count else float("nan"),
                    "first_token_attention": float(sink[i, head]) if acc.sink_count else float("nan"),
                    "n_queries": int(n_queries),
                }
                for i, layer in enumerate(layers)
                for head in range(info.n_heads)
            ]
        )
        seen = torch.nonzero(acc.counts > 0).flatten().tolist()
        by_position = pd.DataFrame(
            [
                {
                    "layer": layer,
                    "head": head,
                    "position": pos,
                    "mean_entropy": float(acc.entropy[i, head, pos] / acc.counts[pos]),
                    "n_queries": int(acc.counts[pos]),
                }
                for i, layer in enumerate(layers)
                for head in range(info.n_heads)
                for pos in seen
            ]
        )
        result.tables["entropy_by_head"] = by_head
        result.tables["entropy_by_position"] = by_position
        heads = list(range(info.n_heads))
        result.add_figure(
            "mean_entropy",
            plot_layer_head_heatmap,
            mean_entropy,
            layers,
            heads,
            f"{info.name}: mean attention entropy",
            "nats",
            ctx.style,
        )
        result.add_figure(
            "first_token_attention",
            plot_layer_head_heatmap,
            sink,
            layers,
            heads,
            f"{info.name}: attention to the first token",
            "mean weight",
            ctx.style,
            0.0,
            1.0,
        )
        result.add_figure(
            "entropy_by_position",
            plot_entropy_by_position,
            by_position,
            causal,
            f"{info.name}: attention entropy by query position",
            ctx.style,
        )

        result.metrics["mean_entropy"] = float(mean_entropy.mean())
        result.metrics["mean_normalized_entropy"] = float(normalized.mean())
        result.metrics["mean_first_token_attention"] = float(sink.mean())
        result.metrics["n_queries"] = n_queries
        for i, layer in enumerate(layers):
            result.metrics[f"L{layer:02d}.mean_entropy"] = float(mean_entropy[i].mean())
            result.metrics[f"L{layer:02d}.first_token_attention"] = float(sink[i].mean())
        result.summary = {
            "lowest_entropy_heads": _top(by_head, "mean_entropy", ascending=True),
            "highest_entropy_heads": _top(by_head, "mean_entropy"),
            "top_first_token_heads": _top(by_head, "first_token_attention"),
            "heads_over_half_on_first_token": int((by_head["first_token_attention"] > 0.5).sum()),
            "max_position": int(max(seen)) if seen else 0,
        }
        return result


ANALYZERS = [AttentionPatterns, AttentionEntropy]
