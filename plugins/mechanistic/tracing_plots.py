"""Pure plotting functions for causal tracing: data in, Figure out (ROME-style heatmaps)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from interpsuite.figures import FigureStyle, figure_function

#: one colour map per kind, as in Meng et al. 2022 (hidden states purple, MLP green, attention red)
KIND_CMAPS: dict[str, str] = {"resid": "Purples", "mlp": "Greens", "attn": "Reds"}
KIND_TITLES: dict[str, str] = {
    "resid": "single restored hidden state",
    "mlp": "restored MLP outputs, window of {w}",
    "attn": "restored attention outputs, window of {w}",
}


def _heatmap(fig, ax, values: np.ndarray, kind: str, label: str):
    finite = values[np.isfinite(values)]
    low = min(0.0, float(finite.min())) if finite.size else 0.0
    high = float(finite.max()) if finite.size and finite.max() > low else low + 1e-6
    image = ax.imshow(values, aspect="auto", cmap=KIND_CMAPS.get(kind, "viridis"), vmin=low, vmax=high)
    fig.colorbar(image, ax=ax, label=label)


@figure_function
def plot_bucket_heatmaps(
    tables: Mapping[str, pd.DataFrame],
    bucket_labels: Mapping[str, str],
    n_prompts: int,
    window: int,
    model_name: str,
    style: FigureStyle,
):
    """Mean indirect effect, position bucket (rows) x layer (columns), one panel per kind."""
    kinds = list(tables)
    fig, axes = style.figure(len(kinds), 1, scale=(1.0, 0.55 * len(kinds)))
    buckets = list(bucket_labels)
    for ax, kind in zip(axes[:, 0], kinds, strict=True):
        table = tables[kind]
        values = table[buckets].to_numpy(dtype=float).T
        _heatmap(fig, ax, values, kind, "mean IE on p(answer)")
        ax.set_yticks(range(len(buckets)), [bucket_labels[b] for b in buckets])
        layers = table["layer"].tolist()
        step = max(1, len(layers) // 15)
        ax.set_xticks(range(0, len(layers), step), [str(layers[i]) for i in range(0, len(layers), step)])
        ax.set_xlabel("restored layer" if kind == "resid" else "centre of the restored window of layers")
        ax.set_title(f"{kind}: {KIND_TITLES.get(kind, kind).format(w=window)}", fontsize="medium")
    fig.suptitle(f"Causal tracing: {model_name}, average over {n_prompts} prompts")
    return fig


@figure_function
def plot_prompt_grid(
    grids: Mapping[str, np.ndarray],
    tokens: Sequence[str],
    subject: tuple[int, int],
    title: str,
    p_clean: float,
    p_corrupted: float,
    window: int,
    style: FigureStyle,
):
    """One prompt's indirect effects, token (rows) x layer (columns), one panel per kind.
    Subject tokens are marked with '*'."""
    kinds = list(grids)
    fig, axes = style.figure(1, len(kinds), scale=(0.55 * len(kinds), 0.3 + 0.08 * len(tokens)))
    labels = [f"{tok!r}*" if subject[0] <= i < subject[1] else repr(tok) for i, tok in enumerate(tokens)]
    for ax, kind in zip(axes[0], kinds, strict=True):
        values = grids[kind].T  # [T, layers]
        _heatmap(fig, ax, values, kind, "IE")
        ax.set_yticks(range(len(tokens)), labels, fontsize="x-small")
        n_layers = values.shape[1]
        step = max(1, n_layers // 8)
        ax.set_xticks(range(0, n_layers, step), [str(i) for i in range(0, n_layers, step)])
        ax.set_xlabel("layer" if kind == "resid" else f"window centre ({window} layers)")
        ax.set_title(kind, fontsize="medium")
    fig.suptitle(f"{title}\np(clean) = {p_clean:.3f}, p(corrupted) = {p_corrupted:.3f}", fontsize="medium")
    return fig
