"""Estimate vs actual: the resource estimate of every built-in experiment against a real run.

For each experiment (conf/experiment/*.yaml, or `--experiments a b`) on SmolLM2 (`--model`):

1. `interpsuite estimate +experiment=NAME model=MODEL --json` in its own process (the estimate
   a user sees before running; kept for the experiments whose runs record none themselves:
   `induction_emergence` trains, `compare_models` runs one pipeline per model);
2. the run itself, `python -m interpsuite +experiment=NAME model=MODEL` in a fresh process that
   reports its own peak resident memory (`ru_maxrss`) when it ends. A pipeline run records the
   estimate it printed at its start in results.json ("estimate"): that one is compared (same
   process, same calibration probe), else the one of step 1.

Compared: every analyzer's estimated run() seconds with its `duration_s`; the run's estimated
total (loading, analyzers, saving figures) with results.json's `duration_s`; the estimated peak
memory with the measured peak RSS. The target is within 2x (ratio 0.5..2) for memory and time.

    python benchmarks/bench_estimate.py --experiments quickstart attention
    python benchmarks/bench_estimate.py                      # every experiment: hours on 2 CPU cores
    python benchmarks/bench_estimate.py --experiments logit_lens --override batch_size=16

Writes benchmarks/results/estimate.json (merged with earlier results of other experiments,
each with when and how it ran) and benchmarks/results/estimate.md (the table).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"
EXPERIMENTS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))
#: the estimate is within target when estimate / actual lies in [1 / TARGET, TARGET]
TARGET = 2.0

#: run in a child: the CLI in-process, then this process's own peak RSS (kB on Linux) to a file
CHILD = """
import json, resource, sys, time
started = time.perf_counter()
report, argv = sys.argv[1], sys.argv[2:]  # run_cli rewrites sys.argv for Hydra
from interpsuite.__main__ import run_cli
code = run_cli(argv)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
scale = 1 if sys.platform == "darwin" else 1024
with open(report, "w") as handle:
    json.dump({"exit_code": code, "peak_rss_bytes": peak * scale, "process_s": time.perf_counter() - started}, handle)
"""


def machine_info() -> dict[str, Any]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_core import machine_info as core_info

    return core_info()


def run_estimate(experiment: str, model: str, overrides: list[str], folder: Path, timeout: int) -> dict | list | None:
    path = folder / "estimate.json"
    argv = ["estimate", f"+experiment={experiment}", f"model={model}", *overrides, "--json", str(path)]
    argv.append(f"hydra.run.dir={folder / 'estimate_run'}")
    done = subprocess.run(
        [sys.executable, "-m", "interpsuite.cli", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        print(f"  estimate failed ({done.returncode}): {done.stderr.strip()[-400:]}", file=sys.stderr)
        return None
    return json.loads(path.read_text())


def run_experiment(experiment: str, model: str, overrides: list[str], folder: Path, timeout: int) -> dict:
    run_dir = folder / "run"
    report = folder / "child.json"
    argv = [f"+experiment={experiment}", f"model={model}", "progress=false", *overrides, f"hydra.run.dir={run_dir}"]
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(report), *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "WANDB_SILENT": "true"},
    )
    wall = time.perf_counter() - started
    child = json.loads(report.read_text()) if report.is_file() else {"exit_code": done.returncode}
    child["wall_s"] = wall
    child["stderr_tail"] = done.stderr.strip()[-600:] if child.get("exit_code") else ""
    child["run_dir"] = str(run_dir)
    return child


def results_files(run_dir: Path) -> list[Path]:
    """results.json of a plain run, or of each model / checkpoint run under it."""
    direct = run_dir / "results.json"
    nested = sorted(p for p in run_dir.glob("*/*/results.json"))
    return [*([direct] if direct.is_file() else []), *nested]


def compare(experiment: str, separate: Any, child: dict) -> dict:
    """Per analyzer and in total: estimate, actual, ratio."""
    files = results_files(Path(child["run_dir"]))
    payloads = [json.loads(p.read_text()) for p in files]
    covering = None
    if len(files) > 1 and files[0] == Path(child["run_dir"]) / "results.json":
        # a run made of runs (temporal: one per checkpoint, then its summary): the top results.json
        # times the whole of it; adding the nested runs' durations would count them twice
        covering, payloads = payloads[0], payloads[1:]
    embedded = [p["estimate"] for p in payloads if p.get("estimate")]
    trains = any(
        a["name"] == "training" for e in (separate if isinstance(separate, list) else [separate or {}])
        for a in e.get("analyzers", [])
    )  # fmt: skip
    if trains:  # the nested results.json are the monitor's steps: the estimate covers the training too
        payloads = []
    if embedded and not trains:
        estimates, source = embedded, "recorded in results.json by the run"
        payloads = [p for p in payloads if p.get("estimate")]  # each paired with its own estimate
    else:
        estimates = separate if isinstance(separate, list) else [separate] if separate else []
        source = "interpsuite estimate (separate process)"
    rows = []
    for payload, estimate in zip(payloads, estimates, strict=False):
        by_name = {a["name"]: a for a in estimate["analyzers"]}
        for name, entry in payload.get("analyzers", {}).items():
            guess = by_name.get(name)
            if guess is None or guess.get("time_s") is None:
                continue
            rows.append(
                {
                    "analyzer": name,
                    "estimate_s": guess["time_s"],
                    "actual_s": entry.get("duration_s"),
                    "ratio": _ratio(guess["time_s"], entry.get("duration_s")),
                    "status": entry.get("status"),
                }
            )
    estimated_time = sum((e.get("time_s") or 0.0) for e in estimates) or None
    actual_time = sum(p.get("duration_s", 0.0) for p in payloads) or None
    if covering is not None:
        actual_time = covering.get("duration_s") or actual_time
    if not payloads:  # a training experiment: its record holds only the summary
        actual_time = child.get("process_s")
    estimated_memory = max((e["memory_bytes"] for e in estimates), default=None)
    return {
        "experiment": experiment,
        "exit_code": child.get("exit_code"),
        "estimate_source": source,
        "time": {"estimate_s": estimated_time, "actual_s": actual_time, "ratio": _ratio(estimated_time, actual_time)},
        "memory": {
            "estimate_bytes": estimated_memory,
            "actual_peak_rss_bytes": child.get("peak_rss_bytes"),
            "ratio": _ratio(estimated_memory, child.get("peak_rss_bytes")),
        },
        "process_wall_s": child.get("wall_s"),
        "analyzers": rows,
        "within_target": _within(estimated_time, actual_time)
        and _within(estimated_memory, child.get("peak_rss_bytes")),
        "stderr_tail": child.get("stderr_tail", ""),
    }


def _ratio(estimate: float | None, actual: float | None) -> float | None:
    if not estimate or not actual:
        return None
    return estimate / actual


def _within(estimate: float | None, actual: float | None) -> bool:
    ratio = _ratio(estimate, actual)
    return ratio is not None and 1 / TARGET <= ratio <= TARGET


def markdown(results: dict[str, dict]) -> str:
    lines = [
        "| experiment | time estimate | time actual | ratio | memory estimate | peak RSS | ratio | within 2x |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, r in sorted(results.items()):
        t, m = r["time"], r["memory"]
        lines.append(
            f"| {name} | {_s(t['estimate_s'])} | {_s(t['actual_s'])} | {_x(t['ratio'])} | {_gb(m['estimate_bytes'])} "
            f"| {_gb(m['actual_peak_rss_bytes'])} | {_x(m['ratio'])} | {'yes' if r['within_target'] else 'no'} |"
        )
    lines += ["", "| experiment | analyzer | estimate | actual | ratio |", "| --- | --- | ---: | ---: | ---: |"]
    for name, r in sorted(results.items()):
        for row in r["analyzers"]:
            lines.append(
                f"| {name} | {row['analyzer']} | {_s(row['estimate_s'])} | {_s(row['actual_s'])} | {_x(row['ratio'])} |"
            )
    return "\n".join(lines) + "\n"


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def _gb(value: float | None) -> str:
    return "-" if value is None else f"{value / 1e9:.2f} GB"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiments", nargs="+", default=EXPERIMENTS, choices=EXPERIMENTS, metavar="NAME")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--override", action="append", default=[], help="extra Hydra override for every run")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "estimate.json")
    parser.add_argument("--markdown", type=Path, default=RESULTS_DIR / "estimate.md")
    parser.add_argument("--timeout", type=int, default=4 * 3600, help="seconds per run")
    args = parser.parse_args(argv)

    previous = json.loads(args.out.read_text()) if args.out.is_file() else {}
    results = dict(previous.get("experiments", {}))
    for experiment in args.experiments:
        print(f"{experiment}: estimating, then running", file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory(prefix=f"bench-estimate-{experiment}-") as tmp:
            folder = Path(tmp)
            separate = run_estimate(experiment, args.model, args.override, folder, args.timeout)
            child = run_experiment(experiment, args.model, args.override, folder, args.timeout)
            entry = compare(experiment, separate, child)
        entry["ran"] = {
            "at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "model": args.model,
            "overrides": args.override,
        }
        results[experiment] = entry
        t, m = entry["time"], entry["memory"]
        print(
            f"  time {_s(t['estimate_s'])} est vs {_s(t['actual_s'])} ({_x(t['ratio'])}); memory "
            f"{_gb(m['estimate_bytes'])} est vs {_gb(m['actual_peak_rss_bytes'])} ({_x(m['ratio'])}); "
            f"exit {entry['exit_code']}",
            file=sys.stderr,
            flush=True,
        )
        payload = {"benchmark": "estimate", "target_ratio": TARGET, "machine": machine_info(), "experiments": results}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(payload, indent=2) + "\n")
        args.markdown.write_text(markdown(results))
    print(markdown({k: results[k] for k in args.experiments}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
