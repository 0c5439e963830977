"""Figures of SAE training: pure functions, data in, Figure out (redrawable from saved data)."""

from __future__ import annotations

import pandas as pd

from interpsuite.figures import FigureStyle, figure_function

PANELS = (
    ("loss", "training loss", "log"),
    ("explained_variance", "explained variance (batch)", "linear"),
    ("l0", "L0 (active latents per token)", "linear"),
    ("dead_fraction", "dead fraction", "linear"),
)


@figure_function
def plot_training_curves(history: pd.DataFrame, title: str, style: FigureStyle):
    """Loss, explained variance, L0 and dead fraction against the step, with the learning rate
    shaded behind the loss (warm-up and decay explain bends in the curves)."""
    fig, axes = style.figure(2, 2, scale=(1.3, 1.3))
    for ax, (column, label, scale) in zip(axes.flat, PANELS, strict=True):
        ax.plot(history["step"], history[column], linewidth=1.2)
        ax.set_title(label)
        ax.set_xlabel("step")
        if scale == "log" and (history[column] > 0).all():
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    lr_axis = axes[0, 0].twinx()
    lr_axis.fill_between(history["step"], history["lr"], alpha=0.12, color="grey", step="mid")
    lr_axis.set_ylabel("learning rate", color="grey")
    lr_axis.tick_params(axis="y", colors="grey")
    axes[0, 1].set_ylim(top=1.0)
    fig.suptitle(title)
    return fig
