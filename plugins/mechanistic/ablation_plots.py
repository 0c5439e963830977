"""Pure plotting functions of `head_ablation`: effect arrays in, Figure out (never shown, never saved)."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import numpy as np

from interpsuite.figures import FigureStyle, figure_function

#: Above this many cells per panel a heatmap is not annotated with its values.
MAX_ANNOTATED_CELLS = 120


def _limit(values: Sequence[np.ndarray]) -> float:
    finite = np.concatenate([v[np.isfinite(v)].ravel() for v in values]) if values else np.zeros(0)
    return float(np.abs(finite).max()) if finite.size and np.abs(finite).max() > 0 else 1.0


@figure_function
def plot_effect_heatmaps(
    maps: Mapping[str, np.ndarray],
    layers: Sequence[int],
    title: str,
    label: str,
    style: FigureStyle,
):
    """One [layer, head] heatmap of ablation effects per strategy, on one symmetric colour scale."""
    names = list(maps)
    n_layers, n_heads = next(iter(maps.values())).shape
    limit = _limit(list(maps.values()))
    width = float(np.clip(len(names) * (n_heads * 0.45 + 1.2) + 1.0, 4.0, 16.0))
    height = float(np.clip(n_layers * 0.28 + 1.6, 2.5, 12.0))
    fig, axes = style.figure(1, len(names), scale=(width / style.width, height / style.height))
    image = None
    for ax, name in zip(axes[0], names, strict=True):
        values = maps[name]
        image = ax.imshow(
            values, cmap=style.diverging_cmap, vmin=-limit, vmax=limit, aspect="auto", interpolation="nearest"
        )
        ax.set_xticks(range(n_heads), [str(h) for h in range(n_heads)])
        step = 1 if n_layers <= 32 else int(np.ceil(n_layers / 32))
        ax.set_yticks(range(0, n_layers, step), [str(layers[i]) for i in range(0, n_layers, step)])
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_title(name)
        if values.size <= MAX_ANNOTATED_CELLS:
            for (r, c), value in np.ndenumerate(values):
                if np.isfinite(value):
                    colour = "white" if abs(value) > 0.6 * limit else "black"
                    ax.text(c, r, f"{value:.2g}", ha="center", va="center", fontsize=5.5, color=colour)
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), label=label, shrink=0.8)
    fig.suptitle(title)
    return fig


@figure_function
def plot_strategy_comparison(maps: Mapping[str, np.ndarray], title: str, label: str, style: FigureStyle):
    """Effects under one strategy against another, one dot per head, one panel per pair of strategies."""
    pairs = list(itertools.combinations(list(maps), 2))
    fig, axes = style.figure(1, len(pairs), scale=(0.45 * len(pairs) + 0.2, 0.85))
    limit = _limit(list(maps.values())) * 1.05
    for ax, (a, b) in zip(axes[0], pairs, strict=True):
        x, y = maps[a].ravel(), maps[b].ravel()
        ax.axhline(0.0, color="0.8", linewidth=0.8)
        ax.axvline(0.0, color="0.8", linewidth=0.8)
        ax.plot([-limit, limit], [-limit, limit], "k--", linewidth=0.8, label="equal effect")
        ax.scatter(x, y, s=12, alpha=0.7)
        ax.set_xlim(-limit, limit)
        ax.set_ylim(-limit, limit)
        ax.set_aspect("equal")
        ax.set_xlabel(f"{a}: {label}")
        ax.set_ylabel(f"{b}: {label}")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize="small", loc="upper left")
    fig.suptitle(title)
    return fig
