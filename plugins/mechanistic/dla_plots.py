"""Pure plotting functions of `direct_logit_attribution`: tables and arrays in, Figure out.

Each figure is drawn from a table the analyzer also saves (`heads`, `layers`, `positions`,
`position_layers`), so it can be redrawn without the model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.patches import Rectangle

from interpsuite.figures import FigureStyle, figure_function

#: above this many cells a heatmap is not annotated with its values
MAX_ANNOTATED_CELLS = 120
#: characters of a token shown as a tick label
TICK_CHARS = 10


def _limit(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    peak = float(np.abs(finite).max()) if finite.size else 0.0
    return peak if peak > 0 else 1.0


def _tick(token: str) -> str:
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(token))
    return text if len(text) <= TICK_CHARS else text[: TICK_CHARS - 1] + "…"


def heads_matrix(heads: pd.DataFrame) -> np.ndarray:
    """The `heads` table as a [layer, head] array of mean contributions."""
    return heads.pivot(index="layer", columns="head", values="mean").sort_index().to_numpy()


@figure_function
def plot_head_contributions(
    values: np.ndarray, framed: Sequence[tuple[int, int]], title: str, label: str, style: FigureStyle
):
    """Layer x head heatmap of direct contributions on a symmetric scale; `framed` heads outlined."""
    n_layers, n_heads = values.shape
    limit = _limit(values)
    width = float(np.clip(n_heads * 0.55 + 2.5, 4.0, 12.0))
    height = float(np.clip(n_layers * 0.28 + 1.8, 2.8, 12.0))
    fig, axes = style.figure(1, 1, scale=(width / style.width, height / style.height))
    ax = axes[0, 0]
    image = ax.imshow(values, cmap=style.diverging_cmap, vmin=-limit, vmax=limit, aspect="auto", origin="lower")
    ax.set_xticks(range(n_heads), [str(h) for h in range(n_heads)])
    step = 1 if n_layers <= 32 else int(np.ceil(n_layers / 32))
    ax.set_yticks(range(0, n_layers, step), [str(i) for i in range(0, n_layers, step)])
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    if values.size <= MAX_ANNOTATED_CELLS:
        for (r, c), value in np.ndenumerate(values):
            colour = "white" if abs(value) > 0.6 * limit else "black"
            ax.text(c, r, f"{value:.2g}", ha="center", va="center", fontsize=5.5, color=colour)
    for layer, head in framed:
        ax.add_patch(Rectangle((head - 0.5, layer - 0.5), 1, 1, fill=False, edgecolor="black", lw=1.2))
    fig.colorbar(image, ax=ax, label=label, shrink=0.8)
    ax.set_title(title, fontsize="medium")
    return fig


@figure_function
def plot_layer_contributions(layers: pd.DataFrame, embed: float, actual: float, title: str, style: FigureStyle):
    """Per layer: attention vs MLP direct contributions (bars), and the running sum from the
    embedding (line), which ends at the logit difference once the bias terms are added."""
    fig, axes = style.figure(2, 1, scale=(1.3, 1.4))
    x = layers["layer"].to_numpy()
    ax = axes[0, 0]
    ax.bar(x - 0.2, layers["attn"], width=0.4, label="attention", color="tab:blue")
    ax.bar(x + 0.2, layers["mlp"], width=0.4, label="MLP", color="tab:orange")
    ax.axhline(0, color="black", lw=0.6)
    ax.set_ylabel("mean direct contribution")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3, axis="y")
    ax = axes[1, 0]
    ax.plot([-1, *x], [embed, *layers["cumulative"]], marker="o", markersize=3, label="embed + layers 0..L")
    ax.axhline(actual, color="tab:red", ls="--", lw=1, label=f"model ({actual:.3g})")
    ax.set_xlabel("layer (-1 = embed)")
    ax.set_ylabel("running sum")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize="medium")
    return fig


@figure_function
def plot_position_contributions(positions: pd.DataFrame, position_layers: pd.DataFrame, title: str, style: FigureStyle):
    """One text: the direct terms at every position (stacked bars: embedding, attention, MLP,
    biases; dots: the model's own value; shaded: the positions the aggregates use) and the
    per-layer attention and MLP terms by position."""
    positions = positions.sort_values("position")
    n_pos = len(positions)
    fig, axes = style.figure(3, 1, scale=(max(1.0, n_pos / 14), 2.0))
    x = positions["position"].to_numpy()
    ax = axes[0, 0]
    up = np.zeros(n_pos)
    down = np.zeros(n_pos)
    for column, colour in (("embed", "tab:gray"), ("attn", "tab:blue"), ("mlp", "tab:orange"), ("bias", "tab:green")):
        values = positions[column].to_numpy()
        base = np.where(values >= 0, up, down)
        ax.bar(x, values, bottom=base, color=colour, label=column, width=0.8)
        up += np.clip(values, 0, None)
        down += np.clip(values, None, 0)
    ax.plot(x, positions["logit_diff"], "k.", label="model")
    if "evaluated" in positions and not positions["evaluated"].all():
        for position in x[positions["evaluated"].to_numpy(dtype=bool)]:
            ax.axvspan(position - 0.5, position + 0.5, color="gold", alpha=0.25, lw=0)
    ax.axhline(0, color="black", lw=0.6)
    ax.set_ylabel("direct contribution")
    ax.legend(fontsize="x-small", ncol=5)
    labels = [_tick(t) for t in positions["token"]]
    for ax, column in ((axes[1, 0], "attn"), (axes[2, 0], "mlp")):
        grid = position_layers.pivot(index="layer", columns="position", values=column).sort_index()
        values = grid.to_numpy()
        limit = _limit(values)
        image = ax.imshow(values, cmap=style.diverging_cmap, vmin=-limit, vmax=limit, aspect="auto", origin="lower")
        ax.set_ylabel(f"layer ({column})")
        fig.colorbar(image, ax=ax, shrink=0.8)
    for ax in axes[:, 0]:
        ax.set_xticks(range(n_pos), labels, rotation=60, ha="right", fontsize="x-small")
    axes[2, 0].set_xlabel("input token (the target is the next token at that position)")
    fig.suptitle(title, fontsize="medium")
    return fig
