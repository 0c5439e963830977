"""`interpsuite figures RUN_DIR`: redraw a finished run's figures from their saved data.

No model is loaded and nothing is recomputed: each figure's function is called again with
the data saved beside it (figure_data.py), in the style asked for. Output names are
`<analyzer>-<figure>.<format>` with no spaces, so they go into `\\includegraphics` as they are.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError
from .figure_data import FigureRecipe
from .figures import COLUMN_WIDTHS, STYLE_PRESETS, FigureStyle, preset
from .results import RESULTS_FILE, read_results
from .settings import FIGURE_FORMATS
from .sinks.rundir import safe_name, save_figure

#: `--style run`: the style the run itself used (a redraw then matches its figures exactly)
RUN_STYLE = "run"


@dataclass
class SavedFigure:
    """One figure of a run: where its data is, if it was saved."""

    analyzer: str
    name: str
    data: Path | None

    @property
    def key(self) -> str:
        return f"{self.analyzer}.{self.name}"

    @property
    def file_stem(self) -> str:
        return f"{safe_name(self.analyzer)}-{safe_name(self.name)}"


@dataclass
class RedrawReport:
    out_dir: Path
    written: dict[str, list[Path]] = field(default_factory=dict)
    without_data: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return 0 if not self.without_data and not self.failed else 1


def confined(run_dir: Path, rel: str, what: str) -> Path:
    """`run_dir / rel`, refused when `rel` (read from results.json) points outside the run."""
    root = run_dir.resolve()
    path = (root / rel).resolve()
    if not path.is_relative_to(root):
        raise ConfigError(f"{what} {rel!r} in {run_dir / RESULTS_FILE} points outside the run directory")
    return path


def saved_figures(run_dir: str | Path) -> list[SavedFigure]:
    """Every figure results.json lists, with its data folder (None where none was saved)."""
    run_dir = Path(run_dir)
    if not (run_dir / RESULTS_FILE).is_file():
        raise ConfigError(f"{run_dir} is not a run directory (no {RESULTS_FILE}); give the folder of a finished run")
    try:
        payload = read_results(run_dir)
    except ValueError as err:
        raise ConfigError(f"{run_dir / RESULTS_FILE} is not valid JSON ({err})") from None
    figures = []
    for analyzer, entry in (payload.get("analyzers") or {}).items():
        data = entry.get("figure_data") or {}
        for name in entry.get("figures") or {}:
            rel = data.get(name)
            folder = confined(run_dir, rel, "figure data folder") if rel else None
            figures.append(SavedFigure(analyzer, name, folder))
    return figures


def select(figures: list[SavedFigure], only: Sequence[str], what: str = "--only") -> list[SavedFigure]:
    """`only`: analyzer names or analyzer.figure keys; each must match something.

    `what` names the option or spec key the names came from, for the error message.
    """
    if not only:
        return figures
    chosen = []
    for wanted in only:
        matched = [f for f in figures if wanted in (f.analyzer, f.key)]
        if not matched:
            keys = ", ".join(f.key for f in figures) or "none"
            raise ConfigError(f"{what} {wanted}: no such analyzer or figure in this run; it has: {keys}")
        chosen += [f for f in matched if f not in chosen]
    return chosen


def missing_data_error(run_dir: str | Path, key: str | None = None) -> ConfigError:
    """The run (or its figure `key`) has figures but not the data to redraw them."""
    what = f"{run_dir}: figure {key} has" if key else f"{run_dir}:"
    return ConfigError(
        f"{what} no saved figure data (the run was made by an interpsuite older than figure data, or its "
        "analyzers assign result.figures directly instead of result.add_figure); rerun it to redraw its figures"
    )


def style_for(name: str, column: str = "double", font_size: float | None = None) -> FigureStyle | None:
    """The preset `name`; None for `run` (each figure in the style it was drawn in)."""
    if name == RUN_STYLE:
        return None
    return preset(name, column, font_size=font_size)


def redraw(
    run_dir: str | Path,
    out_dir: str | Path | None = None,
    style: str = "paper",
    only: Sequence[str] = (),
    formats: Sequence[str] = ("pdf",),
    column: str = "double",
    font_size: float | None = None,
    progress: bool = False,
) -> RedrawReport:
    """Redraw the figures of a run into `out_dir` (default `<run>/figures_<style>`)."""
    run_dir = Path(run_dir)
    unknown = [f for f in formats if f not in FIGURE_FORMATS]
    if unknown:
        raise ConfigError(f"--format {unknown[0]}: not one of {', '.join(FIGURE_FORMATS)}")
    chosen_style = style_for(style, column, font_size)
    figures = select(saved_figures(run_dir), only)
    if not figures:
        raise ConfigError(f"{run_dir}: the run has no figures")
    if all(f.data is None for f in figures):
        raise missing_data_error(run_dir)
    out = Path(out_dir) if out_dir is not None else run_dir / f"figures_{style}"
    report = RedrawReport(out)
    items = figures
    if progress:
        from tqdm.auto import tqdm

        items = tqdm(figures, desc="figures", leave=False)
    for item in items:
        if item.data is None:
            report.without_data.append(item.key)
            continue
        try:
            recipe = FigureRecipe.load(item.data)
            figure_style = chosen_style if chosen_style is not None else FigureStyle.from_dict(recipe.style)
            figure = recipe.draw(figure_style)
            with figure_style.context():
                report.written[item.key] = save_figure(figure, out / item.file_stem, formats)
        except ConfigError as err:
            report.failed[item.key] = str(err)
        except Exception as err:  # one figure's failure never costs the others
            report.failed[item.key] = f"{type(err).__name__}: {err}"
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a finished run's folder (or `compose SPEC.yaml`)")
    parser.add_argument("spec", nargs="?", default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--style",
        default="paper",
        choices=[*STYLE_PRESETS, RUN_STYLE],
        help="paper (default), slides, poster, default, or run (the run's own style)",
    )
    parser.add_argument("--column", default="double", choices=list(COLUMN_WIDTHS), help="paper: column width")
    parser.add_argument("--font-size", type=float, default=None, help="override the preset's font size (pt)")
    parser.add_argument(
        "--only", action="append", default=[], metavar="ANALYZER[.FIGURE]", help="redraw only these (repeatable)"
    )
    parser.add_argument(
        "--format", action="append", default=None, choices=list(FIGURE_FORMATS), help="pdf (default), svg, png"
    )
    parser.add_argument("--out", default=None, help="output folder (default: RUN_DIR/figures_<style>)")


def figures_command(args: argparse.Namespace) -> int:
    if args.run_dir == "compose" and args.spec is not None:
        from .figure_compose import compose_command

        return compose_command(Path(args.spec), args.out, args.format)
    if args.spec is not None:
        raise ConfigError(f"unexpected argument {args.spec!r}; use `interpsuite figures RUN_DIR [options]`")
    report = redraw(
        args.run_dir,
        args.out,
        style=args.style,
        only=args.only,
        formats=args.format or ["pdf"],
        column=args.column,
        font_size=args.font_size,
        progress=True,
    )
    n_files = sum(len(paths) for paths in report.written.values())
    print(f"{len(report.written)} figures redrawn ({n_files} files) in {report.out_dir}")
    if report.without_data:
        print(
            f"interpsuite: warning: {len(report.without_data)} figures have no saved data and were not redrawn: "
            f"{', '.join(report.without_data)}",
            file=sys.stderr,
        )
    for key, error in report.failed.items():
        print(f"interpsuite: error: {key}: {error}", file=sys.stderr)
    return report.exit_code
