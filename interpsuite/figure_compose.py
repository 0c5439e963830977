"""`interpsuite figures compose SPEC.yaml`: one multi-panel figure from the saved figures of runs.

A paper figure is often several analyses side by side ("a: logit lens, b: patching"). Each
panel is redrawn from its saved data (figure_data.py) into one part (a SubFigure) of a single
Figure, in one style, so fonts, sizes and colours agree across panels without any plot
function knowing it draws a panel: `FigureStyle.figure` makes the axes in the panel while
`style.drawing_into(panel)` is active. Panel letters and one colour bar shared by several
heatmaps (with common limits, so equal colours mean equal values) are added afterwards.

The spec is YAML (read with `yaml.safe_load`); paths in it are relative to the spec's folder
(docs/figures.md shows an example).
"""

from __future__ import annotations

import math
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError
from .figure_command import missing_data_error, saved_figures, select
from .figure_data import FigureRecipe
from .figures import FigureStyle, preset
from .settings import FIGURE_FORMATS

if TYPE_CHECKING:
    from matplotlib.figure import Figure, SubFigure

SPEC_KEYS = (
    "style",
    "column",
    "font_size",
    "layout",
    "size",
    "letters",
    "output",
    "formats",
    "panels",
    "shared_colorbar",
)
PANEL_KEYS = ("run", "figure", "title")
COLORBAR_KEYS = ("label", "panels")


@dataclass
class Panel:
    """One panel: the figure `figure` ("analyzer.figure") of the run in `run`."""

    run: Path
    figure: str
    title: str | None = None


@dataclass
class SharedColorbar:
    """One colour bar, with common limits, for the images and meshes of `panels` (indices)."""

    panels: list[int]
    label: str | None = None


@dataclass
class ComposeSpec:
    """A validated compose spec (paths resolved against the spec's folder)."""

    path: Path
    style: FigureStyle
    rows: int
    cols: int
    panels: list[Panel]
    output: Path
    formats: list[str] = field(default_factory=lambda: ["pdf"])
    size: tuple[float, float] | None = None
    letters: bool = True
    shared_colorbar: SharedColorbar | None = None

    @property
    def figsize(self) -> tuple[float, float]:
        """The size asked for, or the style's width and its height once per row of panels."""
        if self.size is not None:
            return self.size
        return self.style.width, self.style.height * self.rows


# --- the spec ---------------------------------------------------------------------------------------
def load_spec(path: str | Path) -> ComposeSpec:
    """Read and check a compose spec; every problem is one ConfigError naming the key."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such compose spec file; give the path of a YAML file (docs/figures.md)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{path}: not a readable YAML file ({first})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a compose spec is a mapping with at least `panels:`; see docs/figures.md")

    def bad(key: str, problem: str) -> ConfigError:
        return ConfigError(f"{path}: {key}: {problem}")

    unknown = sorted(str(k) for k in raw if k not in SPEC_KEYS)
    if unknown:
        raise bad(unknown[0], f"unknown key; the keys are {', '.join(SPEC_KEYS)}")

    font_size = raw.get("font_size")
    if font_size is not None and (not _is_number(font_size) or font_size <= 0):
        raise bad("font_size", f"{font_size!r} is not a positive number of points")
    for key in ("style", "column"):
        if key in raw and not isinstance(raw[key], str):
            raise bad(key, f"{raw[key]!r} is not a name")
    try:
        style = preset(raw.get("style", "paper"), raw.get("column", "double"), font_size=font_size)
    except ConfigError as err:
        raise bad("style" if "column" not in str(err) else "column", str(err)) from None

    panels = _panels(raw.get("panels"), path.parent, bad)
    rows, cols = _layout(raw.get("layout"), len(panels), bad)

    size = raw.get("size")
    if size is not None:
        if not isinstance(size, list) or len(size) != 2 or not all(_is_number(v) and v > 0 for v in size):
            raise bad("size", f"{size!r} is not [width, height] in inches (positive numbers), or null")
        size = (float(size[0]), float(size[1]))

    letters = raw.get("letters", True)
    if not isinstance(letters, bool):
        raise bad("letters", f"{letters!r} is not true or false")

    output = raw.get("output", path.stem)
    if not isinstance(output, str) or not output.strip():
        raise bad("output", f"{output!r} is not a file stem (e.g. figure1)")

    formats = raw.get("formats", ["pdf"])
    if isinstance(formats, str):
        formats = [formats]
    if not isinstance(formats, list) or not formats:
        raise bad("formats", f"{formats!r} is not a list of formats ({', '.join(FIGURE_FORMATS)})")
    for fmt in formats:
        if fmt not in FIGURE_FORMATS:
            raise bad("formats", f"{fmt!r} is not one of {', '.join(FIGURE_FORMATS)}")

    output_path = path.parent / output
    if output_path.suffix.lstrip(".") in FIGURE_FORMATS:  # `output: figure1.pdf` means the stem figure1
        output_path = output_path.with_suffix("")
    return ComposeSpec(
        path=path,
        style=style,
        rows=rows,
        cols=cols,
        panels=panels,
        output=output_path,
        formats=list(formats),
        size=size,
        letters=letters,
        shared_colorbar=_shared_colorbar(raw.get("shared_colorbar"), len(panels), bad),
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _panels(raw: Any, base: Path, bad) -> list[Panel]:
    if not isinstance(raw, list) or not raw:
        raise bad("panels", "give a non-empty list of panels, each {run: RUN_DIR, figure: analyzer.figure}")
    panels = []
    for i, item in enumerate(raw):
        key = f"panels[{i}]"
        if not isinstance(item, dict):
            raise bad(key, f"{item!r} is not a mapping {{run: RUN_DIR, figure: analyzer.figure}}")
        unknown = sorted(str(k) for k in item if k not in PANEL_KEYS)
        if unknown:
            raise bad(f"{key}.{unknown[0]}", f"unknown key; a panel has {', '.join(PANEL_KEYS)}")
        for name in ("run", "figure"):
            if not isinstance(item.get(name), str) or not item[name].strip():
                raise bad(f"{key}.{name}", f"missing or not a string ({item.get(name)!r})")
        title = item.get("title")
        if title is not None and not isinstance(title, str):
            raise bad(f"{key}.title", f"{title!r} is not a string")
        panels.append(Panel(base / item["run"], item["figure"], title))
    return panels


def _layout(raw: Any, n_panels: int, bad) -> tuple[int, int]:
    if raw is None:
        return 1, n_panels
    if (
        not isinstance(raw, list)
        or len(raw) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in raw)
    ):
        raise bad("layout", f"{raw!r} is not [rows, columns] (positive integers)")
    rows, cols = raw
    if rows * cols < n_panels:
        raise bad("layout", f"{raw!r} has {rows * cols} places for {n_panels} panels; make it larger")
    return rows, cols


def _shared_colorbar(raw: Any, n_panels: int, bad) -> SharedColorbar | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise bad("shared_colorbar", f"{raw!r} is not {{label: ..., panels: [0, 1]}} or null")
    unknown = sorted(str(k) for k in raw if k not in COLORBAR_KEYS)
    if unknown:
        raise bad(f"shared_colorbar.{unknown[0]}", f"unknown key; it has {', '.join(COLORBAR_KEYS)}")
    label = raw.get("label")
    if label is not None and not isinstance(label, str):
        raise bad("shared_colorbar.label", f"{label!r} is not a string")
    panels = raw.get("panels", list(range(n_panels)))
    if not isinstance(panels, list) or not panels:
        raise bad("shared_colorbar.panels", f"{panels!r} is not a non-empty list of panel numbers (from 0)")
    for index in panels:
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < n_panels:
            raise bad("shared_colorbar.panels", f"{index!r} is not a panel number (0 to {n_panels - 1})")
    if len(set(panels)) != len(panels):
        raise bad("shared_colorbar.panels", f"{panels!r} names a panel twice")
    return SharedColorbar(list(panels), label)


# --- drawing ----------------------------------------------------------------------------------------
def panel_letter(index: int) -> str:
    """a, b, ..., z, aa, ab, ...: the letter of the panel at `index`."""
    letters = string.ascii_lowercase
    return letters[index] if index < len(letters) else panel_letter(index // len(letters) - 1) + letters[index % 26]


def find_panel_data(panel: Panel, index: int, spec_path: Path) -> Path:
    """The saved data folder of a panel's figure (errors name the panel and say what to fix)."""
    key = f"{spec_path}: panels[{index}]"
    try:
        figures = saved_figures(panel.run)
        chosen = select(figures, [panel.figure], what=f"{key}.figure")
    except ConfigError as err:
        message = str(err)
        raise ConfigError(message if message.startswith(key) else f"{key}: {message}") from None
    if len(chosen) > 1:
        keys = ", ".join(f.key for f in chosen)
        raise ConfigError(f"{key}.figure: {panel.figure!r} names {len(chosen)} figures ({keys}); give one of them")
    if chosen[0].data is None:
        raise ConfigError(f"{key}: {missing_data_error(panel.run, chosen[0].key)}")
    return chosen[0].data


def compose(spec: ComposeSpec) -> Figure:
    """The composed Figure: every panel redrawn into its SubFigure, then letters and colour bar."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    style = spec.style
    recipes = []
    for i, panel in enumerate(spec.panels):  # every panel's data is checked before anything is drawn
        folder = find_panel_data(panel, i, spec.path)
        try:
            recipes.append(FigureRecipe.load(folder))
        except ConfigError as err:
            raise ConfigError(f"{spec.path}: panels[{i}] ({panel.figure}): {err}") from None
    with style.context():
        figure = Figure(figsize=spec.figsize, dpi=style.dpi, layout="constrained")
        FigureCanvasAgg(figure)  # as FigureStyle.figure: an Agg canvas without a backend switch
        grid = figure.subfigures(spec.rows, spec.cols, squeeze=False)
        targets = list(grid.flat)
        for i, (panel, recipe) in enumerate(zip(spec.panels, recipes, strict=True)):
            target = targets[i]
            try:
                with style.drawing_into(target):
                    drawn = recipe.draw(style)
            except ConfigError as err:
                raise ConfigError(f"{spec.path}: panels[{i}] ({panel.figure}): {err}") from None
            except Exception as err:  # a plot function's own failure, as one line
                first = (str(err).strip().splitlines() or [""])[0]
                raise ConfigError(
                    f"{spec.path}: panels[{i}] ({panel.figure}): drawing failed ({type(err).__name__}: {first})"
                ) from None
            if drawn is not target:
                raise ConfigError(
                    f"{spec.path}: panels[{i}] ({panel.figure}): {recipe.function} makes its own Figure instead of "
                    "drawing through style.figure(...), so it cannot be a panel"
                )
            if panel.title is not None:
                target.suptitle(panel.title)
        for target in targets[len(spec.panels) :]:  # places the layout has left over stay blank
            target.set_visible(False)
        if spec.shared_colorbar is not None:
            share_colorbar(spec, [targets[i] for i in spec.shared_colorbar.panels])
        if spec.letters:
            size = style.rc()["figure.titlesize"]
            for i in range(len(spec.panels)):
                target = targets[i]
                if target._suptitle is None:  # a title row, so the letter has its own space
                    target.suptitle(" ")
                target.text(
                    0.0,
                    1.0,
                    panel_letter(i),
                    transform=target.transSubfigure,
                    ha="left",
                    va="top",
                    fontweight="bold",
                    fontsize=size,
                )
    return figure


def _is_colorbar_axes(ax: Any) -> bool:
    return getattr(ax, "_colorbar", None) is not None


def color_mappables(panel: SubFigure) -> list:
    """The images, meshes and colour-mapped collections drawn in a panel (not in its colour bars)."""
    from matplotlib.cm import ScalarMappable

    found = []
    for ax in panel.axes:
        if _is_colorbar_axes(ax):
            continue
        for artist in (*ax.images, *ax.collections):
            if isinstance(artist, ScalarMappable) and artist.get_array() is not None:
                found.append(artist)
    return found


def share_colorbar(spec: ComposeSpec, panels: list[SubFigure]) -> None:
    """One colour bar with common limits for the group; the panels' own colour bars go."""
    assert spec.shared_colorbar is not None
    key = f"{spec.path}: shared_colorbar.panels"
    mappables = []
    for index, panel in zip(spec.shared_colorbar.panels, panels, strict=True):
        found = color_mappables(panel)
        if not found:
            raise ConfigError(
                f"{key}: panel {index} ({spec.panels[index].figure}) has no image or mesh to share a colour bar; "
                "list only heatmap panels"
            )
        mappables += found
    cmaps = sorted({m.get_cmap().name for m in mappables})
    if len(cmaps) > 1:
        raise ConfigError(f"{key}: the panels use different colour maps ({', '.join(cmaps)}); share one bar per map")
    norms = sorted({type(m.norm).__name__ for m in mappables})
    if len(norms) > 1:
        raise ConfigError(f"{key}: the panels use different colour scales ({', '.join(norms)}); share one per scale")
    limits = [m.get_clim() for m in mappables]
    lows = [low for low, _ in limits if low is not None]
    highs = [high for _, high in limits if high is not None]
    if not lows or not highs:
        raise ConfigError(f"{key}: the panels' colour scales have no limits to share")
    vmin, vmax = min(lows), max(highs)
    for panel in panels:
        for ax in list(panel.axes):
            if _is_colorbar_axes(ax):
                ax._colorbar.remove()
    for mappable in mappables:
        mappable.set_clim(vmin, vmax)
    # constrained layout lays a colour bar out beside axes of its own (sub)figure only, so the
    # bar sits beside the group's last panel, spanning that panel's axes
    last = panels[-1]
    axes = [ax for ax in last.axes if not _is_colorbar_axes(ax)]
    last.colorbar(mappables[-1], ax=axes, label=spec.shared_colorbar.label)


# --- the command ------------------------------------------------------------------------------------
def compose_command(spec_path: Path, out: str | None, formats: list[str] | None) -> int:
    """Read the spec, compose, save; `out` (a file stem) and `formats` override the spec's."""
    from .sinks.rundir import save_figure

    spec = load_spec(spec_path)
    if formats:
        unknown = [f for f in formats if f not in FIGURE_FORMATS]
        if unknown:
            raise ConfigError(f"--format {unknown[0]}: not one of {', '.join(FIGURE_FORMATS)}")
        spec.formats = list(dict.fromkeys(formats))
    if out is not None:
        stem = Path(out)
        spec.output = stem.with_suffix("") if stem.suffix.lstrip(".") in FIGURE_FORMATS else stem
    figure = compose(spec)
    spec.output.parent.mkdir(parents=True, exist_ok=True)
    with spec.style.context():
        written = save_figure(figure, spec.output, spec.formats)
    print(f"{len(spec.panels)} panels composed into {', '.join(str(p) for p in written)}")
    return 0
