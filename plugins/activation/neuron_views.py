"""Pure views for the neuron analyzers: matplotlib figures (data in, Figure out) and
self-contained HTML pages (a string; no network, every token html-escaped)."""

from __future__ import annotations

import html

import numpy as np
import pandas as pd

from interpsuite.figures import FigureStyle, figure_function

# --- max-activating examples ---------------------------------------------------------------

_PAGE_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.3em; } h2 { font-size: 1.05em; margin: 1.4em 0 0.4em; }
table { border-collapse: collapse; font-size: 0.9em; }
td, th { padding: 2px 8px; border-bottom: 1px solid #eee; text-align: left; vertical-align: top; }
.ctx { font-family: ui-monospace, monospace; white-space: pre; }
.tok { border-radius: 2px; }
.max { outline: 1px solid #b00; font-weight: bold; }
.meta { color: #666; font-size: 0.85em; }
"""


def _token_span(token: str, activation: float, scale: float, is_max: bool) -> str:
    """One token with a red background whose opacity is its activation / the neuron's max."""
    alpha = 0.0 if scale <= 0 else float(np.clip(activation / scale, 0.0, 1.0))
    cls = "tok max" if is_max else "tok"
    title = html.escape(f"{activation:.4g}", quote=True)
    return (
        f'<span class="{cls}" style="background: rgba(220, 30, 30, {alpha:.3f})" '
        f'title="{title}">{html.escape(token)}</span>'
    )


def max_activating_html(neurons: list[dict], title: str) -> str:
    """A self-contained page: per neuron, its top examples with the context highlighted.

    `neurons`: [{"layer", "unit", "hook_point", "examples": [{"rank", "activation", "text_id",
    "position", "tokens": [str], "activations": [float], "center": int}]}]; `center` indexes
    the max-activating token inside `tokens`.
    """
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{_PAGE_CSS}</style>",
        "</head>",
        "<body>",
        f"<h1>{html.escape(title)}</h1>",
        "<p class=\"meta\">Background intensity: the token's activation divided by the neuron's top "
        "activation (negative values are white). Hover a token for its value.</p>",
    ]
    for neuron in neurons:
        examples = neuron["examples"]
        scale = max((e["activation"] for e in examples), default=0.0)
        parts.append(
            f'<h2 id="L{neuron["layer"]}-U{neuron["unit"]}">layer {neuron["layer"]}, unit {neuron["unit"]} '
            f'<span class="meta">({html.escape(neuron["hook_point"])}, max {scale:.4g})</span></h2>'
        )
        parts.append("<table><tr><th>rank</th><th>activation</th><th>text</th><th>pos</th><th>context</th></tr>")
        for example in examples:
            spans = "".join(
                _token_span(token, float(act), scale, i == example["center"])
                for i, (token, act) in enumerate(zip(example["tokens"], example["activations"], strict=True))
            )
            parts.append(
                f"<tr><td>{example['rank']}</td><td>{example['activation']:.4g}</td>"
                f"<td>{example['text_id']}</td><td>{example['position']}</td>"
                f'<td class="ctx">{spans}</td></tr>'
            )
        parts.append("</table>")
    parts += ["</body>", "</html>"]
    return "\n".join(parts)


@figure_function
def plot_top_activations(table: pd.DataFrame, style: FigureStyle):
    """Each neuron's top-k activations (rank on x), one line per neuron."""
    fig, axes = style.figure(1, 1)
    ax = axes[0, 0]
    for (layer, unit), frame in table.groupby(["layer", "unit"], sort=False):
        ax.plot(frame["rank"], frame["activation"], marker="o", markersize=3, label=f"L{layer} U{unit}")
    ax.set_xlabel("rank of example")
    ax.set_ylabel("activation")
    ax.set_title("Top activations per neuron")
    ax.grid(alpha=0.3)
    if table[["layer", "unit"]].drop_duplicates().shape[0] <= 16:
        ax.legend(fontsize="x-small", ncol=2)
    return fig


# --- concept neurons -------------------------------------------------------------------------


@figure_function
def plot_effect_sizes(layer_best: pd.DataFrame, top: pd.DataFrame, concept: str, style: FigureStyle):
    """Left: the largest |Cohen's d| per layer. Right: the top neurons' signed d."""
    fig, axes = style.figure(1, 2, scale=(1.4, 1.0))
    left, right = axes[0, 0], axes[0, 1]
    left.plot(layer_best["layer"], layer_best["abs_d"], marker="o", markersize=3)
    left.set_xlabel("layer")
    left.set_ylabel("max |Cohen's d| (train)")
    left.set_title("Best effect size by layer")
    left.grid(alpha=0.3)
    labels = [f"L{layer} U{unit}" for layer, unit in zip(top["layer"], top["unit"], strict=True)]
    colors = ["tab:red" if d > 0 else "tab:blue" for d in top["cohens_d"]]
    right.barh(range(len(top)), top["cohens_d"], color=colors)
    right.set_yticks(range(len(top)), labels, fontsize="small")
    right.invert_yaxis()
    right.axvline(0, color="k", linewidth=0.6)
    right.set_xlabel("Cohen's d (train; red: fires more with the concept)")
    right.set_title("Top neurons by |d|")
    fig.suptitle(f"Concept neurons: {concept}")
    return fig


@figure_function
def plot_heldout_auc(top: pd.DataFrame, min_auc: float, concept: str, style: FigureStyle):
    """Held-out AUC of each top neuron as a one-neuron classifier, with 0.5 and min_auc marked."""
    fig, axes = style.figure(1, 1)
    ax = axes[0, 0]
    labels = [f"L{layer} U{unit}" for layer, unit in zip(top["layer"], top["unit"], strict=True)]
    ax.bar(range(len(top)), top["test_auc"], color="tab:purple")
    ax.set_xticks(range(len(top)), labels, rotation=60, ha="right", fontsize="small")
    ax.axhline(0.5, color="k", linestyle=":", linewidth=0.8, label="chance (0.5)")
    ax.axhline(min_auc, color="tab:red", linestyle="--", linewidth=0.8, label=f"min_auc ({min_auc:g})")
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("held-out AUC (sign-corrected)")
    ax.set_title(f"Top neurons as one-neuron classifiers: {concept}")
    ax.legend(fontsize="small")
    return fig


# --- activation clustering -------------------------------------------------------------------


@figure_function
def plot_cluster_projection(
    points: np.ndarray, labels: np.ndarray, names: list[str], method: str, title: str, style: FigureStyle
):
    """2-D projection of token activations coloured by cluster; each cluster labelled at its mean."""
    fig, axes = style.figure(1, 1, scale=(1.1, 1.2))
    ax = axes[0, 0]
    cmap = plt_colormap("tab10" if len(names) <= 10 else "tab20")
    for cluster, name in enumerate(names):
        members = points[labels == cluster]
        if not len(members):
            continue
        color = cmap(cluster % cmap.N)
        ax.scatter(members[:, 0], members[:, 1], s=6, alpha=0.7, color=color, label=f"{cluster}: {name}")
        cx, cy = members.mean(axis=0)
        ax.annotate(str(cluster), (cx, cy), fontsize="small", ha="center", weight="bold")
    if len(names) <= 20:
        ax.legend(fontsize="x-small", markerscale=2, title="cluster: most frequent token", title_fontsize="x-small")
    ax.set_xlabel(f"{method} 1")
    ax.set_ylabel(f"{method} 2")
    ax.set_title(title)
    return fig


def plt_colormap(name: str):
    import matplotlib

    return matplotlib.colormaps[name]
