"""Pure plotting functions of `steering`: numbers in, Figure out (never shown, never saved)."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import numpy as np
import pandas as pd

from interpsuite.figures import FigureStyle, figure_function

#: characters per line of a generation in the generations figure
WRAP = 70


@figure_function
def plot_target_probs(
    coefficients: Sequence[float],
    mean_probs: np.ndarray,
    labels: Sequence[str],
    log_odds: np.ndarray | None,
    title: str,
    style: FigureStyle,
):
    """Mean probability of each target against the steering coefficient (log scale), and the
    mean log-odds of the first two targets when there are two or more."""
    panels = 2 if log_odds is not None else 1
    fig, axes = style.figure(1, panels, scale=(0.6 * panels + 0.2, 0.85))
    ax = axes[0, 0]
    floor = np.finfo(np.float64).tiny
    for t, label in enumerate(labels):
        ax.plot(coefficients, np.maximum(mean_probs[:, t], floor), marker="o", label=repr(label))
    ax.set_yscale("log")
    ax.axvline(0.0, color="0.7", linewidth=0.8)
    ax.set_xlabel("steering coefficient")
    ax.set_ylabel("mean probability at the last token")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    if log_odds is not None:
        ax = axes[0, 1]
        ax.plot(coefficients, log_odds, marker="o", color="#2ca02c")
        ax.axhline(0.0, color="0.7", linewidth=0.8)
        ax.axvline(0.0, color="0.7", linewidth=0.8)
        ax.set_xlabel("steering coefficient")
        ax.set_ylabel(f"mean log p({labels[0]!r}) - log p({labels[1]!r})")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return fig


def visible(text: str) -> str:
    """Text safe for the figure's font: newlines as a return arrow, other control characters and
    characters beyond Latin (which DejaVu Sans Mono may lack) as escapes, `$` not read as mathtext."""
    out = []
    for ch in text:
        if ch == "\n":
            out.append("\u21b5")
        elif ch.isprintable() and ord(ch) < 0x370:
            out.append(r"\$" if ch == "$" else ch)
        else:
            out.append(ch.encode("unicode_escape").decode("ascii"))
    return "".join(out)


@figure_function
def plot_generations(generations: pd.DataFrame, title: str, style: FigureStyle):
    """The greedy continuations as text: one panel per prompt, one line per coefficient."""
    prompts = list(dict.fromkeys(generations["prompt_id"]))
    blocks = []
    n_lines = 0
    for p in prompts:
        rows = generations[generations["prompt_id"] == p].sort_values("coefficient")
        lines = []
        for r in rows.itertuples():
            text = visible(r.generation)
            wrapped = textwrap.wrap(f"{r.coefficient:+g}: {text}", WRAP, subsequent_indent="      ") or [""]
            lines.extend(wrapped)
        blocks.append((rows["prompt"].iloc[0], lines))
        n_lines += len(lines) + 2
    fig, axes = style.figure(len(prompts), 1, scale=(1.3, max(0.3, 0.05 * n_lines)))
    for ax, (prompt, lines) in zip(axes[:, 0], blocks, strict=True):
        ax.axis("off")
        ax.set_title(visible(repr(prompt)), loc="left", fontsize=style.font_size)
        ax.text(0.0, 1.0, "\n".join(lines), va="top", ha="left", family="monospace", fontsize=style.font_size - 1.5)
    fig.suptitle(title)
    return fig
