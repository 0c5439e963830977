"""Figure benchmark: what a cheap analyzer costs, and what saving its figures costs, per format.

The issue: one `attention_patterns` run on tiny_llama took 29.4 s, of which 24.6 s went on
writing PNG + PDF files. This script runs figure-heavy analyzers on tiny_llama over the
quickstart's 8 texts (`conf/data/quickstart.yaml`) and reports, per analyzer:

| number | what is timed |
| --- | --- |
| `analyzer_s` | the analyzer alone (its `duration_s` in results.json: compute and building the figures) |
| `pipeline_s` | `InterpretabilityPipeline(model, data, {analyzer: {}}, sinks=["rundir"]).run()`, model preloaded |
| `pipeline_rest_s` | `pipeline_s - analyzer_s`: the run directory's writing, almost all of it figures |
| `save_s[fmt]` | writing every figure of the result as `fmt` alone, one fresh copy of the figures per format |
| `save_s["png+pdf"]` | writing both default formats, as the run-directory sink does by default |
| `save_cpu_s[...]` | the same saves in CPU seconds of this process (`time.process_time`) |

matplotlib draws in one thread, so `save_cpu_s` is what saving costs with the other jobs of a
shared machine taken out; wall times on a busy 2-core machine move with the load average.

Saving goes through `interpsuite.sinks.rundir.save_figure` where it exists; before that helper
existed the sink ran `figure.savefig(path, bbox_inches="tight")` once per format, and the
script does exactly that (the JSON says which path a run took). Fresh copies come from
pickling the figures right after the analyzer, so no save profits from an earlier one's
cached text layout.

    python benchmarks/bench_figures.py --label before   # on the old code: record the baseline
    python benchmarks/bench_figures.py --label after    # on the new code: merged into the same JSON
    python benchmarks/bench_figures.py --quick          # attention_patterns only, one repeat

Each label's run is merged into `benchmarks/results/figures.json` (`figures_quick.json` with
`--quick`) under `runs[label]`; when both `before` and `after` are there, `comparison` holds
their ratios (before / after medians).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pickle
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_core import machine_info, summarise  # noqa: E402

from interpsuite.models import HookedModel, load_model  # noqa: E402
from interpsuite.pipeline import InterpretabilityPipeline  # noqa: E402
from interpsuite.sinks import rundir  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "benchmarks" / "results"
MODEL = "tiny_llama"
ANALYZERS = ("attention_patterns", "attention_rollout", "head_classification", "logit_lens")
FORMATS = ("png", "pdf", "svg")
DEFAULT_SET = ("png", "pdf")  # what the run-directory sink writes unless told otherwise


def quickstart_texts() -> list[str]:
    """The 8 inline texts of the quickstart data config: what the issue's run used."""
    return list(yaml.safe_load((ROOT / "conf" / "data" / "quickstart.yaml").read_text())["texts"])


def save_path() -> str:
    """Which code writes a figure file: the sink's helper, or the old inline savefig call."""
    return "rundir.save_figure" if hasattr(rundir, "save_figure") else "savefig(bbox_inches='tight') per format"


def save_all(figures: dict[str, Any], folder: Path, formats: Sequence[str]) -> int:
    """Write every figure in `formats` the way the run-directory sink does; returns bytes written."""
    folder.mkdir(parents=True, exist_ok=True)
    written = 0
    for name, figure in figures.items():
        stem = folder / rundir.safe_name(name)
        if hasattr(rundir, "save_figure"):
            paths = rundir.save_figure(figure, stem, formats)
        else:  # the code before save_figure existed (RunDirSink.write, verbatim)
            paths = []
            for suffix in formats:
                path = stem.with_name(f"{stem.name}.{suffix}")
                figure.savefig(path, bbox_inches="tight")
                paths.append(path)
        written += sum(Path(p).stat().st_size for p in paths)
    return written


def fresh_copies(blob: bytes) -> dict[str, Any]:
    """Unpickled copies of the result's figures (closed again with pyplot if pyplot owns them)."""
    return pickle.loads(blob)


def release(figures: dict[str, Any]) -> None:
    """Old figures were registered with pyplot (its figure manager holds them): let them go."""
    if "matplotlib.pyplot" in sys.modules:
        import matplotlib.pyplot as plt

        for figure in figures.values():
            plt.close(figure)


def bench_analyzer(model: HookedModel, texts: list[str], name: str, repeats: int, work: Path) -> dict[str, Any]:
    """Pipeline runs of one analyzer, then each format saved alone and the default pair together."""
    analyzer, pipeline, rest = [], [], []
    save: dict[str, list[float]] = {key: [] for key in (*FORMATS, "+".join(DEFAULT_SET))}
    save_cpu: dict[str, list[float]] = {key: [] for key in save}
    sizes: dict[str, int] = {}
    n_figures, pixels = 0, 0
    for repeat in range(repeats):
        out = work / f"{name}-{repeat}"
        started = time.perf_counter()
        report = InterpretabilityPipeline(
            model=model, data=texts, analyzers={name: {}}, sinks=["rundir"], output_dir=out, progress=False
        ).run()
        total = time.perf_counter() - started
        entry = report.payload["analyzers"][name]
        if entry["status"] != "ok":
            raise RuntimeError(f"{name} failed: {entry['error']}")
        analyzer.append(entry["duration_s"])
        pipeline.append(total)
        rest.append(total - entry["duration_s"])
        figures = report.results[name].figures
        n_figures = len(figures)
        pixels = sum(int(f.get_figwidth() * f.dpi) * int(f.get_figheight() * f.dpi) for f in figures.values())
        blob = pickle.dumps(figures)
        release(figures)
        for key in save:
            copies = fresh_copies(blob)
            formats = key.split("+")
            started, cpu_started = time.perf_counter(), time.process_time()
            written = save_all(copies, work / f"{name}-{repeat}-{key}", formats)
            save[key].append(time.perf_counter() - started)
            save_cpu[key].append(time.process_time() - cpu_started)
            sizes[key] = written
            release(copies)
    medians = {key: statistics.median(samples) for key, samples in save.items()}
    return {
        "n_figures": n_figures,
        "figure_pixels_at_style_dpi": pixels,
        "analyzer_s": summarise(analyzer),
        "pipeline_s": summarise(pipeline),
        "pipeline_rest_s": summarise(rest),
        "save_s": {key: summarise(samples) for key, samples in save.items()},
        "save_cpu_s": {key: summarise(samples) for key, samples in save_cpu.items()},
        "save_s_per_figure": {key: value / max(n_figures, 1) for key, value in medians.items()},
        "bytes": sizes,
        "save_share_of_pipeline": statistics.median(rest) / statistics.median(pipeline),
    }


def warm_up(model: HookedModel, texts: list[str], folder: Path) -> None:
    """Pay one-time costs before timing: the font cache, each backend's first import, a first forward pass."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(2, 2))
    figure.subplots().imshow([[0.0, 1.0], [1.0, 0.0]])
    figure.axes[0].set_title("warm-up")
    save_all({"warmup": figure}, folder, FORMATS)
    model.forward(model.tokenize(texts), logits_to_keep=1)


def compare(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """before / after ratios of the medians (above 1: faster now) for the analyzers both runs have."""
    table: dict[str, Any] = {}
    for name in before["analyzers"]:
        if name not in after["analyzers"]:
            continue
        old, new = before["analyzers"][name], after["analyzers"][name]
        row = {
            key: {
                "before_s": old[key]["median"],
                "after_s": new[key]["median"],
                "speedup": old[key]["median"] / new[key]["median"],
            }
            for key in ("analyzer_s", "pipeline_s", "pipeline_rest_s")
        }
        row["save_s"] = {
            key: {
                "before_s": old["save_s"][key]["median"],
                "after_s": new["save_s"][key]["median"],
                "speedup": old["save_s"][key]["median"] / new["save_s"][key]["median"],
            }
            for key in old["save_s"]
            if key in new["save_s"]
        }
        share = "save_share_of_pipeline"
        row[share] = {"before": old[share], "after": new[share]}
        table[name] = row
    return table


def format_report(run: dict[str, Any]) -> str:
    """A plain-text table of one labelled run."""
    lines = [
        f"figure benchmark [{run['label']}] {run['timestamp']}  model {MODEL}, {run['settings']['n_texts']} texts, "
        f"{run['settings']['repeats']} repeat(s), save path: {run['save_path']}",
        f"load average at start {run['load_average']['start'][0]:.1f}, at end {run['load_average']['end'][0]:.1f}",
        "",
        f"{'analyzer':<22}{'figs':>5}{'analyzer s':>12}{'pipeline s':>12}{'rest s':>9}"
        + "".join(f"{key + ' s':>11}" for key in (*FORMATS, "+".join(DEFAULT_SET)))
        + f"{'(cpu s)':>9}",
    ]
    for name, row in run["analyzers"].items():
        lines.append(
            f"{name:<22}{row['n_figures']:>5}{row['analyzer_s']['median']:>12.2f}{row['pipeline_s']['median']:>12.2f}"
            f"{row['pipeline_rest_s']['median']:>9.2f}"
            + "".join(f"{stats['median']:>11.2f}" for stats in row["save_s"].values())
            + f"{row['save_cpu_s']['+'.join(DEFAULT_SET)]['median']:>9.2f}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--label", default="after", help="name of this run in the JSON (before / after)")
    parser.add_argument("--quick", action="store_true", help="attention_patterns only, 1 repeat: a smoke test")
    parser.add_argument("--repeats", type=int, default=2, help="pipeline runs (and saves) per analyzer (default 2)")
    parser.add_argument("--analyzers", nargs="+", default=None, help=f"default: {' '.join(ANALYZERS)}")
    parser.add_argument("--out", type=Path, default=None, help="JSON (default results/figures.json)")
    args = parser.parse_args(argv)
    names = args.analyzers or (ANALYZERS[:1] if args.quick else ANALYZERS)
    repeats = 1 if args.quick else args.repeats
    started, load_before = time.perf_counter(), os.getloadavg()
    model = load_model(MODEL)
    texts = quickstart_texts()
    with tempfile.TemporaryDirectory(prefix="bench-figures-") as work:
        warm_up(model, texts, Path(work) / "warmup")
        results = {name: bench_analyzer(model, texts, name, repeats, Path(work)) for name in names}
    run = {
        "label": args.label,
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "load_average": {"start": load_before, "end": os.getloadavg()},
        "settings": {"model": MODEL, "n_texts": len(texts), "repeats": repeats, "formats": list(FORMATS)},
        "save_path": save_path(),
        "analyzers": results,
        "duration_s": time.perf_counter() - started,
    }
    out = args.out or RESULTS_DIR / ("figures_quick.json" if args.quick else "figures.json")
    report = json.loads(out.read_text()) if out.exists() else {}
    report.update({"benchmark": "figures", "issue_reference": {"attention_patterns_run_s": 29.4, "saving_s": 24.6}})
    report.setdefault("runs", {})[args.label] = run
    if "before" in report["runs"] and "after" in report["runs"]:
        report["comparison"] = compare(report["runs"]["before"], report["runs"]["after"])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(format_report(run))
    print(f"\nwrote {out} [{args.label}] ({run['duration_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
