"""Pure plot functions for token attributions (data in, Figure out)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from interpsuite.figures import FigureStyle, figure_function


@figure_function
def plot_token_heatmap(tokens: list[str], scores: dict[str, np.ndarray], title: str, style: FigureStyle):
    """Methods x tokens, each method's row scaled by its max |score| (diverging colours, 0 = white)."""
    names = list(scores)
    grid = np.array([scores[n] / max(float(np.abs(scores[n]).max()), 1e-12) for n in names])
    fig, axes = style.figure(scale=(max(1.0, len(tokens) / 12), max(0.6, len(names) / 5)))
    ax = axes[0, 0]
    im = ax.imshow(grid, cmap=style.diverging_cmap, vmin=-1, vmax=1, aspect="auto")
    ax.set_xticks(range(len(tokens)), [repr(t)[1:-1] for t in tokens], rotation=60, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label="score / max |score|")
    return fig


@figure_function
def plot_method_agreement(table: pd.DataFrame, style: FigureStyle):
    """Mean Spearman correlation and top-k overlap between every pair of methods (over texts)."""
    fig, axes = style.figure(ncols=2, scale=(1.4, 1.0))
    methods = sorted(set(table["method_a"]) | set(table["method_b"]))
    for ax, column, cmap, lo in (
        (axes[0, 0], "spearman", style.diverging_cmap, -1),
        (axes[0, 1], "topk_overlap", style.cmap, 0),
    ):
        grid = np.full((len(methods), len(methods)), np.nan)
        np.fill_diagonal(grid, 1.0)
        means = table.groupby(["method_a", "method_b"])[column].mean()
        for (a, b), v in means.items():
            i, j = methods.index(a), methods.index(b)
            grid[i, j] = grid[j, i] = v
        im = ax.imshow(grid, cmap=cmap, vmin=lo, vmax=1)
        ax.set_xticks(range(len(methods)), methods, rotation=45, ha="right")
        ax.set_yticks(range(len(methods)), methods)
        for i in range(len(methods)):
            for j in range(len(methods)):
                if np.isfinite(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=7)
        ax.set_title(column)
        fig.colorbar(im, ax=ax)
    return fig
