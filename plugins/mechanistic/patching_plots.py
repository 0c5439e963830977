"""Figures of activation patching: layer x position heatmaps, head grids (pure functions)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from interpsuite.figures import figure_function

TITLES = {"resid_pre": "residual stream (resid_pre)", "attn_out": "attention output", "mlp_out": "MLP output"}


def _limit(values: np.ndarray) -> float:
    peak = float(np.nanmax(np.abs(values))) if values.size else 1.0
    return max(peak, 1e-6)


@figure_function
def plot_layer_position(grids: dict, layers: Sequence[int], tokens: Sequence[str], model: str, style):
    """One heatmap per site: layers (rows) x token positions (columns), 0 = corrupted, 1 = clean."""
    fig, axes = style.figure(1, len(grids), scale=(0.55 * len(grids) + 0.3, 1.2))
    limit = max(_limit(g) for g in grids.values())
    image = None
    for ax, (site, grid) in zip(axes[0], grids.items(), strict=True):
        image = ax.imshow(grid, aspect="auto", origin="lower", cmap=style.diverging_cmap, vmin=-limit, vmax=limit)
        ax.set_title(TITLES.get(site, site))
        ax.set_xticks(range(len(tokens)), [repr(t)[1:-1] for t in tokens], rotation=90)
        ax.set_yticks(range(0, len(layers), max(1, len(layers) // 10)), layers[:: max(1, len(layers) // 10)])
        ax.set_xlabel("position")
    axes[0][0].set_ylabel("layer")
    fig.colorbar(image, ax=axes[0].tolist(), label="patched (clean = 1, corrupted = 0)")
    fig.suptitle(f"Activation patching, {model}")
    return fig


@figure_function
def plot_head_grid(grid: np.ndarray, layers: Sequence[int], model: str, style):
    fig, axes = style.figure(1, 1, scale=(0.8, 1.2))
    ax = axes[0][0]
    limit = _limit(grid)
    image = ax.imshow(grid, aspect="auto", origin="lower", cmap=style.diverging_cmap, vmin=-limit, vmax=limit)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(grid.shape[1]))
    ax.set_yticks(range(0, len(layers), max(1, len(layers) // 10)), layers[:: max(1, len(layers) // 10)])
    fig.colorbar(image, ax=ax, label="patched (clean = 1, corrupted = 0)")
    ax.set_title(f"Patching each head's output (all positions), {model}")
    return fig


@figure_function
def plot_heads_by_position(
    cube: np.ndarray, layers: Sequence[int], tokens: Sequence[str], model: str, style, top: int = 16
):
    """The `top` heads by largest |effect| at any position, each a row over positions."""
    n_heads = cube.shape[1]
    flat = np.abs(cube).max(axis=2).reshape(-1)
    order = np.argsort(-flat)[: min(top, flat.size)]
    rows = np.stack([cube[i // n_heads, i % n_heads] for i in order])
    labels = [f"L{layers[i // n_heads]}H{i % n_heads}" for i in order]
    fig, axes = style.figure(1, 1, scale=(1.0, 1.2))
    ax = axes[0][0]
    limit = _limit(rows)
    image = ax.imshow(rows, aspect="auto", cmap=style.diverging_cmap, vmin=-limit, vmax=limit)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xticks(range(len(tokens)), [repr(t)[1:-1] for t in tokens], rotation=90)
    fig.colorbar(image, ax=ax, label="patched (clean = 1, corrupted = 0)")
    ax.set_title(f"Head outputs patched by position (top {len(labels)} heads), {model}")
    return fig
