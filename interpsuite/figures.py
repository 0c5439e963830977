"""Figure style shared by all analyzers, and the mark of a figure function.

Plot functions are pure: data in, a Figure out. Nothing here calls `show()` or saves files;
sinks decide where figures go. A plot function marked with `@figure_function` and called
through `Result.add_figure` has its data saved beside the figure (docs/results.md), so that
`interpsuite figures RUN_DIR --style paper` redraws it later without the model.

Figures are plain `matplotlib.figure.Figure` objects, never pyplot's. pyplot keeps every figure
it makes in a global registry until someone closes it (a run of many analyzers leaked them and
hit "More than 20 figures have been opened"), and choosing a backend is the application's
business: interpsuite must not switch a notebook user's backend on import. A Figure made here
is freed like any other object once nothing refers to it and saves to any format without a
backend being selected.

Styles: every plot function draws through `style.figure(...)` and runs inside `style.context()`
(which `Result.add_figure` and the redraw command provide), so a preset reaches every label,
title, legend and line colour without the plot function knowing which preset it is. Presets
differ in size, font size, resolution and palette; all of them embed fonts as TrueType (Type 42)
in PDF, which venues that reject Type 3 fonts accept and vector editors can edit.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:  # matplotlib is imported when the first figure is made, not with interpsuite
    import numpy as np
    from matplotlib.figure import Figure, SubFigure

#: Okabe & Ito's palette (2008): distinguishable under the common colour-vision deficiencies
#: and in greyscale print; black is last so it is used only by plots with many lines
COLORBLIND_PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")

#: text widths in inches: `single` is one column of a two-column venue (ICML, NeurIPS workshop,
#: ACL, IEEE: 3.25-3.3 in), `double` the full text width of a two-column page (6.75-7.0 in)
COLUMN_WIDTHS = {"single": 3.25, "double": 6.75}


@dataclass
class FigureStyle:
    """Size, fonts, resolution and colours of every figure a run draws.

    `fixed_width`: the figure is always `width` wide (a paper column) and a plot function's
    `scale` only changes its aspect ratio; otherwise `scale` multiplies width and height.
    `palette`: the line and bar colours in order (None: matplotlib's default cycle).
    `cmap` is for unsigned data, `diverging_cmap` for signed data centred on zero.
    """

    width: float = 7.0
    height: float = 4.5
    dpi: int = 150
    font_size: float = 9
    cmap: str = "viridis"
    diverging_cmap: str = "RdBu_r"
    palette: list[str] | None = None
    fixed_width: bool = False
    line_width: float | None = None
    name: str = "default"
    #: where `figure()` draws instead of a new Figure (a panel of a composed figure); not saved
    _target: Any = field(default=None, repr=False, compare=False)

    def rc(self) -> dict[str, Any]:
        """The matplotlib settings this style stands for (applied by `context()`)."""
        small = max(self.font_size - 1, 5)
        params: dict[str, Any] = {
            "font.size": self.font_size,
            "axes.titlesize": self.font_size,
            "axes.labelsize": self.font_size,
            "legend.fontsize": small,
            "xtick.labelsize": small,
            "ytick.labelsize": small,
            "figure.titlesize": self.font_size + 1,
            "image.cmap": self.cmap,
            "pdf.fonttype": 42,
            "ps.fonttype": 42,
            "svg.fonttype": "path",
        }
        if self.palette:
            from cycler import cycler

            params["axes.prop_cycle"] = cycler(color=list(self.palette))
        if self.line_width is not None:
            params["lines.linewidth"] = self.line_width
        return params

    @contextlib.contextmanager
    def context(self) -> Iterator[FigureStyle]:
        """Apply the style to everything drawn (and saved) inside the block."""
        import matplotlib

        with matplotlib.rc_context(self.rc()):
            yield self

    def size(self, scale: tuple[float, float] = (1.0, 1.0)) -> tuple[float, float]:
        if self.fixed_width:
            return self.width, self.height * scale[1] / max(scale[0], 1e-9)
        return self.width * scale[0], self.height * scale[1]

    def figure(
        self, nrows: int = 1, ncols: int = 1, scale: tuple[float, float] = (1.0, 1.0)
    ) -> tuple[Figure | SubFigure, np.ndarray]:
        """A new Figure with an [nrows, ncols] array of axes (always 2-d, so callers index alike).

        Constrained layout keeps labels, titles and colorbars inside the figure. Inside
        `drawing_into(panel)` the axes are made in that panel of a composed figure instead.
        """
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        with matplotlib.rc_context(self.rc()):
            if self._target is not None:
                return self._target, self._target.subplots(nrows, ncols, squeeze=False)
            fig = Figure(figsize=self.size(scale), dpi=self.dpi, layout="constrained")
            # an Agg canvas attached the object-oriented way (no backend switch), so code written for
            # pyplot's Agg figures (`fig.canvas.draw()`, `fig.canvas.get_renderer()`) still works
            FigureCanvasAgg(fig)
            axes = fig.subplots(nrows, ncols, squeeze=False)
        return fig, axes

    @contextlib.contextmanager
    def drawing_into(self, target: SubFigure) -> Iterator[FigureStyle]:
        """Plot functions called with this style inside the block draw into `target`."""
        previous, self._target = self._target, target
        try:
            yield self
        finally:
            self._target = previous

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if not f.name.startswith("_")}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FigureStyle:
        known = {f.name for f in dataclasses.fields(cls) if not f.name.startswith("_")}
        return cls(**{k: v for k, v in values.items() if k in known})


def preset(name: str = "default", column: str = "double", **overrides: Any) -> FigureStyle:
    """A named style: default (screen), paper (a venue's column), slides, poster.

    `column` (paper only): single or double column width. `overrides` replace any field
    (font_size=10, dpi=600, ...).
    """
    from .errors import ConfigError

    if name not in STYLE_PRESETS:
        raise ConfigError(f"figure style {name!r} is not one of {', '.join(STYLE_PRESETS)}")
    if column not in COLUMN_WIDTHS:
        raise ConfigError(f"figure style column {column!r} is not one of {', '.join(COLUMN_WIDTHS)}")
    values = dict(STYLE_PRESETS[name](column))
    values.update({k: v for k, v in overrides.items() if v is not None})
    return FigureStyle(name=name, **values)


def _paper(column: str) -> dict[str, Any]:
    width = COLUMN_WIDTHS[column]
    # 8 pt matches the captions of 10 pt body text; 6.5 pt is the smallest most venues allow
    return {
        "width": width,
        "height": width * (0.62 if column == "double" else 0.75),
        "dpi": 300,
        "font_size": 8 if column == "double" else 7,
        "palette": list(COLORBLIND_PALETTE),
        "fixed_width": True,
        "line_width": 1.0,
    }


STYLE_PRESETS: dict[str, Callable[[str], dict[str, Any]]] = {
    "default": lambda column: {},
    "paper": _paper,
    "slides": lambda column: {
        "width": 10.0,
        "height": 5.6,
        "dpi": 150,
        "font_size": 14,
        "palette": list(COLORBLIND_PALETTE),
        "fixed_width": True,
        "line_width": 2.0,
    },
    "poster": lambda column: {
        "width": 12.0,
        "height": 8.0,
        "dpi": 200,
        "font_size": 20,
        "palette": list(COLORBLIND_PALETTE),
        "fixed_width": True,
        "line_width": 2.5,
    },
}

F = TypeVar("F", bound=Callable[..., Any])

#: the attribute `figure_function` sets; `interpsuite figures` calls only functions that carry it
FIGURE_FUNCTION_MARK = "__interpsuite_figure__"


def figure_function(fn: F) -> F:
    """Mark a pure plot function (data and a FigureStyle in, a Figure out) as redrawable.

    `Result.add_figure(name, fn, *args)` saves `args` with the figure; `interpsuite figures`
    imports `fn` by its module and name and calls it again with them. Only marked functions
    are ever called from saved data, so a results folder cannot name an arbitrary callable.
    """
    setattr(fn, FIGURE_FUNCTION_MARK, True)
    return fn
