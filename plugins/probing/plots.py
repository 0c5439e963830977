"""Pure plotting functions of the probing family: tables in, Figure out (redrawable from the
saved tables without the model)."""

from __future__ import annotations

import pandas as pd

from interpsuite.figures import FigureStyle

#: above this many cells a similarity heatmap is not annotated with its values
MAX_ANNOTATED_CELLS = 64


def plot_similarity(table: pd.DataFrame, value: str, rows: str, columns: str, title: str, style: FigureStyle):
    """A heatmap of `value` over (rows, columns) of a long table, e.g. CKA over layer pairs."""
    grid = table.pivot(index=rows, columns=columns, values=value).sort_index().sort_index(axis=1)
    fig, axes = style.figure()
    ax = axes[0, 0]
    image = ax.imshow(
        grid.to_numpy(),
        cmap=style.cmap,
        vmin=min(0.0, float(grid.min().min())),
        vmax=1.0,
        origin="lower",
        interpolation="none",
    )
    fig.colorbar(image, ax=ax, label=value)
    ax.set_xlabel(columns)
    ax.set_ylabel(rows)
    step_x = max(1, len(grid.columns) // 15)
    step_y = max(1, len(grid.index) // 15)
    ax.set_xticks(range(0, len(grid.columns), step_x), [str(c) for c in grid.columns[::step_x]])
    ax.set_yticks(range(0, len(grid.index), step_y), [str(r) for r in grid.index[::step_y]])
    if grid.size <= MAX_ANNOTATED_CELLS:
        for i in range(grid.shape[0]):
            for j in range(grid.shape[1]):
                ax.text(j, i, f"{grid.iat[i, j]:.2f}", ha="center", va="center", fontsize=7, color="white")
    ax.set_title(title)
    return fig
