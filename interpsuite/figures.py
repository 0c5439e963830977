"""Figure style shared by all analyzers. Plot functions are pure: they return a Figure.

Nothing here calls `show()` or saves files; sinks decide where figures go.

Figures are plain `matplotlib.figure.Figure` objects, never pyplot's. pyplot keeps every figure
it makes in a global registry until someone closes it (a run of many analyzers leaked them and
hit "More than 20 figures have been opened"), and choosing a backend is the application's
business: interpsuite must not switch a notebook user's backend on import. A Figure made here
is freed like any other object once nothing refers to it and saves to any format without a
backend being selected.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # matplotlib is imported when the first figure is made, not with interpsuite
    import numpy as np
    from matplotlib.figure import Figure


@dataclass
class FigureStyle:
    width: float = 7.0
    height: float = 4.5
    dpi: int = 150
    font_size: int = 9
    cmap: str = "viridis"
    diverging_cmap: str = "RdBu_r"

    def figure(
        self, nrows: int = 1, ncols: int = 1, scale: tuple[float, float] = (1.0, 1.0)
    ) -> tuple[Figure, np.ndarray]:
        """A new Figure with an [nrows, ncols] array of axes (always 2-d, so callers index alike).

        Constrained layout keeps labels, titles and colorbars inside the figure; the font size
        applies to what is created here (tick labels), as with pyplot's rc_context before.
        """
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        with matplotlib.rc_context({"font.size": self.font_size}):
            fig = Figure(figsize=(self.width * scale[0], self.height * scale[1]), dpi=self.dpi, layout="constrained")
            # an Agg canvas attached the object-oriented way (no backend switch), so code written for
            # pyplot's Agg figures (`fig.canvas.draw()`, `fig.canvas.get_renderer()`) still works
            FigureCanvasAgg(fig)
            axes = fig.subplots(nrows, ncols, squeeze=False)
        return fig, axes
