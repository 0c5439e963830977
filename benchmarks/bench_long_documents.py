"""Long documents in windows: peak memory and time against document length (issue 16).

One document of N tokens (Python's documentation, concatenated in order, cut at N tokens) runs
through `activation_stats`, `logit_lens` and `anomaly_detection` with
`data.long_documents=window` (window 512, stride 256) on SmolLM2 (the logit lens at layers 0, 10,
20 and 29 by default: decoding all 30 layers costs about 40 s per window on 2 busy cores), each N
in its own `python -m interpsuite` process. Reported per N: wall time, the process's peak RSS (from
`wait4`, so it is that run's own peak), windows, and whether every check passed. Memory is
bounded when the peak does not grow with N: activations live for one batch of windows, and
what grows is the document's token ids and the per-token tables the analyzers return.

    python benchmarks/bench_long_documents.py                 # 2.5k and 20k tokens
    python benchmarks/bench_long_documents.py --tokens 20000  # one length
    python benchmarks/bench_long_documents.py --quick         # tiny_llama, writes /tmp
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_core import machine_info, write_report  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "long_documents.json"
ANALYZERS = ("activation_stats", "logit_lens", "anomaly_detection")


def make_document(model_name: str, n_tokens: int) -> tuple[str, int]:
    """The first n_tokens tokens of the Python docs corpus as one text (and its exact length)."""
    from interpsuite_plugins.sae.corpus import python_docs_texts

    from interpsuite.models import load_model
    from interpsuite.windows import document_token_ids

    tokenizer = load_model(model_name).tokenizer
    text, ids = "", []
    for part in python_docs_texts(max_chars=100_000):
        text += part + "\n\n"
        ids = document_token_ids(tokenizer, text)
        if len(ids) >= n_tokens:
            break
    text = tokenizer.decode(ids[:n_tokens])
    return text, len(document_token_ids(tokenizer, text))


def lens_override(layers: list[int] | None) -> str:
    if layers is None:
        return "+analyzers.logit_lens={}"
    return "+analyzers.logit_lens.layers=" + str(layers).replace(" ", "")


class RssSampler(threading.Thread):
    """The child's resident memory (VmRSS) once per `interval` seconds, while it runs.

    ru_maxrss says how high memory went; the timeline says when, and whether it creeps up with
    every window (memory that grows with the document) or stays level (bounded)."""

    def __init__(self, pid: int, interval: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, float]] = []  # (seconds since start, MB)
        self.done = threading.Event()

    def run(self) -> None:
        started = time.perf_counter()
        status = Path(f"/proc/{self.pid}/status")
        while not self.done.is_set():
            try:
                lines = status.read_text().splitlines()
                rss_kb = next(int(line.split()[1]) for line in lines if line.startswith("VmRSS"))
            except (OSError, StopIteration, ValueError):
                break
            self.samples.append((round(time.perf_counter() - started, 1), round(rss_kb / 1024, 1)))
            self.done.wait(self.interval)


def timeline_summary(samples: list[tuple[float, float]], parts: int = 4) -> dict:
    """Peak RSS in each of `parts` equal spans of the run's samples (level = bounded; rising = not)."""
    if not samples:
        return {}
    size = max(1, len(samples) // parts)
    spans = [samples[i : i + size] for i in range(0, len(samples), size)][:parts]
    return {"peak_mb_by_quarter": [max(mb for _, mb in span) for span in spans], "samples": len(samples)}


def run_one(
    model: str,
    n_tokens: int,
    length: int,
    stride: int,
    threads: int,
    workdir: Path,
    lens_layers: list[int] | None,
    analyzers: tuple[str, ...] = ANALYZERS,
) -> dict:
    text, actual = make_document(model, n_tokens)
    folder = workdir / f"doc_{n_tokens}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "document.txt").write_text(text)
    run_dir = workdir / f"run_{n_tokens}_{'_'.join(analyzers)}"
    args = [
        sys.executable,
        "-m",
        "interpsuite",
        f"model={model}",
        f"data.path={folder}",
        "data.long_documents=window",
        f"data.window.length={length}",
        f"data.window.stride={stride}",
        *(f"+analyzers.{name}={{}}" for name in analyzers if name != "logit_lens"),
        *([lens_override(lens_layers)] if "logit_lens" in analyzers else []),
        "sinks=[rundir]",
        "progress=false",
        f"hydra.run.dir={run_dir}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "WANDB_SILENT": "true"}
    started = time.perf_counter()
    log = workdir / f"log_{n_tokens}_{'_'.join(analyzers)}.txt"
    with log.open("w") as handle:  # a file, not a pipe: a full pipe would stall the child
        process = subprocess.Popen(args, env=env, stdout=handle, stderr=subprocess.STDOUT, text=True)
        sampler = RssSampler(process.pid)
        sampler.start()
        _, status, usage = os.wait4(process.pid, 0)
        sampler.done.set()
        sampler.join()
    wall = time.perf_counter() - started
    output = log.read_text()
    code = os.waitstatus_to_exitcode(status)
    payload = json.loads((run_dir / "results.json").read_text()) if (run_dir / "results.json").is_file() else {}
    analyzers = payload.get("analyzers", {})
    windows = payload.get("inputs", {}).get("data", {}).get("windows", {})
    return {
        "tokens": actual,
        "analyzers": list(analyzers),
        "logit_lens_layers": lens_layers or "all",
        "exit_code": code,
        "wall_s": round(wall, 2),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "windows": windows.get("windows"),
        "per_analyzer_s": {name: round(entry["duration_s"], 2) for name, entry in analyzers.items()},
        "checks_passed": all(c["passed"] for e in analyzers.values() for c in e.get("checks", {}).values()),
        "statuses": {name: entry["status"] for name, entry in analyzers.items()},
        "tail": output.strip().splitlines()[-6:] if code else [],
        "rss_timeline": timeline_summary(sampler.samples),
    }


def growth(rows: list[dict]) -> dict | None:
    """Peak RSS of the longest document over the shortest's, next to the token ratio."""
    if len(rows) < 2:
        return None
    short, long = min(rows, key=lambda r: r["tokens"]), max(rows, key=lambda r: r["tokens"])
    return {
        "tokens": [short["tokens"], long["tokens"]],
        "peak_rss_mb": [short["peak_rss_mb"], long["peak_rss_mb"]],
        "peak_growth": round(long["peak_rss_mb"] / short["peak_rss_mb"], 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--tokens", type=int, nargs="+", default=[2500, 20000])
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--stride", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--lens-layers", type=int, nargs="+", default=[0, 10, 20, 29], help="logit_lens layers (all: --lens-layers -1)"
    )
    parser.add_argument(
        "--separate", action="store_true", help="each analyzer in its own process too: whose peak grows with N"
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.quick:
        args.model, args.tokens, args.length, args.stride = "tiny_llama", [400, 1600], 64, 32
        args.lens_layers = [0, 1]
    lens_layers = None if args.lens_layers == [-1] else args.lens_layers
    out = args.out or (Path(tempfile.gettempdir()) / "long_documents.json" if args.quick else RESULTS)
    rows: list[dict] = []
    separate: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.tokens:
            row = run_one(args.model, n, args.length, args.stride, args.threads, Path(tmp), lens_layers)
            print(json.dumps(row), flush=True)
            rows.append(row)
            for name in ANALYZERS if args.separate else ():
                alone = run_one(args.model, n, args.length, args.stride, args.threads, Path(tmp), lens_layers, (name,))
                print(json.dumps(alone), flush=True)
                separate.append(alone)
    peaks = [r["peak_rss_mb"] for r in rows]
    report = {
        "benchmark": "long_documents",
        "date": datetime.date.today().isoformat(),
        "machine": machine_info(),
        "model": args.model,
        "analyzers": list(ANALYZERS),
        "logit_lens_layers": lens_layers or "all",
        "window": {"length": args.length, "stride": args.stride},
        "threads": args.threads,
        "runs": rows,
        "separate_runs": separate,
        "separate_peak_growth": {name: growth([r for r in separate if r["analyzers"] == [name]]) for name in ANALYZERS}
        if separate
        else {},
        "peak_rss_growth": round(max(peaks) / min(peaks), 3) if peaks else None,
        "tokens_growth": round(max(r["tokens"] for r in rows) / min(r["tokens"] for r in rows), 3) if rows else None,
    }
    write_report(report, out)
    print(f"wrote {out}")
    return 0 if all(r["exit_code"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
