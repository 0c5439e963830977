"""Pure plotting functions for the gradient family: data in, Figure out."""

from __future__ import annotations

import numpy as np
import pandas as pd

from interpsuite.figures import FigureStyle, figure_function


@figure_function
def plot_gradient_flow(table: pd.DataFrame, model_name: str, target: str, style: FigureStyle):
    """Mean gradient norm per layer, one line per hook point, log scale."""
    fig, axes = style.figure(1, 1)
    ax = axes[0, 0]
    for hook, frame in table.groupby("hook_point"):
        frame = frame.sort_values("layer")
        ax.plot(frame["layer"], frame["mean_grad_norm"], marker="o", markersize=3, label=hook)
    if (table["mean_grad_norm"] > 0).all():
        ax.set_yscale("log")
    ax.set_xlabel("layer")
    ax.set_ylabel("mean L2 norm of d target / d activation")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    ax.set_title(f"Gradient flow: {model_name}\ntarget: {target}")
    return fig


@figure_function
def plot_head_heatmap(scores: np.ndarray, layers: list[int], model_name: str, target: str, style: FigureStyle):
    """Layer x head heatmap of attention-attribution scores."""
    fig, axes = style.figure(1, 1)
    ax = axes[0, 0]
    image = ax.imshow(scores, aspect="auto", cmap="viridis")
    ax.set_yticks(range(len(layers)), [str(L) for L in layers])
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    fig.colorbar(image, ax=ax, label="mean |pattern x gradient|")
    ax.set_title(f"Attention attribution: {model_name}\ntarget: {target}")
    return fig


@figure_function
def plot_neuron_importance(top: pd.DataFrame, checked: pd.DataFrame | None, model_name: str, style: FigureStyle):
    """Top neurons by mean |grad x act|; and estimated vs real ablation effects of the checked ones."""
    fig, axes = style.figure(1, 2, scale=(1.3, 1.0))
    ax = axes[0, 0]
    labels = [f"L{int(r.layer)}.{int(r.neuron)}" for r in top.itertuples()]
    ax.barh(range(len(top)), top["mean_abs_attr"], color="tab:blue")
    ax.set_yticks(range(len(top)), labels, fontsize="x-small")
    ax.invert_yaxis()
    ax.set_xlabel("mean |gradient x activation|")
    ax.set_title(f"Top neurons: {model_name}")
    ax = axes[0, 1]
    if checked is not None and len(checked):
        ax.scatter(checked["estimated_effect"], checked["real_effect"], s=14)
        lo = float(min(checked["estimated_effect"].min(), checked["real_effect"].min()))
        hi = float(max(checked["estimated_effect"].max(), checked["real_effect"].max()))
        ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8, ls="--")
    ax.set_xlabel("estimated ablation effect (-grad x act)")
    ax.set_ylabel("real zero-ablation effect")
    ax.set_title("Estimate vs real effect")
    ax.grid(alpha=0.3)
    return fig
