"""Pure plotting functions for attribution patching and circuit discovery: data in, Figure out."""

from __future__ import annotations

import numpy as np
import pandas as pd

from interpsuite.figures import FigureStyle, figure_function


def _symmetric_limit(values: np.ndarray) -> float:
    finite = np.abs(values[np.isfinite(values)])
    return float(finite.max()) if finite.size and finite.max() > 0 else 1.0


@figure_function
def plot_head_map(
    values: np.ndarray,
    layers: list[int],
    label: str,
    model_name: str,
    style: FigureStyle,
    outlined: list[tuple[int, int]] | None = None,
):
    """Layer x head heatmap (diverging, centred at 0); `outlined` heads get a black frame."""
    fig, axes = style.figure(1, 1, scale=(1.0, max(1.0, len(layers) / 14)))
    ax = axes[0, 0]
    limit = _symmetric_limit(values)
    image = ax.imshow(values, aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit)
    ax.set_yticks(range(len(layers)), [str(L) for L in layers], fontsize="x-small")
    ax.set_xticks(range(values.shape[1]))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    for layer, head in outlined or []:
        if layer in layers:
            row = layers.index(layer)
            ax.add_patch(_frame(head, row))
    fig.colorbar(image, ax=ax, label=label)
    ax.set_title(f"{label}: {model_name}", fontsize="medium")
    return fig


def _frame(x: float, y: float):
    from matplotlib.patches import Rectangle

    return Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=1.2)


@figure_function
def plot_attribution_vs_patching(estimate: np.ndarray, real: np.ndarray, model_name: str, style: FigureStyle):
    """Scatter of attribution-patching estimates against real head patching, with the diagonal."""
    fig, axes = style.figure(1, 1)
    ax = axes[0, 0]
    ax.scatter(real, estimate, s=10, alpha=0.7)
    lo = float(np.nanmin([real.min(), estimate.min()]))
    hi = float(np.nanmax([real.max(), estimate.max()]))
    ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8, ls="--", label="estimate = real")
    ax.set_xlabel("activation patching (normalised)")
    ax.set_ylabel("attribution patching estimate")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    ax.set_title(f"Heads: attribution vs activation patching\n{model_name}", fontsize="medium")
    return fig


@figure_function
def plot_layer_position(maps: dict[str, np.ndarray], layers: list[int], tokens: list[str], model_name: str, style):
    """One layer x position heatmap per site (estimate of patching that site at that position)."""
    n = len(maps)
    fig, axes = style.figure(1, n, scale=(0.9 * n, max(1.0, len(layers) / 14)))
    limit = max(_symmetric_limit(v) for v in maps.values())
    image = None
    for ax, (site, values) in zip(axes[0], maps.items(), strict=True):
        image = ax.imshow(values, aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit)
        ax.set_xticks(range(len(tokens)), [repr(t)[1:-1] for t in tokens], rotation=90, fontsize="x-small")
        ax.set_yticks(range(len(layers)), [str(L) for L in layers], fontsize="x-small")
        ax.set_title(site, fontsize="small")
        ax.set_xlabel("position")
    axes[0, 0].set_ylabel("layer")
    if image is not None:
        fig.colorbar(image, ax=list(axes[0]), label="estimated patching effect (normalised)")
    fig.suptitle(f"Attribution patching per layer and position: {model_name}", fontsize="medium")
    return fig


@figure_function
def plot_circuit_graph(heads: pd.DataFrame, n_layers: int, n_heads: int, model_name: str, style: FigureStyle):
    """The circuit as a graph: heads at (head, layer), coloured by their estimated importance.

    Edges join every circuit head to the circuit heads of later layers and to the logits node:
    they are the *possible* paths through the residual stream, not measured edge scores."""
    import matplotlib as mpl
    import networkx as nx

    fig, axes = style.figure(1, 1, scale=(1.0, 1.3))
    ax = axes[0, 0]
    graph = nx.DiGraph()
    pos: dict[str, tuple[float, float]] = {}
    importance = {}
    for r in heads.itertuples():
        node = f"L{int(r.layer)}H{int(r.head)}"
        graph.add_node(node)
        pos[node] = (float(r.head), float(r.layer))
        importance[node] = float(r.importance)
    top = float(max((L for _, L in pos.values()), default=0) + 1.5)
    graph.add_node("logits")
    pos["logits"] = ((n_heads - 1) / 2, top)
    for a in list(importance):
        graph.add_edge(a, "logits")
        for b in importance:
            if pos[a][1] < pos[b][1]:
                graph.add_edge(a, b)
    nodes = list(importance)
    values = np.array([importance[n] for n in nodes]) if nodes else np.zeros(0)
    limit = _symmetric_limit(values) if nodes else 1.0
    norm = mpl.colors.Normalize(vmin=-limit, vmax=limit)
    nx.draw_networkx_edges(graph, pos, ax=ax, edge_color="0.75", width=0.6, arrows=True, arrowsize=6, node_size=260)
    if nodes:
        nx.draw_networkx_nodes(
            graph, pos, nodelist=nodes, node_color=values, cmap="RdBu_r", vmin=-limit, vmax=limit, node_size=260, ax=ax
        )
    nx.draw_networkx_nodes(graph, pos, nodelist=["logits"], node_color="0.3", node_shape="s", node_size=420, ax=ax)
    nx.draw_networkx_labels(graph, pos, labels={n: n for n in graph.nodes}, font_size=5, ax=ax)
    label = "estimated loss of m when ablated (fraction of m)"
    fig.colorbar(mpl.cm.ScalarMappable(norm=norm, cmap="RdBu_r"), ax=ax, label=label)
    ax.set_xlim(-1, n_heads)
    ax.set_ylim(-1, top + 1)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.tick_params(left=True, bottom=True, labelleft=True, labelbottom=True)
    ax.set_title(
        f"Circuit: {len(nodes)} of {n_layers * n_heads} heads, {model_name}\n"
        "grey edges: possible paths through the residual stream (not measured)",
        fontsize="medium",
    )
    return fig


@figure_function
def plot_faithfulness(table: pd.DataFrame, target: float, model_name: str, style: FigureStyle):
    """Fraction of the clean logit difference kept under each ablation condition."""
    fig, axes = style.figure(1, 1)
    ax = axes[0, 0]
    colors = ["tab:green" if "circuit only" in c else "tab:red" if "circuit ablated" in c else "tab:grey"
              for c in table["condition"]]  # fmt: skip
    ax.barh(range(len(table)), table["fraction_kept"], xerr=table.get("std"), color=colors)
    ax.set_yticks(range(len(table)), table["condition"], fontsize="small")
    ax.invert_yaxis()
    ax.axvline(target, color="black", ls="--", lw=0.8, label=f"target {target:g}")
    ax.axvline(0, color="black", lw=0.5)
    ax.set_xlabel("fraction of the clean logit difference kept")
    ax.legend(fontsize="small")
    ax.set_title(f"Circuit faithfulness: {model_name}", fontsize="medium")
    return fig
