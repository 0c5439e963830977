"""attention_rollout: attention rollout and attention flow (Abnar & Zuidema, 2020).

Both treat the network as a layered graph: level 0 holds the input tokens, level l+1 the
positions after block l, and an edge from position i at level l+1 to position j at level l
carries the head-averaged attention of block l mixed with the residual connection,

    A_hat = 0.5 * A + 0.5 * I,   rows renormalised (they already sum to 1; renormalising
                                  removes rounding)

- Rollout multiplies the mixed matrices: R_l = A_hat_l @ R_(l-1), R_0 = A_hat_0. Row i of the
  last R is how much output position i draws on each input token; rows sum to 1 and, for a
  causal model, R is lower-triangular. `rollout()` returns every R_l (layer-cumulative).
- Flow takes the same graph as a flow network whose capacities are the A_hat weights and
  computes, for an output node and each input node separately, the maximum flow between them
  (networkx `maximum_flow_value`). As in the paper's code, the per-output vector of flow
  values is also reported normalised to sum 1. One max-flow problem per (output position,
  input token) on a graph of (layers + 1) * tokens nodes is slow (about 3 s for 32 tokens of a
  30-layer model and one output position), so flow is skipped, with a note, for texts longer
  than `flow_max_tokens`.

The pure functions (`mix_residual`, `rollout`, `attention_flow`, `flow_graph`) take numpy
arrays and know nothing about models; the analyzer captures `blocks.{L}.attn.pattern`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from interpsuite.analyzer import Analyzer, RunContext
from interpsuite.errors import ConfigError
from interpsuite.figures import FigureStyle, figure_function
from interpsuite.models import HookedModel, ModelInfo
from interpsuite.results import Result

RESIDUAL_WEIGHT = 0.5
#: most layer panels in one rollout heatmap figure
MAX_HEATMAP_PANELS = 6
#: token labels on figure axes only up to this many tokens
MAX_LABELLED_TOKENS = 40


# --- capture (shared by the attention analyzers of this module group) ----------------------


@dataclass
class TextPatterns:
    """The attention patterns of one text, real tokens only."""

    text_id: int
    tokens: list[str]
    layers: list[int]
    #: [layer, head, n, n] post-softmax attention (query rows, key columns), float64
    patterns: np.ndarray

    @property
    def n(self) -> int:
        return len(self.tokens)


def capture_text_patterns(
    model: HookedModel,
    texts: Sequence[str],
    *,
    layers: Sequence[int] | None = None,
    max_length: int | None = None,
    batch_size: int = 8,
    text_ids: Sequence[int] | None = None,
) -> list[TextPatterns]:
    """Capture `blocks.{L}.attn.pattern` for each text and cut away the padding."""
    layers = list(range(model.info.n_layers)) if layers is None else list(layers)
    ids = list(text_ids) if text_ids is not None else list(range(len(texts)))
    names = [f"blocks.{layer}.attn.pattern" for layer in layers]
    out: list[TextPatterns] = []
    for start in range(0, len(texts), max(1, batch_size)):
        chunk = list(texts[start : start + batch_size])
        batch = model.tokenize(chunk, max_length, ids[start : start + len(chunk)])
        cache = model.forward(batch, capture=names, logits_to_keep=1).cache
        stacked = cache.stack("attn.pattern", layers).double().cpu().numpy()  # [layer, batch, head, q, k]
        for row, tokens in enumerate(batch.tokens):
            n = len(tokens)
            out.append(TextPatterns(batch.text_ids[row], tokens, layers, stacked[:, row, :, :n, :n].copy()))
    return out


# --- pure functions -------------------------------------------------------------------------


def mix_residual(attention: np.ndarray, residual_weight: float = RESIDUAL_WEIGHT) -> np.ndarray:
    """A_hat = (1 - w) * A + w * I with rows renormalised; `attention` is [..., n, n]."""
    attention = np.asarray(attention, dtype=np.float64)
    n = attention.shape[-1]
    mixed = (1.0 - residual_weight) * attention + residual_weight * np.eye(n)
    sums = mixed.sum(axis=-1, keepdims=True)
    return mixed / np.where(sums > 0, sums, 1.0)


def rollout(mixed: np.ndarray) -> np.ndarray:
    """Layer-cumulative rollout of mixed attention [layer, n, n]: R_l = A_hat_l @ R_(l-1)."""
    mixed = np.asarray(mixed, dtype=np.float64)
    out = np.empty_like(mixed)
    current = np.eye(mixed.shape[-1])
    for layer in range(mixed.shape[0]):
        current = mixed[layer] @ current
        out[layer] = current
    return out


def flow_graph(mixed: np.ndarray):
    """The layered flow network of mixed attention [layer, n, n] (networkx DiGraph).

    Node `(level, position)`; level 0 is the input, level L the output of the last block. Edge
    (l+1, i) -> (l, j) has capacity A_hat_l[i, j] (zero weights get no edge).
    """
    import networkx as nx

    mixed = np.asarray(mixed, dtype=np.float64)
    graph = nx.DiGraph()
    n_layers, n = mixed.shape[0], mixed.shape[-1]
    graph.add_nodes_from((level, i) for level in range(n_layers + 1) for i in range(n))
    for layer in range(n_layers):
        rows, cols = np.nonzero(mixed[layer] > 0)
        graph.add_edges_from(
            ((layer + 1, int(i)), (layer, int(j)), {"capacity": float(mixed[layer, i, j])})
            for i, j in zip(rows, cols, strict=True)
        )
    return graph


def attention_flow(mixed: np.ndarray, outputs: Sequence[int], graph=None) -> np.ndarray:
    """Max flow from each output node (L, i) to each input node (0, j): [len(outputs), n].

    Raw max-flow values (each at most 1: the output node's capacity). Normalise a row by its
    sum for the paper's per-output distribution (`normalise_rows`).
    """
    import networkx as nx
    from networkx.algorithms.flow import build_residual_network, preflow_push

    mixed = np.asarray(mixed, dtype=np.float64)
    n_layers, n = mixed.shape[0], mixed.shape[-1]
    graph = flow_graph(mixed) if graph is None else graph
    residual = build_residual_network(graph, "capacity")  # reused: preflow-push resets its flows
    flows = np.zeros((len(outputs), n))
    for row, output in enumerate(outputs):
        source = (n_layers, int(output))
        reachable = nx.descendants(graph, source)
        for j in range(n):
            if (0, j) in reachable:
                flows[row, j] = nx.maximum_flow_value(graph, source, (0, j), flow_func=preflow_push, residual=residual)
    return flows


def reference_flow(mixed: np.ndarray, output: int, scale: float = 1e8) -> np.ndarray:
    """The same max flows from scipy's integer max-flow on capacities scaled by `scale`.

    An independent implementation, used as a check of `attention_flow` (agreement to about
    tokens / scale).
    """
    from scipy.sparse import csr_array
    from scipy.sparse.csgraph import maximum_flow

    mixed = np.asarray(mixed, dtype=np.float64)
    n_layers, n = mixed.shape[0], mixed.shape[-1]
    rows, cols, caps = [], [], []
    for layer in range(n_layers):
        i, j = np.nonzero(mixed[layer] > 0)
        rows.append((layer + 1) * n + i)
        cols.append(layer * n + j)
        caps.append(np.rint(mixed[layer, i, j] * scale))
    size = (n_layers + 1) * n
    capacity = csr_array(
        (np.concatenate(caps).astype(np.int32), (np.concatenate(rows), np.concatenate(cols))), shape=(size, size)
    )
    source = n_layers * n + int(output)
    values = np.zeros(n)
    for j in range(n):
        values[j] = maximum_flow(capacity, source, j).flow_value / scale
    return values


def normalise_rows(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    sums = values.sum(axis=-1, keepdims=True)
    return values / np.where(sums > 0, sums, 1.0)


def resolve_positions(spec: Any, n: int) -> tuple[list[int], list[int]]:
    """Output positions of a text with n tokens: (kept, dropped as out of range)."""
    if spec is None or spec == "last":
        return [n - 1], []
    if spec == "all":
        return list(range(n)), []
    kept, dropped = [], []
    for position in spec:
        index = int(position) + n if int(position) < 0 else int(position)
        (kept if 0 <= index < n else dropped).append(index if 0 <= index < n else int(position))
    return list(dict.fromkeys(kept)), dropped


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    ra, rb = pd.Series(a).rank().to_numpy(), pd.Series(b).rank().to_numpy()
    return float(np.corrcoef(ra, rb)[0, 1])


# --- figures (pure: data in, Figure out) ----------------------------------------------------


def _label_axis(ax, tokens: list[str], which: str) -> None:
    if len(tokens) > MAX_LABELLED_TOKENS:
        return
    ticks = np.arange(len(tokens))
    labels = [repr(t)[1:-1] for t in tokens]
    if which in ("x", "both"):
        ax.set_xticks(ticks, labels, rotation=90, fontsize="x-small")
    if which in ("y", "both"):
        ax.set_yticks(ticks, labels, fontsize="x-small")


@figure_function
def plot_rollout_layers(cumulative: np.ndarray, layers: list[int], tokens: list[str], title: str, style: FigureStyle):
    """Heatmaps of the layer-cumulative rollout R_l (output position x input token)."""
    n_layers = cumulative.shape[0]
    picks = sorted({int(round(x)) for x in np.linspace(0, n_layers - 1, min(n_layers, MAX_HEATMAP_PANELS))})
    ncols = min(3, len(picks))
    nrows = (len(picks) + ncols - 1) // ncols
    fig, axes = style.figure(nrows, ncols, scale=(1.0 if ncols < 3 else 1.3, 0.8 * nrows + 0.4))
    image = None
    for ax, index in zip(axes.flat, picks, strict=False):
        image = ax.imshow(cumulative[index], cmap=style.cmap, vmin=0.0, vmax=1.0, aspect="auto")
        ax.set_title(f"rollout through layer {layers[index]}", fontsize="small")
        _label_axis(ax, tokens, "both")
        ax.set_xlabel("input token")
        ax.set_ylabel("output position")
    for ax in list(axes.flat)[len(picks) :]:
        ax.axis("off")
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.8, label="share of the output position")
    fig.suptitle(title)
    return fig


@figure_function
def plot_rollout_vs_flow(
    tokens: list[str], raw: np.ndarray, rolled: np.ndarray, flow: np.ndarray | None, title: str, style: FigureStyle
):
    """Bars per input token: raw last-layer attention, rollout and (normalised) flow."""
    n = len(tokens)
    fig, axes = style.figure(1, 1, scale=(max(1.0, n / 24), 1.0))
    ax = axes[0, 0]
    series = [("raw attention (last layer)", raw), ("rollout", rolled)]
    if flow is not None:
        series.append(("attention flow (normalised)", flow))
    width = 0.8 / len(series)
    x = np.arange(n)
    for k, (label, values) in enumerate(series):
        ax.bar(x + (k - (len(series) - 1) / 2) * width, values, width, label=label)
    if n <= MAX_LABELLED_TOKENS * 2:
        ax.set_xticks(x, [repr(t)[1:-1] for t in tokens], rotation=90, fontsize="x-small")
    ax.set_xlabel("input token")
    ax.set_ylabel("weight")
    ax.legend(fontsize="small")
    ax.grid(axis="y", alpha=0.3)
    if flow is None:
        ax.text(
            0.99, 0.97, "flow skipped (text too long)", ha="right", va="top", transform=ax.transAxes, fontsize="small"
        )
    ax.set_title(title)
    return fig


# --- the analyzer ------------------------------------------------------------------------------


@dataclass
class AttentionRolloutConfig:
    max_texts: int = 4
    #: "last" (the last real token), "all", or a list of positions (negative from the end)
    output_positions: Any = "last"
    flow_max_tokens: int = 32
    residual_weight: float = RESIDUAL_WEIGHT
    figures: bool = True


class AttentionRollout(Analyzer):
    name = "attention_rollout"
    window_outputs = "per_window"  # rollout and flow within each window
    family = "attention"
    description = "attention rollout and attention flow (Abnar & Zuidema 2020) from output positions to input tokens"
    Config = AttentionRolloutConfig

    def validate(self, info: ModelInfo, cfg: AttentionRolloutConfig) -> None:
        if cfg.max_texts < 1:
            raise ConfigError(f"attention_rollout.max_texts must be >= 1, got {cfg.max_texts}")
        if cfg.flow_max_tokens < 0:
            raise ConfigError("attention_rollout.flow_max_tokens must be >= 0 (0 turns attention flow off)")
        if not 0.0 <= cfg.residual_weight <= 1.0:
            raise ConfigError(f"attention_rollout.residual_weight must be in [0, 1], got {cfg.residual_weight}")
        spec = cfg.output_positions
        if spec in ("last", "all"):
            return
        if isinstance(spec, int) and not isinstance(spec, bool):
            cfg.output_positions = [spec]
            return
        if (
            isinstance(spec, (list, tuple))
            and spec
            and all(isinstance(p, int) and not isinstance(p, bool) for p in spec)
        ):
            return
        raise ConfigError(
            f"attention_rollout.output_positions: {spec!r}; use 'last', 'all' or a list of positions like [-1, 0]"
        )

    def estimate(self, info: ModelInfo, cfg: AttentionRolloutConfig, workload):
        """Patterns of every layer for the first max_texts texts; rollout (matrix products per layer)
        and, for texts up to flow_max_tokens, attention flow (a max-flow per input token, networkx)."""
        from interpsuite.estimate_analyzers import attention_flow_macs

        names = [f"blocks.{layer}.attn.pattern" for layer in range(info.n_layers)]
        lengths = workload.first(cfg.max_texts)
        cost = workload.forward_batches(lengths, logits=1, capture=names)
        arithmetic = sum(info.n_layers * n**3 for n in lengths)
        flows = [n for n in lengths if cfg.flow_max_tokens and n <= cfg.flow_max_tokens]
        arithmetic += sum(attention_flow_macs(info.n_layers, n, outputs=1) for n in flows)
        panels = min(info.n_layers, MAX_HEATMAP_PANELS)
        n_figures = 2 * len(lengths) if cfg.figures else 0  # rollout by depth (a panel grid), rollout vs flow
        figures = workload.figures(n_figures, n_figures // 2 * (panels + 1))
        table = workload.table(sum(n * (info.n_layers + 1) for n in lengths), 9)
        return cost + workload.macs(arithmetic) + figures + table

    def run(self, ctx: RunContext) -> Result:
        cfg: AttentionRolloutConfig = self.cfg
        self.validate(ctx.model.info, cfg)
        info = ctx.model.info
        texts = ctx.inputs.texts[: cfg.max_texts]
        captured = capture_text_patterns(ctx.model, texts, max_length=ctx.max_length, batch_size=ctx.batch_size)
        result = Result()
        notes: list[str] = []
        row_sum_error = 0.0
        upper_max = 0.0
        flow_error: float | None = None
        per_text = []
        for item in ctx.progress(captured, "attention_rollout"):
            t, n, tokens = item.text_id, item.n, item.tokens
            raw = item.patterns.mean(axis=1)  # heads averaged: [layer, n, n]
            mixed = mix_residual(raw, cfg.residual_weight)
            cumulative = rollout(mixed)
            final = cumulative[-1]
            row_sum_error = max(row_sum_error, float(np.abs(cumulative.sum(axis=-1) - 1.0).max()))
            if info.is_causal and n > 1:
                upper_max = max(upper_max, float(np.abs(np.triu(cumulative, k=1)).max()))
            outputs, dropped = resolve_positions(cfg.output_positions, n)
            if dropped:
                notes.append(f"text {t}: output positions {dropped} out of range for {n} tokens; dropped")
            if not outputs:
                outputs = [n - 1]
                notes.append(f"text {t}: no output position left; using the last token")
            flow_raw: np.ndarray | None = None
            if cfg.flow_max_tokens and n <= cfg.flow_max_tokens:
                flow_raw = attention_flow(mixed, outputs)
                reference = reference_flow(mixed, outputs[-1])
                error = float(np.abs(reference - flow_raw[-1]).max())
                flow_error = error if flow_error is None else max(flow_error, error)
            else:
                reason = "off (flow_max_tokens=0)" if not cfg.flow_max_tokens else f"{n} tokens > flow_max_tokens"
                notes.append(f"text {t}: attention flow skipped ({reason}={cfg.flow_max_tokens})")
            flow = normalise_rows(flow_raw) if flow_raw is not None else None

            rows = []
            for k, out in enumerate(outputs):
                for j in range(n):
                    rows.append(
                        {
                            "text": t,
                            "output_position": out,
                            "output_token": tokens[out],
                            "input_position": j,
                            "input_token": tokens[j],
                            "raw_attention_last_layer": raw[-1, out, j],
                            "rollout": final[out, j],
                            "flow": flow[k, j] if flow is not None else np.nan,
                            "flow_raw": flow_raw[k, j] if flow_raw is not None else np.nan,
                        }
                    )
            result.tables[f"text{t}"] = pd.DataFrame(rows)
            main = outputs[-1]
            result.tables[f"text{t}_by_layer"] = pd.DataFrame(
                [
                    {
                        "text": t,
                        "layer": layer,
                        "output_position": main,
                        "input_position": j,
                        "input_token": tokens[j],
                        "raw_attention": raw[index, main, j],
                        "rollout": cumulative[index, main, j],
                    }
                    for index, layer in enumerate(item.layers)
                    for j in range(n)
                ]
            )
            main_flow = flow[-1] if flow is not None else None
            stats = self._text_stats(tokens, raw[-1, main], final[main], main_flow)
            for key, value in stats.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    result.metrics[f"text{t}.{key}"] = float(value)
            per_text.append({"text": t, "n_tokens": n, "output_position": main, "flow": flow is not None, **stats})
            if cfg.figures:
                label = f"text {t}, {info.name}"
                result.add_figure(
                    f"rollout_layers_text{t}",
                    plot_rollout_layers,
                    cumulative,
                    item.layers,
                    tokens,
                    f"Attention rollout by depth ({label})",
                    ctx.style,
                )
                result.add_figure(
                    f"rollout_vs_flow_text{t}",
                    plot_rollout_vs_flow,
                    tokens,
                    raw[-1, main],
                    final[main],
                    main_flow,
                    f"Output position {main} ({tokens[main]!r}) over input tokens ({label})",
                    ctx.style,
                )
        result.tables["summary"] = pd.DataFrame(per_text)
        result.add_check("rollout_row_sum_error", row_sum_error, 1e-5)
        if info.is_causal:
            result.add_check("rollout_upper_triangle_max", upper_max, 1e-6)
        if flow_error is not None:
            result.add_check("flow_matches_scipy_reference", flow_error, 1e-5)
        result.summary = {
            "texts": per_text,
            "residual_weight": cfg.residual_weight,
            "notes": notes,
        }
        return result

    @staticmethod
    def _text_stats(tokens: list[str], raw: np.ndarray, rolled: np.ndarray, flow: np.ndarray | None) -> dict:
        def top(values: np.ndarray) -> tuple[int, str]:
            index = int(np.argmax(values))
            return index, tokens[index]

        stats: dict[str, Any] = {}
        stats["raw_top_input"], stats["raw_top_token"] = top(raw)
        stats["rollout_top_input"], stats["rollout_top_token"] = top(rolled)
        positive = rolled[rolled > 0]
        stats["rollout_entropy"] = float(-(positive * np.log(positive)).sum())
        stats["raw_vs_rollout_spearman"] = _spearman(raw, rolled)
        if flow is not None:
            stats["flow_top_input"], stats["flow_top_token"] = top(flow)
            stats["flow_vs_rollout_spearman"] = _spearman(flow, rolled)
        return stats


ANALYZERS = [AttentionRollout]
