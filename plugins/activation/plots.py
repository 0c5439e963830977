"""Pure plotting functions for the activation family: data in, Figure out."""

from __future__ import annotations

import numpy as np
import pandas as pd

from interpsuite.figures import FigureStyle, figure_function

PANELS = (
    ("std", "std of activations", "linear"),
    ("mean_norm", "mean L2 norm per token", "log"),
    ("near_zero_frac", "fraction near zero", "linear"),
    ("kurtosis", "excess kurtosis", "symlog"),
)


@figure_function
def plot_layer_profile(table: pd.DataFrame, model_name: str, style: FigureStyle):
    """Per-layer curves of each statistic, one line per hook point."""
    fig, axes = style.figure(2, 2, scale=(1.3, 1.4))
    for ax, (column, title, scale) in zip(axes.flat, PANELS, strict=True):
        for hook, frame in table.groupby("hook_point"):
            frame = frame.sort_values("layer")
            ax.plot(frame["layer"], frame[column], marker="o", markersize=3, label=hook)
        ax.set_title(title)
        ax.set_xlabel("layer")
        if scale == "log" and (table[column] > 0).all():
            ax.set_yscale("log")
        elif scale == "symlog":
            ax.set_yscale("symlog", linthresh=1.0)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize="small")
    fig.suptitle(f"Activation statistics by layer: {model_name}")
    return fig


@figure_function
def plot_unit_histograms(neurons: pd.DataFrame, style: FigureStyle):
    """Histograms of per-neuron mean activation and activation frequency at a few layers."""
    layers = sorted(neurons["layer"].unique())
    picks = sorted({layers[0], layers[len(layers) // 2], layers[-1]})
    fig, axes = style.figure(1, 2, scale=(1.3, 1.0))
    for layer in picks:
        frame = neurons[neurons["layer"] == layer]
        axes[0, 0].hist(frame["mean"], bins=60, alpha=0.5, label=f"layer {layer}")
        axes[0, 1].hist(frame["active_frac"], bins=np.linspace(0, 1, 41), alpha=0.5, label=f"layer {layer}")
    axes[0, 0].set_title("per-neuron mean activation")
    axes[0, 0].set_xlabel("mean activation")
    axes[0, 0].set_ylabel("neurons")
    axes[0, 1].set_title("per-neuron activation frequency")
    axes[0, 1].set_xlabel("fraction of tokens above the dead threshold")
    axes[0, 0].legend(fontsize="small")
    return fig
