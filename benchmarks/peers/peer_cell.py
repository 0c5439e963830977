"""One cell (workload x implementation) in its own process: warm-up, N timed runs, peak RSS, numbers.

    python benchmarks/peers/peer_cell.py --workload head_sweep --impl plain --model tiny_llama --out DIR

The parent (`run.py`) starts one of these per cell, so each cell gets a fresh interpreter (no
allocator or cache state from another library) and its peak RSS is its own. The cell writes
`DIR/cell.json` (times, memory, threads, load average, attention kernel, library version, status)
and `DIR/values.safetensors` (the numbers of its first run, compared by the parent).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import os
import resource
import statistics
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

#: workload -> [(cell name, implementation module)], the order the table shows; the first is the
#: reference every other cell's numbers and time are compared with
CELLS: dict[str, list[tuple[str, str]]] = {
    "capture": [
        ("interpsuite", "impl_interpsuite"),
        ("bare", "impl_plain"),
        ("plain", "impl_plain"),
        ("transformer_lens", "impl_tlens"),
        ("nnsight", "impl_nnsight"),
    ],
    "head_sweep": [
        ("interpsuite_readme", "impl_interpsuite"),
        ("interpsuite_best", "impl_interpsuite"),
        ("plain", "impl_plain"),
        ("transformer_lens", "impl_tlens"),
        ("nnsight", "impl_nnsight"),
    ],
    "patching": [
        ("interpsuite", "impl_interpsuite"),
        ("plain", "impl_plain"),
        ("transformer_lens", "impl_tlens"),
        ("nnsight", "impl_nnsight"),
    ],
    "ig": [("interpsuite", "impl_interpsuite"), ("captum", "impl_captum"), ("captum_last_logit", "impl_captum")],
    "attention": [
        ("interpsuite", "impl_interpsuite"),
        ("plain", "impl_plain"),
        ("transformer_lens", "impl_tlens"),
        ("nnsight", "impl_nnsight"),
    ],
    "sae": [
        ("interpsuite", "impl_interpsuite"),
        ("sae_lens", "impl_saelens"),
        ("plain", "impl_plain"),
        ("nnsight", "impl_nnsight"),
    ],
    "concurrency": [
        ("interpsuite", "impl_interpsuite"),
        ("plain", "impl_plain"),
        ("transformer_lens", "impl_tlens"),
        ("nnsight", "impl_nnsight"),
    ],
}
#: the distribution each implementation module needs beyond interpsuite (a missing one skips the cell)
REQUIRES = {
    "impl_tlens": "transformer-lens",
    "impl_nnsight": "nnsight",
    "impl_captum": "captum",
    "impl_saelens": "sae-lens",
}
#: the interpsuite extra that installs a module's library (default: peers)
EXTRAS = {"impl_saelens": "sae"}
#: module -> (distribution, first major version its library cannot import with, why): a skip, not an error
CONFLICTS = {
    "impl_saelens": ("transformer-lens", 4, "SAELens 6 imports HookedTransformer, which TransformerLens 4 removed")
}
#: cells that time a baseline and capture nothing: no numbers to compare
NO_VALUES = {("capture", "bare")}


def module_of(workload: str, impl: str) -> str:
    for name, module in CELLS[workload]:
        if name == impl:
            return module
    raise KeyError(f"no cell {impl!r} for workload {workload!r}; choose from {[n for n, _ in CELLS[workload]]}")


def library_version(module: str) -> str:
    """The distribution version the cell measures (interpsuite's for interpsuite and plain cells)."""
    dist = REQUIRES.get(module, "interpsuite" if module == "impl_interpsuite" else "torch")
    try:
        return f"{dist} {importlib.metadata.version(dist)}"
    except importlib.metadata.PackageNotFoundError:
        return f"{dist} (not installed)"


def missing_library(module: str) -> str | None:
    dist = REQUIRES.get(module)
    if dist is None:
        return None
    try:
        importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return f"{dist} is not installed (pip install 'interpsuite[{EXTRAS.get(module, 'peers')}]')"
    return _conflict(module)


def _conflict(module: str) -> str | None:
    """Why the module's library cannot import next to what else is installed (None: it can)."""
    if module not in CONFLICTS:
        return None
    dist, major, why = CONFLICTS[module]
    try:
        version = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None
    if int(version.split(".")[0]) >= major:
        return f"{REQUIRES[module]} cannot run with {dist} {version}: {why}"
    return None


def _library_or_blank(workload: str, impl: str) -> str:
    """The library version for an error record (blank when the cell name itself is unknown)."""
    try:
        return library_version(module_of(workload, impl))
    except KeyError:
        return ""


def peak_rss_mib() -> float:
    """This process's peak resident set size so far (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_cell(
    workload: str, impl: str, model: str, device: str, threads: int, repeats: int, warmup: int, quick: bool, out: Path
) -> dict[str, Any]:
    """Build the cell, run it warmup + repeats times, write cell.json and values.safetensors.
    Torch's thread count is set for the cell and put back afterwards (a test may call this in
    its own process, whose later tests must not inherit one thread)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _measure(workload, impl, model, device, threads, repeats, warmup, quick, out)
    finally:
        torch.set_num_threads(previous)


def _measure(
    workload: str, impl: str, model: str, device: str, threads: int, repeats: int, warmup: int, quick: bool, out: Path
) -> dict[str, Any]:
    import torch
    from safetensors.torch import save_file

    module_name = module_of(workload, impl)
    record: dict[str, Any] = {
        "workload": workload,
        "impl": impl,
        "model": model,
        "device": device,
        "quick": quick,
        "library": library_version(module_name),
        "torch_threads": threads,
        "load_average_start": list(os.getloadavg()),
    }
    reason = missing_library(module_name)
    if reason is not None:
        return {**record, "status": "skipped", "reason": reason}
    from peer_workloads import build_problem

    problem = build_problem(model, device, quick)
    cell = importlib.import_module(module_name).BUILDERS[(workload, impl)](problem)
    record.update(attention=cell.attention, note=cell.note)
    record["rss_after_setup_mib"] = peak_rss_mib()

    def timed() -> tuple[float, Any]:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        value = cell.run()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start, value

    first_s, values = timed()  # the first run is a warm-up, and its numbers are the ones compared
    for _ in range(max(0, warmup - 1)):
        timed()
    times = [timed()[0] for _ in range(repeats)]
    if (workload, impl) not in NO_VALUES:
        save_file({"values": values.detach().float().cpu().contiguous()}, str(out / "values.safetensors"))
    record.update(
        status="ok",
        first_run_s=first_s,
        times_s=times,
        median_s=statistics.median(times),
        min_s=min(times),
        peak_rss_mib=peak_rss_mib(),
        rss_growth_mib=peak_rss_mib() - record["rss_after_setup_mib"],
        load_average_end=list(os.getloadavg()),
        has_values=(workload, impl) not in NO_VALUES,
    )
    if device.startswith("cuda"):
        record["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return record


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", required=True, choices=list(CELLS))
    parser.add_argument("--impl", required=True)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, required=True, help="directory for cell.json and values.safetensors")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        record = run_cell(
            args.workload,
            args.impl,
            args.model,
            args.device,
            args.threads,
            args.repeats,
            args.warmup,
            args.quick,
            args.out,
        )
    except Exception as error:  # recorded in the table, so one broken peer does not stop the others
        record = {
            "workload": args.workload,
            "impl": args.impl,
            "library": _library_or_blank(args.workload, args.impl),
            "status": "error",
            "reason": f"{type(error).__name__}: {error}".splitlines()[0][:300],
            "traceback": traceback.format_exc()[-4000:],
        }
    (args.out / "cell.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return 0 if record["status"] != "error" else 1


if __name__ == "__main__":
    raise SystemExit(main())
