"""Pure plotting functions for the logit lens and the tuned lens: data in, Figure out."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from interpsuite.figures import FigureStyle, figure_function

#: characters of a decoded token shown in a grid cell
CELL_CHARS = 8
#: texts drawn as separate lines in per-text plots (the mean is always drawn)
MAX_TEXT_LINES = 8


def _tick(layer: int) -> str:
    return "embed" if layer < 0 else str(layer)


def _cell_text(token: str) -> str:
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in token)
    return text if len(text) <= CELL_CHARS else text[: CELL_CHARS - 1] + "…"


def _positive(values: pd.Series) -> np.ndarray:
    """Values for a log axis: zeros (the last layer, where the lens is the model) are left out."""
    out = values.to_numpy(dtype=float).copy()
    out[out <= 0] = np.nan
    return out


@figure_function
def plot_top_token_grid(
    cells: dict[int, tuple[Sequence[str], Sequence[float], int]],
    input_tokens: Sequence[str],
    model_name: str,
    style: FigureStyle,
):
    """Layer x position grid of the lens top-1 token, coloured by its probability (one text).

    `cells[layer] = (top-1 tokens, their probabilities, first position shown)`; rows are
    layers (embedding at the bottom, last layer at the top), columns the shown positions,
    labelled with the input token at that position (the lens predicts the *next* token)."""
    layers = sorted(cells)
    start = next(iter(cells.values()))[2]
    n_pos = len(next(iter(cells.values()))[1])
    probs = np.array([cells[L][1] for L in layers])
    fig, axes = style.figure(1, 1, scale=(max(1.0, n_pos / 9), max(1.0, len(layers) / 14)))
    ax = axes[0, 0]
    image = ax.imshow(probs, aspect="auto", origin="lower", cmap=style.cmap, vmin=0.0, vmax=1.0)
    size = max(4.0, min(7.0, 120 / max(n_pos, len(layers))))
    for row, layer in enumerate(layers):
        for col, token in enumerate(cells[layer][0]):
            colour = "black" if probs[row, col] > 0.6 else "white"
            ax.text(col, row, _cell_text(token), ha="center", va="center", fontsize=size, color=colour)
    ax.set_yticks(range(len(layers)), [_tick(L) for L in layers], fontsize="x-small")
    shown = [_cell_text(t) for t in input_tokens[start : start + n_pos]]
    ax.set_xticks(range(n_pos), shown, rotation=60, ha="right", fontsize="x-small")
    ax.set_xlabel("input token (the lens decodes the prediction of the next token)")
    ax.set_ylabel("layer (resid_post)")
    fig.colorbar(image, ax=ax, label="top-1 probability")
    ax.set_title(f"Logit lens top-1 tokens: {model_name}")
    return fig


@figure_function
def plot_target_by_layer(
    by_layer: pd.DataFrame, layers: pd.DataFrame, model_name: str, target: str, style: FigureStyle
):
    """Probability and rank of the target at each text's last token, by layer (one line per text + mean)."""
    fig, axes = style.figure(1, 2, scale=(1.4, 1.0))
    ticks = layers["layer"].tolist()
    for text_id, frame in list(by_layer.groupby("text_id"))[:MAX_TEXT_LINES]:
        frame = frame.sort_values("layer")
        label = f"text {text_id}: {frame['target'].iloc[-1]!r}"
        axes[0, 0].plot(frame["layer"], frame["prob"], lw=0.8, alpha=0.6, label=label)
        axes[0, 1].plot(frame["layer"], frame["rank"], lw=0.8, alpha=0.6)
    axes[0, 0].plot(ticks, layers["target_prob_last"], color="black", lw=2, label="mean")
    axes[0, 1].plot(ticks, layers["target_rank_last_median"], color="black", lw=2, label="median")
    axes[0, 0].set_ylabel("target probability (last token)")
    axes[0, 0].set_ylim(-0.02, 1.02)
    axes[0, 0].legend(fontsize="x-small")
    axes[0, 1].set_yscale("log")
    axes[0, 1].invert_yaxis()
    axes[0, 1].set_ylabel("target rank (1 = top)")
    axes[0, 1].legend(fontsize="x-small")
    for ax in axes[0]:
        ax.set_xlabel("layer (-1 = embed)")
        ax.grid(alpha=0.3)
    fig.suptitle(f"Logit lens, target by layer: {model_name}\ntarget: {target}")
    return fig


@figure_function
def plot_kl_by_layer(layers: pd.DataFrame, model_name: str, style: FigureStyle):
    """Mean KL(final || lens) and top-1 agreement with the final prediction, by layer."""
    fig, axes = style.figure(1, 2, scale=(1.4, 1.0))
    ax = axes[0, 0]
    ax.plot(layers["layer"], _positive(layers["kl_to_final"]), marker="o", markersize=3)
    ax.set_yscale("log")
    ax.set_ylabel("mean KL(final || lens), nats (last layer: 0)")
    ax = axes[0, 1]
    ax.plot(layers["layer"], layers["top1_agreement"], marker="o", markersize=3, color="tab:green")
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("top-1 agreement with the final prediction")
    for ax in axes[0]:
        ax.set_xlabel("layer (-1 = embed)")
        ax.grid(alpha=0.3)
    fig.suptitle(f"Logit lens by layer: {model_name}")
    return fig


@figure_function
def plot_lens_comparison(heldout: pd.DataFrame, training: pd.DataFrame, model_name: str, style: FigureStyle):
    """Held-out KL to the final distribution by layer, logit lens vs tuned lens; and the training curve."""
    fig, axes = style.figure(1, 2, scale=(1.4, 1.0))
    ax = axes[0, 0]
    ax.plot(heldout["layer"], _positive(heldout["logit_lens_kl"]), marker="o", markersize=3, label="logit lens")
    ax.plot(heldout["layer"], _positive(heldout["tuned_lens_kl"]), marker="o", markersize=3, label="tuned lens")
    ax.set_yscale("log")
    ax.set_xlabel("layer (-1 = embed)")
    ax.set_ylabel("held-out mean KL(final || lens), nats (last layer: 0)")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    ax = axes[0, 1]
    if len(training):
        ax.plot(training["step"], training["objective"], lw=1)
    ax.set_xlabel("training step")
    ax.set_ylabel("training objective (mean KL over layers)")
    ax.grid(alpha=0.3)
    fig.suptitle(f"Tuned lens vs logit lens: {model_name}")
    return fig
