"""Pure plot functions of the temporal summary: metrics and head scores against the training step.

Data in, Figure out (marked `@figure_function`), so `interpsuite figures` redraws a temporal
run like any other. The animation writer is here too; it is not a redrawable figure (a GIF is
not one of the figure formats) but draws the same panels frame by frame.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from .figures import FigureStyle, figure_function


def _small(style: FigureStyle) -> float:
    """Absolute sizes: a relative one ("small") of a lazily made tick label is resolved when the
    figure is saved, under whatever rcParams are active then, so a redraw would differ."""
    return max(style.font_size - 1, 5)


def _tiny(style: FigureStyle) -> float:
    return max(style.font_size - 2, 4)


def _grid(n: int, max_cols: int) -> tuple[int, int]:
    cols = max(1, min(max_cols, n))
    return math.ceil(n / cols), cols


@figure_function
def plot_metric_trends(table: pd.DataFrame, title: str, splits: dict, style: FigureStyle):
    """Small multiples: one panel per metric (`table`: step, metric, value), each against the step.

    `splits` (metric -> step) marks each metric's best split point with a dashed line: the first
    step of the segment after the change (see temporal.change_points).
    """
    metrics = list(dict.fromkeys(table["metric"]))
    nrows, ncols = _grid(len(metrics), 4)
    fig, axes = style.figure(nrows, ncols, scale=(1.3, 0.45 * nrows + 0.35))
    for ax in axes.flat[len(metrics) :]:
        ax.set_visible(False)
    for ax, metric in zip(axes.flat, metrics, strict=False):
        frame = table[table["metric"] == metric].sort_values("step")
        ax.plot(frame["step"], frame["value"], marker="o", markersize=3)
        if metric in splits:
            ax.axvline(splits[metric], color="grey", linestyle="--", linewidth=0.8)
        ax.set_title(metric, fontsize=_small(style))
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=_tiny(style))
    for ax in axes[-1, :]:
        ax.set_xlabel("step")
    fig.suptitle(title)
    return fig


def _panel_steps(steps: list[int], max_panels: int) -> list[int]:
    """Indices of at most `max_panels` steps, evenly spread, always the first and the last."""
    if len(steps) <= max_panels:
        return list(range(len(steps)))
    picks = np.linspace(0, len(steps) - 1, max_panels).round().astype(int)
    return sorted(set(picks.tolist()))


@figure_function
def plot_head_heatmaps(values: np.ndarray, steps: list, title: str, max_panels: int, style: FigureStyle):
    """One layer x head heatmap per step (`values`: [step, layer, head]) on one shared colour scale."""
    picks = _panel_steps(list(steps), max_panels)
    nrows, ncols = _grid(len(picks), 6)
    fig, axes = style.figure(nrows, ncols, scale=(1.3, 0.42 * nrows + 0.3))
    finite = values[np.isfinite(values)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    image = None
    for ax in axes.flat[len(picks) :]:
        ax.set_visible(False)
    for ax, index in zip(axes.flat, picks, strict=False):
        image = ax.imshow(values[index], aspect="auto", origin="lower", vmin=vmin, vmax=vmax, cmap=style.cmap)
        ax.set_title(f"step {steps[index]}", fontsize=_small(style))
        ax.set_yticks(range(values.shape[1]))
        ax.set_xticks(range(values.shape[2]))
        ax.tick_params(labelsize=_tiny(style))
    for ax in axes[:, 0]:
        ax.set_ylabel("layer")
    for ax in axes[-1, :]:
        ax.set_xlabel("head")
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8)
    shown = "" if len(picks) == len(steps) else f" ({len(picks)} of {len(steps)} steps)"
    fig.suptitle(title + shown)
    return fig


@figure_function
def plot_top_changes(changes: pd.DataFrame, style: FigureStyle):
    """The metrics that moved most: the shift of the mean at the best split, in units of the metric's spread."""
    frame = changes.iloc[::-1]
    fig, axes = style.figure(1, 1, scale=(1.0, max(0.5, 0.08 * len(frame) + 0.3)))
    ax = axes[0, 0]
    labels = [f"{a}.{m} @ {s}" for a, m, s in zip(frame["analyzer"], frame["metric"], frame["split_step"], strict=True)]
    ax.barh(range(len(frame)), frame["relative_shift"])
    ax.set_yticks(range(len(frame)), labels, fontsize=_tiny(style))
    ax.set_xlabel("mean after - mean before, / (max - min) of the metric")
    ax.axvline(0, color="black", linewidth=0.6)
    ax.grid(alpha=0.3, axis="x")
    ax.set_title("largest changes (best split step)")
    return fig


def animate_heatmaps(values: np.ndarray, steps: list, title: str, path: Path, style: FigureStyle, fmt: str) -> Path:
    """A GIF (Pillow) or MP4 (ffmpeg) with one frame per step, on the shared colour scale."""
    from matplotlib import animation

    finite = values[np.isfinite(values)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    with style.context():
        fig, axes = style.figure(1, 1, scale=(0.6, 0.8))
        ax = axes[0, 0]
        image = ax.imshow(values[0], aspect="auto", origin="lower", vmin=vmin, vmax=vmax, cmap=style.cmap)
        fig.colorbar(image, ax=ax)
        ax.set_yticks(range(values.shape[1]))
        ax.set_xticks(range(values.shape[2]))
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        heading = ax.set_title(f"{title}: step {steps[0]}", fontsize=_small(style))

        def frame(index: int):
            image.set_data(values[index])
            heading.set_text(f"{title}: step {steps[index]}")
            return image, heading

        movie = animation.FuncAnimation(fig, frame, frames=len(steps), interval=500, blit=False)
        writer = animation.PillowWriter(fps=2) if fmt == "gif" else animation.FFMpegWriter(fps=2)
        path.parent.mkdir(parents=True, exist_ok=True)
        movie.save(str(path), writer=writer, dpi=min(style.dpi, 100))
    return path
