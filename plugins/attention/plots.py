"""Pure plotting functions for the attention family: data in, Figure out (never shown, never saved)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from interpsuite.figures import FigureStyle, figure_function

#: Above this many cells a layer x head heatmap is not annotated with its values.
MAX_ANNOTATED_CELLS = 300
#: Largest side of one pattern panel in a per-head figure (inches).
PANEL_MAX_INCHES = 5.0


def token_label(token: str, max_chars: int = 12) -> str:
    """A token as an axis label: whitespace made visible, mathtext's `$` escaped, shortened."""
    text = token.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
    if text.startswith(" "):
        text = "\u2423" + text[1:]  # open box: a leading space would be invisible
    if not text.strip():
        text = repr(token)
    if len(text) > max_chars:
        text = text[: max_chars - 1] + "\u2026"
    return text.replace("$", r"\$")


def _tick_positions(n: int, max_labels: int) -> list[int]:
    """Every position if there are at most max_labels, else every k-th (and the last)."""
    if n <= max_labels:
        return list(range(n))
    step = int(np.ceil(n / max_labels))
    ticks = list(range(0, n, step))
    if ticks[-1] != n - 1:
        ticks.append(n - 1)
    return ticks


def draw_pattern(ax, matrix: np.ndarray, tokens: Sequence[str], style: FigureStyle, max_labels: int = 48):
    """One attention pattern [query, key] with token labels on both axes (0..1 colour scale)."""
    n = matrix.shape[0]
    # "none": PDF/SVG embed the [q, k] matrix as it is (a 60 x 60 image, not a resampled
    # 1,000 x 1,000 one); PNG looks the same as with "nearest"
    image = ax.imshow(matrix, cmap=style.cmap, vmin=0.0, vmax=1.0, interpolation="none", aspect="auto")
    ticks = _tick_positions(n, max_labels)
    labels = [token_label(tokens[i]) if i < len(tokens) else str(i) for i in ticks]
    font = max(4.0, min(style.font_size - 1.0, 220.0 / max(len(ticks), 1)))
    ax.set_xticks(ticks, labels, rotation=90, fontsize=font)
    ax.set_yticks(ticks, labels, fontsize=font)
    ax.set_xlabel("key")
    ax.set_ylabel("query")
    return image


@figure_function
def plot_head_patterns(
    panels: Sequence[tuple[str, np.ndarray, Sequence[str]]],
    title: str,
    style: FigureStyle,
    max_labels: int = 48,
):
    """One head's pattern on each of a few texts: panels of (title, [q, k] matrix, tokens)."""
    n = max(len(panels), 1)
    ncols = 1 if n == 1 else 2
    nrows = int(np.ceil(n / ncols))
    longest = max((p[1].shape[0] for p in panels), default=1)
    # inches per panel: 0.16 in per token keeps labels legible; at most 5 in, where the default
    # 48 labels (their font shrinks with their number) still sit >= 7 pt apart. A larger panel
    # (up to 7.5 in before) shows nothing more, and costs pixels and drawing time in every format.
    side = float(np.clip(longest * 0.16, 3.2, PANEL_MAX_INCHES))
    fig, axes = style.figure(nrows, ncols, scale=(side * ncols / style.width, side * nrows / style.height))
    image = None
    for ax, (panel_title, matrix, tokens) in zip(axes.flat, panels, strict=False):
        image = draw_pattern(ax, matrix, tokens, style, max_labels)
        ax.set_title(panel_title, fontsize=style.font_size)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.6, label="attention weight")
    fig.suptitle(title)
    return fig


def pattern_mosaic(
    patterns: Mapping[tuple[int, int], np.ndarray], layers: Sequence[int], heads: Sequence[int], gap: int
) -> np.ndarray:
    """The patterns tiled into one array, a row of tiles per layer, NaN (drawn blank) between tiles."""
    n = max((m.shape[0] for m in patterns.values()), default=1)
    step = n + gap
    mosaic = np.full((len(layers) * step - gap, len(heads) * step - gap), np.nan)
    for r, layer in enumerate(layers):
        for c, head in enumerate(heads):
            matrix = patterns[(layer, head)]
            mosaic[r * step : r * step + matrix.shape[0], c * step : c * step + matrix.shape[1]] = matrix
    return mosaic


@figure_function
def plot_pattern_grid(
    patterns: Mapping[tuple[int, int], np.ndarray],
    layers: Sequence[int],
    heads: Sequence[int],
    title: str,
    style: FigureStyle,
):
    """Small heatmaps of one text's pattern, a row per layer and a column per head.

    Drawn as one image of tiles in one Axes rather than an Axes per head: a 30-layer model
    has 270 heads, and 270 Axes cost seconds of layout and drawing per saved format for what
    is the same picture (tiles, each labelled with its head and layer).
    """
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Rectangle

    cell = 0.9 if len(layers) * len(heads) <= 120 else 0.75
    width, height = max(len(heads) * cell + 0.8, 3.0), max(len(layers) * cell + 0.8, 2.5)
    fig, axes = style.figure(1, 1, scale=(width / style.width, height / style.height))
    ax = axes[0, 0]
    n = max((m.shape[0] for m in patterns.values()), default=1)
    gap = max(1, round(n / 12))
    mosaic = pattern_mosaic(patterns, layers, heads, gap)
    ax.imshow(mosaic, cmap=style.cmap, vmin=0.0, vmax=1.0, interpolation="none")
    step = n + gap
    frames = [Rectangle((c * step - 0.5, r * step - 0.5), n, n) for r in range(len(layers)) for c in range(len(heads))]
    ax.add_collection(PatchCollection(frames, facecolor="none", edgecolor="black", linewidth=0.8))
    centres = (n - 1) / 2 + step * np.arange(max(len(layers), len(heads)))
    size = style.font_size - 1
    ax.set_xticks(centres[: len(heads)], [f"H{head}" for head in heads], fontsize=size)
    ax.set_yticks(centres[: len(layers)], [f"L{layer}" for layer in layers], fontsize=size)
    ax.xaxis.tick_top()
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    fig.suptitle(title)
    return fig


@figure_function
def plot_layer_head_heatmap(
    values: np.ndarray,
    layers: Sequence[int],
    heads: Sequence[int],
    title: str,
    label: str,
    style: FigureStyle,
    vmin: float | None = 0.0,
    vmax: float | None = None,
):
    """A [layer, head] grid of one number per head, annotated when small enough to read."""
    n_layers, n_heads = values.shape
    width = float(np.clip(n_heads * 0.55 + 2.0, 4.0, 12.0))
    height = float(np.clip(n_layers * 0.3 + 1.5, 2.5, 12.0))
    fig, axes = style.figure(1, 1, scale=(width / style.width, height / style.height))
    ax = axes[0, 0]
    image = ax.imshow(values, cmap=style.cmap, vmin=vmin, vmax=vmax, aspect="auto", interpolation="none")
    ax.set_xticks(range(n_heads), [str(h) for h in heads])
    step = 1 if n_layers <= 32 else int(np.ceil(n_layers / 32))
    ax.set_yticks(range(0, n_layers, step), [str(layers[i]) for i in range(0, n_layers, step)])
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    if values.size <= MAX_ANNOTATED_CELLS:
        finite = values[np.isfinite(values)]
        middle = (float(finite.min()) + float(finite.max())) / 2 if finite.size else 0.0
        for (r, c), value in np.ndenumerate(values):
            if np.isfinite(value):
                colour = "black" if value > middle else "white"
                ax.text(c, r, f"{value:.2f}", ha="center", va="center", fontsize=5.5, color=colour)
    fig.colorbar(image, ax=ax, label=label)
    ax.set_title(title)
    return fig


@figure_function
def plot_entropy_by_position(table: pd.DataFrame, causal: bool, title: str, style: FigureStyle):
    """Mean attention entropy (over heads) against query position, one line per layer.

    For causal models the dashed line is log(position + 1): the entropy of uniform attention,
    the most any head can reach at that position.
    """
    import matplotlib as mpl

    fig, axes = style.figure(1, 1, scale=(1.0, 1.0))
    ax = axes[0, 0]
    weighted = table.assign(total=table["mean_entropy"] * table["n_queries"])
    by_layer = weighted.groupby(["layer", "position"], as_index=False)[["total", "n_queries"]].sum()
    by_layer["entropy"] = by_layer["total"] / by_layer["n_queries"].clip(lower=1)
    layers = sorted(by_layer["layer"].unique())
    cmap = mpl.colormaps[style.cmap]
    norm = mpl.colors.Normalize(vmin=min(layers), vmax=max(max(layers), min(layers) + 1))
    for layer in layers:
        frame = by_layer[by_layer["layer"] == layer].sort_values("position")
        ax.plot(frame["position"], frame["entropy"], color=cmap(norm(layer)), linewidth=1.0)
    if causal and len(by_layer):
        positions = np.arange(int(by_layer["position"].max()) + 1)
        ax.plot(positions, np.log(positions + 1), "k--", linewidth=1.0, label="uniform: log(position + 1)")
        ax.legend(fontsize="small", loc="upper left")
    fig.colorbar(mpl.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="layer")
    ax.set_xlabel("query position")
    ax.set_ylabel("mean entropy over heads (nats)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return fig


@figure_function
def plot_ablation_losses(losses: Mapping[str, float], errors: Mapping[str, float], title: str, style: FigureStyle):
    """Bars of the loss under each ablation (error bars: spread over random head sets)."""
    fig, axes = style.figure(1, 1, scale=(0.8, 0.9))
    ax = axes[0, 0]
    names = list(losses)
    values = [losses[n] for n in names]
    spread = [errors.get(n, 0.0) for n in names]
    colours = ["#7f7f7f", "#d62728", "#1f77b4", "#2ca02c"][: len(names)]
    bars = ax.bar(names, values, yerr=spread, capsize=4, color=colours)
    for bar, value in zip(bars, values, strict=True):
        ax.annotate(f"{value:.3f}", (bar.get_x() + bar.get_width() / 2, value), ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("loss on the repeated half (nats/token)")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    return fig
