"""Pure plotting functions of the probing family: tables in, Figure out (redrawable from the
saved tables without the model)."""

from __future__ import annotations

import pandas as pd

from interpsuite.figures import FigureStyle, figure_function

#: above this many cells a similarity heatmap is not annotated with its values
MAX_ANNOTATED_CELLS = 64


@figure_function
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


@figure_function
def plot_probe_curves(table: pd.DataFrame, title: str, style: FigureStyle):
    """Accuracy (with its interval over seeds), control accuracy and chance by layer; selectivity below."""
    frame = table.sort_values("layer")
    has_control = "control_accuracy" in frame and frame["control_accuracy"].notna().any()
    fig, axes = style.figure(nrows=2 if has_control else 1, scale=(1.0, 1.5 if has_control else 1.0))
    ax = axes[0, 0]
    layers = frame["layer"].to_numpy()
    ax.plot(layers, frame["accuracy"], marker="o", markersize=3, label="probe accuracy")
    ax.fill_between(
        layers, frame["accuracy_ci_low"], frame["accuracy_ci_high"], alpha=0.25, label="interval over seeds"
    )
    if has_control:
        ax.plot(layers, frame["control_accuracy"], marker="s", markersize=3, label="control task accuracy")
    ax.plot(layers, frame["chance"], linestyle="--", color="grey", label="majority class")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(title)
    if has_control:
        low = axes[1, 0]
        low.bar(layers, frame["selectivity"], color="tab:green")
        low.axhline(0, color="black", linewidth=0.8)
        low.set_ylabel("selectivity (accuracy - control)")
        low.set_xlabel("layer")
    else:
        ax.set_xlabel("layer")
    return fig


@figure_function
def plot_method_agreement(table: pd.DataFrame, title: str, style: FigureStyle):
    """Cosine between direction estimators, one line per pair of methods, by layer."""
    fig, axes = style.figure()
    ax = axes[0, 0]
    for pair, frame in table.groupby("pair", sort=False):
        frame = frame.sort_values("layer")
        ax.plot(frame["layer"], frame["cosine"], marker="o", markersize=3, label=str(pair))
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_ylim(-1.02, 1.02)
    ax.set_xlabel("layer")
    ax.set_ylabel("cosine similarity")
    ax.legend(fontsize=7)
    ax.set_title(title)
    return fig


@figure_function
def plot_projection_histograms(table: pd.DataFrame, title: str, style: FigureStyle):
    """Per method, the distribution of each class's projections on the (unit) direction."""
    methods = list(dict.fromkeys(table["method"]))
    fig, axes = style.figure(ncols=len(methods), scale=(max(1.0, 0.5 * len(methods)), 1.0))
    for ax, method in zip(axes[0], methods, strict=True):
        frame = table[table["method"] == method]
        for label, group in frame.groupby("class", sort=True):
            ax.hist(group["projection"], bins=20, alpha=0.55, label=str(label))
        ax.set_title(method, fontsize=8)
        ax.set_xlabel("projection")
    axes[0, 0].set_ylabel("examples")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(title)
    return fig
