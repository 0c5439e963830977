"""attention_view: a self-contained interactive HTML view of a model's attention.

The page (`artifacts/attention_view/attention_view.html` in the run directory) has a head
view (pick layer and head, hover a token to see its attention lines and weights) and a
model view (a grid of every layer x head; click one to open it in the head view), for the
first `max_texts` texts, each cut to `max_tokens` tokens. It needs no network: CSS and JS
are inline and the data is embedded as JSON. The same page from Python:
`interpsuite_plugins.attention.html_view.attention_view_html(model, text)`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from interpsuite.analyzer import Analyzer, RunContext, check_layers
from interpsuite.errors import ConfigError
from interpsuite.models import ModelInfo
from interpsuite.results import Result

from .html_view import SCALE, ViewText, embedded_row_sum_error, extract_view_data, render_attention_views
from .rollout import capture_text_patterns

ARTIFACT = "attention_view.html"


@dataclass
class AttentionViewConfig:
    max_texts: int = 1
    max_tokens: int = 64
    layers: list[int] | None = None  # null = all layers


class AttentionView(Analyzer):
    name = "attention_view"
    window_outputs = "per_window"  # a head/model view per window
    family = "attention"
    description = "self-contained interactive HTML head view and model view of the attention patterns"
    Config = AttentionViewConfig

    def validate(self, info: ModelInfo, cfg: AttentionViewConfig) -> None:
        if cfg.max_texts < 1:
            raise ConfigError(f"attention_view.max_texts must be >= 1, got {cfg.max_texts}")
        if cfg.max_tokens < 1:
            raise ConfigError(f"attention_view.max_tokens must be >= 1, got {cfg.max_tokens} (default 64)")
        check_layers(info, cfg.layers, "attention_view.layers")

    def estimate(self, info: ModelInfo, cfg: AttentionViewConfig, workload):
        """Patterns of the chosen layers for the first max_texts texts (at most max_tokens each),
        embedded in one HTML page (quantised weights: a few bytes per weight)."""
        layers = sorted(set(check_layers(info, cfg.layers, "attention_view.layers")))
        limit = cfg.max_tokens if workload.max_length is None else min(cfg.max_tokens, workload.max_length)
        lengths = [min(n, limit) for n in workload.first(cfg.max_texts)]
        cost = workload.forward_batches(lengths, logits=1, capture=[f"blocks.{L}.attn.pattern" for L in layers])
        weights = sum(len(layers) * info.n_heads * n * n for n in lengths)
        return cost + workload.disk(4 * weights) + workload.macs(20 * weights)

    def run(self, ctx: RunContext) -> Result:
        cfg: AttentionViewConfig = self.cfg
        info = ctx.model.info
        layers = sorted(set(check_layers(info, cfg.layers, "attention_view.layers")))
        texts = ctx.inputs.texts[: cfg.max_texts]
        limit = cfg.max_tokens if ctx.max_length is None else min(cfg.max_tokens, ctx.max_length)
        captured = capture_text_patterns(ctx.model, texts, layers=layers, max_length=limit, batch_size=ctx.batch_size)
        full_lengths = [len(t) for t in ctx.model.tokenize(texts).tokens]
        views, rows = [], []
        source_error = 0.0
        for item, full in zip(captured, full_lengths, strict=True):
            source_error = max(source_error, float(np.abs(item.patterns.sum(axis=-1) - 1.0).max()))
            views.append(
                ViewText(
                    item.tokens,
                    {layer: item.patterns[i] for i, layer in enumerate(item.layers)},
                    f"text {item.text_id}",
                )
            )
            rows.append({"text": item.text_id, "tokens": item.n, "tokens_in_text": full, "truncated": full > item.n})
        page = render_attention_views(views, f"Attention: {info.name}", info.name)
        result = Result()
        result.artifacts[ARTIFACT] = page
        data = extract_view_data(page)  # read back what the page embeds
        result.add_check("pattern_row_sum_error", source_error, 1e-5)
        result.add_check("embedded_row_sum_error", embedded_row_sum_error(data), 1e-9)
        result.add_check("embedded_max_abs_error", self._embedding_error(data, captured), 1.0 / SCALE + 1e-5)
        result.tables["texts"] = pd.DataFrame(rows)
        result.metrics["html_bytes"] = float(len(page.encode("utf-8")))
        result.metrics["texts"] = float(len(views))
        result.metrics["tokens"] = float(sum(len(v.tokens) for v in views))
        result.summary = {
            "artifact": ARTIFACT,
            "layers": layers,
            "texts": rows,
            "python": "interpsuite_plugins.attention.html_view.attention_view_html(model, text)",
        }
        return result

    @staticmethod
    def _embedding_error(data: dict, captured) -> float:
        """max |embedded weight - model weight| (the quantisation error, at most 1 / scale)."""
        error = 0.0
        for text, item in zip(data["texts"], captured, strict=True):
            n = text["n"]
            embedded = np.asarray(text["patterns"], dtype=np.float64).reshape(len(text["layers"]), -1, n, n)
            error = max(error, float(np.abs(embedded / data["scale"] - item.patterns).max()))
        return error


ANALYZERS = [AttentionView]
