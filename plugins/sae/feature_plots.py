"""Pure figure functions for SAE features: data in, Figure out (redrawable from saved args).

Arguments are plain arrays, lists and dicts (what the figure recipe codec saves), never a
FeatureReport: a results folder must be redrawable without interpsuite's classes or the model.
`FeatureReport.cards()` makes the data for `plot_feature_cards`.
"""

from __future__ import annotations

import math

import numpy as np

from interpsuite.figures import FigureStyle, figure_function

__all__ = ["plot_feature_cards", "plot_feature_density"]

#: cards drawn at most (small multiples stop being readable beyond this)
MAX_CARDS = 8


def _plain(text: str) -> str:
    """Token text shown literally: a "$" would otherwise start matplotlib mathtext."""
    return text.replace("$", r"\$")


@figure_function
def plot_feature_density(density: np.ndarray, style: FigureStyle, title: str = ""):
    """Histogram of log10(feature density), the standard SAELens health plot.

    Dead latents (density 0) have no logarithm, so they are counted in an annotation rather than
    dropped silently; a second mode at high density flags dense latents."""
    density = np.asarray(density, dtype=np.float64).ravel()
    alive = density[density > 0]
    dead = int((density == 0).sum())
    fig, axes = style.figure(1, 1)
    ax = axes[0, 0]
    if alive.size:
        logs = np.log10(alive)
        low, high = float(logs.min()), float(logs.max())
        if high - low < 1e-9:
            low, high = low - 0.5, high + 0.5
        ax.hist(logs, bins=np.linspace(low, high, 51))
    ax.set_xlabel("log10 feature density (fraction of tokens active)")
    ax.set_ylabel("latents")
    share = dead / max(density.size, 1)
    ax.text(
        0.98,
        0.95,
        f"dead (never active): {dead} of {density.size} ({share:.1%})",
        transform=ax.transAxes,
        ha="right",
        va="top",
        fontsize="small",
    )
    ax.set_title(title or "Feature density")
    ax.grid(alpha=0.3)
    return fig


@figure_function
def plot_feature_cards(cards: list[dict], style: FigureStyle, title: str = ""):
    """Small multiples, one per feature (at most 8): its histogram of non-zero activations, with
    its id, density and top logit tokens in the panel title.

    Each card is a dict: feature (int), counts (list[int]), edges (list[float], len(counts) + 1),
    density (float) and optionally top_logits (list[str]) and top_token (str)."""
    cards = list(cards)[:MAX_CARDS]
    n = max(len(cards), 1)
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig, axes = style.figure(rows, cols, scale=(1.0 + 0.15 * cols, 0.45 * rows + 0.25))
    for ax in axes.flat[len(cards) :]:
        ax.set_visible(False)
    for ax, card in zip(axes.flat, cards, strict=False):
        counts = np.asarray(card.get("counts", []), dtype=np.float64)
        edges = np.asarray(card.get("edges", []), dtype=np.float64)
        if counts.size and edges.size == counts.size + 1:
            ax.stairs(counts, edges, fill=True, alpha=0.8)
        ax.set_xlabel("activation")
        logits = _plain(", ".join(repr(t) for t in card.get("top_logits", [])[:3]))
        head = f"#{card.get('feature')} density {card.get('density', 0.0):.2g}"
        ax.set_title(f"{head}\n{logits}" if logits else head, fontsize="small")
        ax.tick_params(labelsize="x-small")
    if len(cards):
        axes[0, 0].set_ylabel("tokens")
    else:
        axes[0, 0].set_visible(True)
        axes[0, 0].text(0.5, 0.5, "no features", ha="center", va="center", transform=axes[0, 0].transAxes)
    fig.suptitle(title or "Features: activation histograms")
    return fig
