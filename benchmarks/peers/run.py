"""Side-by-side peer benchmark: interpsuite, a plain PyTorch loop, TransformerLens, nnsight, captum, SAELens.

Every cell (workload x implementation) runs in its own subprocess (`peer_cell.py`): a fresh
interpreter with torch's threads set, a warm-up, the median of N timed runs, its peak RSS, the
load average and the attention kernel it ran. Each cell returns its numbers; this parent checks
that all cells of a workload agree (max |difference| <= 1e-4) and writes
`benchmarks/results/peers.json` and `peers.md`. The exit status is 1 when a cell disagrees,
except a peer in the concurrency workload, whose disagreement (a shared-model race) is reported.

    python benchmarks/peers/run.py --all                          # SmolLM2, 2 threads, median of 3
    python benchmarks/peers/run.py --all --model tiny_llama --quick --threads 1   # smoke test
    python benchmarks/peers/run.py --workload head_sweep --impl interpsuite_readme --impl plain
    python benchmarks/peers/run.py --all --device cuda

Peer cells whose library is missing are recorded as skipped (`pip install 'interpsuite[peers]'`).
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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import peer_report  # noqa: E402
from peer_cell import CELLS  # noqa: E402

from interpsuite.errors import ConfigError  # noqa: E402

RESULTS_DIR = HERE.parent / "results"
CELL_SCRIPT = HERE / "peer_cell.py"


def cell_env(threads: int) -> dict[str, str]:
    """The child's environment: its thread count pinned for every BLAS, and no hub access."""
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[name] = str(threads)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH", "")]))
    return env


def run_one(workload: str, impl: str, args: argparse.Namespace, work: Path) -> tuple[dict[str, Any], np.ndarray | None]:
    """Run one cell in a subprocess; its record and its numbers (None when it has none)."""
    out = work / f"{workload}__{impl}"
    command = [
        sys.executable,
        str(CELL_SCRIPT),
        "--workload",
        workload,
        "--impl",
        impl,
        "--model",
        args.model,
        "--device",
        args.device,
        "--threads",
        str(args.threads),
        "--repeats",
        str(args.repeats),
        "--warmup",
        str(args.warmup),
        "--out",
        str(out),
    ] + (["--quick"] if args.quick else [])
    started = time.perf_counter()
    try:
        proc = subprocess.run(
            command, env=cell_env(args.threads), capture_output=True, text=True, timeout=args.cell_timeout
        )
        stderr_tail = proc.stderr[-2000:]
    except subprocess.TimeoutExpired:
        return {
            "workload": workload,
            "impl": impl,
            "status": "error",
            "reason": f"timed out after {args.cell_timeout} s",
        }, None
    record_path = out / "cell.json"
    if not record_path.exists():
        return {
            "workload": workload,
            "impl": impl,
            "status": "error",
            "reason": f"the cell process exited {proc.returncode} without a record: {stderr_tail[-300:]}",
        }, None
    record = json.loads(record_path.read_text(encoding="utf-8"))
    record["process_wall_s"] = time.perf_counter() - started
    values = None
    values_path = out / "values.safetensors"
    if record.get("status") == "ok" and values_path.exists():
        from safetensors.numpy import load_file

        values = load_file(str(values_path))["values"]
    return record, values


def selected_cells(args: argparse.Namespace) -> dict[str, list[str]]:
    """workload -> cell names to run, validated before any cell starts."""
    workloads = list(CELLS) if args.all or not args.workload else args.workload
    unknown = [w for w in workloads if w not in CELLS]
    if unknown:
        raise ConfigError(f"unknown workload {unknown[0]!r}; choose from {list(CELLS)}")
    chosen: dict[str, list[str]] = {}
    for workload in workloads:
        names = [name for name, _ in CELLS[workload]]
        if args.impl:
            names = [name for name in names if any(name == i or name.startswith(i + "_") for i in args.impl)]
        if names:
            chosen[workload] = names
    if not chosen:
        raise ConfigError(
            f"no cell matches --impl {args.impl}; names are e.g. interpsuite, plain, transformer_lens, "
            "nnsight, captum, bare"
        )
    return chosen


def machine() -> dict[str, Any]:
    """What timings depend on (the core benchmark's fields), read in the parent."""
    from bench_core import machine_info

    return machine_info()


def check_device(device: str) -> None:
    """A CUDA run on a machine without CUDA fails here, before any cell starts."""
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device} but torch sees no CUDA device; use --device cpu")


def run(args: argparse.Namespace) -> dict[str, Any]:
    chosen = selected_cells(args)
    check_device(args.device)
    load_start, started = list(os.getloadavg()), time.perf_counter()
    workloads: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="interpsuite_peers_") as tmp:
        for workload, names in chosen.items():
            records, values = {}, {}
            for name in names:
                record, value = run_one(workload, name, args, Path(tmp))
                records[name] = record
                if value is not None:
                    values[name] = value
                status = record.get("status")
                timing = f"{record['median_s']:.4g} s" if status == "ok" else record.get("reason", "")
                print(f"{workload:<11} {name:<20} {status:<8} {timing}", flush=True)
            reference = CELLS[workload][0][0]
            workloads[workload] = peer_report.summarise_workload(workload, records, values, reference, args.tolerance)
    return {
        "benchmark": "peers",
        "timestamp": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "settings": {
            "model": args.model,
            "device": args.device,
            "threads": args.threads,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "quick": args.quick,
        },
        "machine": machine(),
        "load_average": {"start": load_start, "end": list(os.getloadavg())},
        "tolerance": args.tolerance,
        "workloads": workloads,
        "all_agree": all(summary["all_agree"] for summary in workloads.values()),
        "passes": all(summary["passes"] for summary in workloads.values()),
        "duration_s": time.perf_counter() - started,
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--all", action="store_true", help="every workload and implementation")
    parser.add_argument("--workload", action="append", help=f"one of {list(CELLS)} (repeatable)")
    parser.add_argument(
        "--impl", action="append", help="only these cells and their variants (interpsuite: interpsuite_*; repeatable)"
    )
    parser.add_argument("--model", default="smollm2", help="smollm2 (default) or a tiny test model (tiny_llama)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=2, help="torch threads in every cell")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per cell (the median is reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per cell (the first gives the numbers)")
    parser.add_argument("--quick", action="store_true", help="3 layers in sweeps and grids, a small capture batch")
    parser.add_argument("--tolerance", type=float, default=peer_report.TOLERANCE)
    parser.add_argument("--cell-timeout", type=float, default=3600, help="seconds before a cell is stopped")
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=None,
        help="default benchmarks/results for a full SmolLM2 run, else /tmp/interpsuite_peers",
    )
    parser.add_argument("--stem", default=None, help="output file names (default peers, or peers_quick)")
    args = parser.parse_args(argv)
    if not args.all and not args.workload:
        parser.error("give --all or at least one --workload")
    if args.threads < 1 or args.repeats < 1 or args.warmup < 1:
        parser.error("--threads, --repeats and --warmup must be at least 1")
    if args.device not in ("cpu", "cuda") and not args.device.startswith("cuda:"):
        parser.error("--device must be cpu or cuda (or cuda:N)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    report = run(args)
    stem = args.stem or ("peers_quick" if args.quick else "peers")
    committed = args.model == "smollm2" and not args.quick
    out_dir = args.out_dir or (RESULTS_DIR if committed else Path(tempfile.gettempdir()) / "interpsuite_peers")
    json_path, md_path = peer_report.write(report, out_dir, stem)
    print()
    print(md_path.read_text(encoding="utf-8"))
    print(f"wrote {json_path} and {md_path} ({report['duration_s']:.0f} s)")
    return exit_status(report)


def exit_status(report: dict[str, Any]) -> int:
    """1 when some workload fails: a cell disagrees with its reference, except peers in a
    workload that reports races (`peer_report.RACE_REPORTED`), or a reference gave no numbers."""
    return 0 if report["passes"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
