"""Figures of pruning candidates: pure functions, data in, Figure out (redrawable from saved data)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from interpsuite.figures import FigureStyle, figure_function


@figure_function
def plot_criteria_agreement(agreement: pd.DataFrame, model_name: str, style: FigureStyle):
    """Spearman and bottom-k overlap for each pair of criteria: do they rank the same units low?"""
    fig, axes = style.figure(1, 2, scale=(1.3, 1.0))
    labels = [f"{g}: {a} vs {b}" for g, a, b in zip(agreement["granularity"], agreement["criterion_a"],
                                                       agreement["criterion_b"], strict=True)]  # fmt: skip
    positions = np.arange(len(labels))
    for ax, column, title in ((axes[0, 0], "spearman", "Spearman rank correlation"),
                              (axes[0, 1], "topk_overlap", "overlap of the candidates")):  # fmt: skip
        ax.barh(positions, agreement[column].fillna(0.0))
        ax.set_yticks(positions, labels if ax is axes[0, 0] else [""] * len(labels), fontsize="small")
        ax.set_title(title)
        ax.set_xlim(-1 if column == "spearman" else 0, 1)
        ax.grid(alpha=0.3, axis="x")
    fig.suptitle(f"Pruning criteria agreement: {model_name}")
    return fig


@figure_function
def plot_head_scores(scores: np.ndarray, criterion: str, model_name: str, style: FigureStyle):
    """Layers x heads heatmap of one head criterion (log scale when every score is positive)."""
    fig, axes = style.figure(1, 1, scale=(1.0, 1.2))
    ax = axes[0, 0]
    values = np.log10(scores) if np.all(scores > 0) else scores
    image = ax.imshow(values, aspect="auto", cmap="viridis", origin="lower")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(f"{criterion} importance of heads: {model_name}")
    fig.colorbar(image, ax=ax, label=f"log10 {criterion}" if np.all(scores > 0) else criterion)
    return fig
