"""Figures of the weight analysis: pure functions, data in, Figure out (redrawable from saved data)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from interpsuite.figures import FigureStyle, figure_function

#: above this many cells a layers x modules heatmap is not annotated with its values
MAX_ANNOTATED_CELLS = 120


@figure_function
def plot_module_heatmap(
    values: np.ndarray,
    layers: Sequence[int],
    kinds: Sequence[str],
    title: str,
    label: str,
    style: FigureStyle,
):
    """One statistic as a layers x modules heatmap (NaN cells, a module a layer lacks, stay blank).

    Layers run down the rows so a 30-layer model reads top to bottom like the network itself."""
    values = np.asarray(values, dtype=float)
    n_layers, n_kinds = values.shape
    fig, axes = style.figure(scale=(max(0.5, 0.15 * n_kinds + 0.4), max(0.6, 0.05 * n_layers + 0.5)))
    ax = axes[0, 0]
    image = ax.imshow(np.ma.masked_invalid(values), cmap=style.cmap, aspect="auto", interpolation="none")
    ax.set_xticks(range(n_kinds), list(kinds), rotation=45, ha="right")
    step = max(1, int(np.ceil(n_layers / 30)))
    ax.set_yticks(range(0, n_layers, step), [str(layers[i]) for i in range(0, n_layers, step)])
    ax.set_xlabel("module")
    ax.set_ylabel("layer")
    ax.set_title(title)
    if values.size <= MAX_ANNOTATED_CELLS:
        finite = values[np.isfinite(values)]
        middle = (finite.min() + finite.max()) / 2 if finite.size else 0.0
        for (i, j), value in np.ndenumerate(values):
            if np.isfinite(value):
                colour = "white" if value < middle else "black"
                ax.text(
                    j, i, f"{value:.3g}", ha="center", va="center", fontsize=max(5, style.font_size - 3), color=colour
                )
    fig.colorbar(image, ax=ax, label=label)
    return fig


@figure_function
def plot_magnitude_histograms(
    edges: np.ndarray,
    counts: np.ndarray,
    kinds: Sequence[str],
    tolerances: Sequence[float],
    style: FigureStyle,
):
    """Distribution of log10|w| per module kind (summed over layers, as a fraction of its weights),
    with the near-zero tolerances marked: the mass left of a line is what that tolerance calls zero."""
    edges = np.asarray(edges, dtype=float)
    counts = np.asarray(counts, dtype=float)
    fig, axes = style.figure()
    ax = axes[0, 0]
    centres = (edges[:-1] + edges[1:]) / 2
    for kind, row in zip(kinds, counts, strict=True):
        total = row.sum()
        ax.plot(centres, row / total if total else row, label=kind, drawstyle="steps-mid")
    for tolerance in tolerances:
        ax.axvline(np.log10(tolerance), color="grey", linestyle="--", linewidth=0.8)
        ax.text(np.log10(tolerance), ax.get_ylim()[1] * 0.95, f" {tolerance:g}", color="grey", va="top")
    ax.set_xlabel("log10 |w|")
    ax.set_ylabel("fraction of weights")
    ax.set_title("weight magnitudes (all layers; end bins hold everything beyond them)")
    ax.legend(ncol=2)
    ax.grid(alpha=0.3)
    return fig


@figure_function
def plot_spectra(
    spectra: np.ndarray,
    layers: Sequence[int],
    kinds: Sequence[str],
    style: FigureStyle,
):
    """Top singular values divided by the largest, one panel per module kind, one line per layer
    (dark = early, light = late): how fast a matrix's spectrum decays is what its effective rank sums up.

    `spectra` is [kind, layer, index] with NaN where a matrix has fewer values or was not analysed."""
    spectra = np.asarray(spectra, dtype=float)
    n_kinds = len(kinds)
    ncols = min(4, max(n_kinds, 1))
    nrows = int(np.ceil(n_kinds / ncols)) if n_kinds else 1
    fig, axes = style.figure(nrows, ncols, scale=(1.0, 0.6 * nrows))
    import matplotlib

    colours = matplotlib.colormaps[style.cmap](np.linspace(0.15, 0.9, max(len(layers), 1)))
    for k, (ax, kind) in enumerate(zip(axes.flat, kinds, strict=False)):
        for i, _layer in enumerate(layers):
            row = spectra[k, i]
            finite = np.isfinite(row) & (row > 0)
            if finite.any():
                ax.plot(np.nonzero(finite)[0], row[finite], color=colours[i], linewidth=0.9)
        ax.set_title(kind)
        ax.set_yscale("log")
        ax.set_xlabel("index")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n_kinds:]:
        ax.axis("off")
    axes[0, 0].set_ylabel("s_i / s_0")
    fig.suptitle(f"singular-value spectra (layers {layers[0]}..{layers[-1]}, light = later)" if layers else "spectra")
    return fig
