"""Figure style shared by all analyzers. Plot functions are pure: they return a Figure.

Nothing here calls `show()` or saves files; sinks decide where figures go.
"""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")  # figures are files, never windows (also on machines without a display)


@dataclass
class FigureStyle:
    width: float = 7.0
    height: float = 4.5
    dpi: int = 150
    font_size: int = 9
    cmap: str = "viridis"
    diverging_cmap: str = "RdBu_r"

    def figure(self, nrows: int = 1, ncols: int = 1, scale: tuple[float, float] = (1.0, 1.0)):
        import matplotlib.pyplot as plt

        with plt.rc_context({"font.size": self.font_size}):
            fig, axes = plt.subplots(
                nrows,
                ncols,
                figsize=(self.width * scale[0], self.height * scale[1]),
                dpi=self.dpi,
                squeeze=False,
                layout="constrained",
            )
        return fig, axes
