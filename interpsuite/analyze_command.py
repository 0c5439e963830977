"""`interpsuite analyze`: one-shot analysis of a few texts, the command-line twin of `POST /analyze`.

It goes through the same `AnalysisService` as the server, so the answer (`--json`) is the same
outcome the server returns. No Hydra: no run directory is kept unless `--out` is given. Every
mistake in the command (unknown analyzer or option, bad value, empty text, unknown model) is one
line and exit code 2 before the model loads.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import ConfigError

DEFAULT_MODEL = "smollm2"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--text", action="append", default=[], metavar="TEXT", help="a text to analyze (repeatable)")
    parser.add_argument(
        "--file",
        action="append",
        default=[],
        metavar="FILE",
        help="texts from a file (.txt one per line, .jsonl, .csv)",
    )
    parser.add_argument(
        "--analyzers", required=True, metavar="A,B", help="comma-separated analyzer names (see `interpsuite plugins`)"
    )
    parser.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"embedded model or Hugging Face name (default: {DEFAULT_MODEL})"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="ANALYZER.KEY=VALUE",
        help="an analyzer option, e.g. activation_stats.layers=[0,1] (repeatable; values as in Hydra overrides)",
    )
    parser.add_argument("--json", action="store_true", help="print the whole outcome as JSON (tables as rows)")
    parser.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="keep the run directory under DIR (DIR/<run id>); without it the run is written to a temporary "
        "folder that is deleted before the command exits",
    )
    parser.add_argument("--batch-size", type=int, default=8, help="texts per forward pass (default: 8)")
    parser.add_argument(
        "--max-length", type=int, default=128, help="tokens per text, longer ones are cut (default: 128)"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps (default: cpu)")
    parser.add_argument(
        "--no-figures", action="store_true", help="save figure data only (draw later: interpsuite figures)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars on stderr")


def parse_analyzers(spec: str, settings: Sequence[str]) -> dict[str, dict[str, Any]]:
    """`a,b` and `--set a.key=value` -> {analyzer: options}; values parsed as Hydra parses overrides."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    names = [name.strip() for name in spec.split(",") if name.strip()]
    if not names:
        raise ConfigError("--analyzers: no analyzer named; e.g. --analyzers activation_stats,logit_lens")
    options: dict[str, dict[str, Any]] = {name: {} for name in names}
    for item in settings:
        key, sep, value = item.partition("=")
        analyzer, dot, option = key.partition(".")
        if not sep or not dot or not analyzer or not option:
            raise ConfigError(f"--set {item!r}: expected ANALYZER.KEY=VALUE, e.g. --set activation_stats.layers=[0,1]")
        if analyzer not in options:
            raise ConfigError(f"--set {item!r}: {analyzer} is not in --analyzers ({', '.join(names)}); add it there")
        try:
            parsed = OmegaConf.to_container(OmegaConf.from_dotlist([f"{option}={value}"]), resolve=True)
        except OmegaConfBaseException as err:
            message = (getattr(err, "msg", None) or str(err)).splitlines()[0]
            raise ConfigError(f"--set {item!r}: {message}") from None
        options[analyzer] = OmegaConf.to_container(OmegaConf.merge(options[analyzer], parsed), resolve=True)
    return options


def read_texts(texts: Sequence[str], files: Sequence[str]) -> list[str]:
    """--text values as given, then each --file's texts (read as data.path reads them)."""
    from .data import DataConfig, load_inputs

    found = list(texts)
    for path in files:
        found += load_inputs(DataConfig(path=path, max_length=None), {}).texts
    if not found:
        raise ConfigError("no texts: give --text TEXT (repeatable) or --file FILE")
    return found


class _Bars:
    """Progress events as tqdm bars on stderr (one per analyzer's bar label)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bars: dict[tuple[str | None, str], Any] = {}

    def __call__(self, event) -> None:
        if not self.enabled:
            return
        from tqdm.auto import tqdm

        if event.kind == "progress":
            key = (event.analyzer, event.desc)
            bar = self.bars.get(key)
            if bar is None:
                label = event.desc if event.desc == event.analyzer else f"{event.analyzer}: {event.desc}"
                bar = self.bars[key] = tqdm(desc=label, total=event.total, leave=False, file=sys.stderr)
            bar.update(event.done - bar.n)
        elif event.kind in ("analyzer_end", "run_end"):
            for key in [k for k in self.bars if event.kind == "run_end" or k[0] == event.analyzer]:
                self.bars.pop(key).close()


def format_outcome(outcome) -> str:
    """Per analyzer: status, metrics, failed checks; then where the run is."""
    lines = [f"run {outcome.run_id}: {outcome.status} (exit code {outcome.exit_code})"]
    for name, entry in outcome.analyzers.items():
        cached = " (cached)" if entry.get("cached") else ""
        if entry["status"] != "ok":
            lines.append(f"  {name}: {entry['status']}{cached}: {entry.get('error')}")
            continue
        checks = entry.get("checks", {})
        failed = [k for k, c in checks.items() if not c["passed"]]
        lines.append(
            f"  {name}: ok{cached} in {entry.get('duration_s', 0.0):.1f} s; checks {len(checks) - len(failed)}/"
            f"{len(checks)} passed; {len(entry['tables'])} tables, {len(entry.get('figure_files', {}))} figures"
        )
        for metric, value in entry.get("metrics", {}).items():
            lines.append(
                f"    {metric} = {value:.6g}" if isinstance(value, (int, float)) else f"    {metric} = {value}"
            )
        for check in failed:
            c = checks[check]
            lines.append(f"    FAILED check {check}: value {c['value']:.6g}, threshold {c['threshold']:.6g}")
    return "\n".join(lines)


def analyze_command(args: argparse.Namespace) -> int:
    """Check everything, load the model, run through AnalysisService, print; exit 0/1/2/130."""
    from .analysis_service import AnalysisService, check_request
    from .pipeline import EXIT_INTERRUPTED
    from .settings import check_writable_dir

    options = parse_analyzers(args.analyzers, args.set)
    texts = read_texts(args.text, args.file)
    if args.batch_size < 1 or (args.max_length is not None and args.max_length < 1):
        raise ConfigError("--batch-size and --max-length must be >= 1")
    settings = {"batch_size": args.batch_size, "max_length": args.max_length, "draw_figures": not args.no_figures}
    keep = args.out is not None
    runs_dir = check_writable_dir(args.out, "--out") if keep else Path(tempfile.mkdtemp(prefix="interpsuite-analyze-"))
    try:
        check_request(args.model, texts, options, runs_dir, **settings)  # before the weights load
        from .models import load_model

        model = load_model(args.model, device=args.device)
        service = AnalysisService(model, runs_dir=runs_dir, **settings)
        bars = _Bars(enabled=not args.quiet and sys.stderr.isatty())
        try:
            outcome = service.analyze(texts, options, listener=bars)
        except KeyboardInterrupt:
            print("interpsuite: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        if args.json:
            print(json.dumps(outcome.to_dict(), indent=2, allow_nan=False))
        else:
            print(format_outcome(outcome))
            where = (
                f"results: {outcome.run_dir / 'results.json'}" if keep else "run directory deleted (keep it: --out DIR)"
            )
            print(where)
        return outcome.exit_code
    finally:
        if not keep:
            shutil.rmtree(runs_dir, ignore_errors=True)
