"""Figures of pruning impact: pure functions, data in, Figure out (redrawable from saved data)."""

from __future__ import annotations

import pandas as pd

from interpsuite.figures import FigureStyle, figure_function

LABELS = {"perplexity": "perplexity (log scale)", "ioi": "IOI logit difference", "facts": "factual recall (top-1)"}


@figure_function
def plot_impact_curves(curve: pd.DataFrame, task: str, model_name: str, granularity: str, style: FigureStyle):
    """One line per criterion against sparsity, with its bootstrap band; the unpruned value as a
    dashed line, so each curve's cost reads as the distance from it."""
    fig, axes = style.figure(1, 1, scale=(1.0, 1.0))
    ax = axes[0, 0]
    for criterion, rows in curve.groupby("criterion", sort=False):
        rows = rows.sort_values("sparsity")
        line = ax.plot(rows["sparsity"], rows["value"], marker="o", markersize=3, label=str(criterion))[0]
        ax.fill_between(rows["sparsity"], rows["ci_low"], rows["ci_high"], color=line.get_color(), alpha=0.2)
    baseline = curve.loc[curve["sparsity"] == 0, "value"]
    if len(baseline):
        ax.axhline(float(baseline.iloc[0]), color="grey", linestyle="--", linewidth=0.8, label="unpruned")
    if task == "perplexity" and (curve["value"] > 0).all():
        ax.set_yscale("log")
    ax.set_xlabel(f"sparsity ({granularity})")
    ax.set_ylabel(LABELS.get(task, task))
    ax.set_title(f"Pruning impact: {model_name}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig
