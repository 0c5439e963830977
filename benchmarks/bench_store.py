"""Activation-store benchmark: record N texts x 64 tokens at 4 hook points of SmolLM2 to disk.

The claim checked: memory is bounded by the shard size, not the dataset. Each size runs in a
fresh subprocess, so its peak RSS (`resource.getrusage(RUSAGE_SELF).ru_maxrss`) is its own;
the peak after loading the model and one warm-up forward pass is reported as the baseline.
Peak RSS must not grow from 500 to 2,000 texts (4x the rows, 4x the bytes on disk).

Texts are built deterministically from the `english` dataset's sentences (seeded shuffle,
joined until well over 64 tokens) and truncated to 64 tokens (max_length=64), so every text
gives exactly 64 rows. Every run is also verified: rows = texts x 64, no duplicate
(text, position), and a re-computed batch equals the stored rows exactly.

    python benchmarks/bench_store.py            # 500 and 2,000 texts (several minutes on 2 cores)
    python benchmarks/bench_store.py --quick    # 50 and 200 texts, smaller shards (smoke test)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"
HOOKS = ["blocks.7.resid_post", "blocks.15.resid_post", "blocks.15.mlp.post", "blocks.23.resid_post"]
SEQ_LEN = 64
BATCH_SIZE = 16
GROWTH_LIMIT = 1.10  # peak RSS at the largest size / at the smallest, at most


def make_texts(n: int, seed: int = 0) -> list[str]:
    """n texts of 14 random sentences each (about 200 tokens; truncated to 64 when recorded)."""
    from interpsuite_plugins.datasets import english_sentences

    sentences = english_sentences()
    rng = random.Random(seed)
    return [" ".join(rng.choices(sentences, k=14)) for _ in range(n)]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def worker(n_texts: int, shard_tokens: int, threads: int | None) -> dict[str, Any]:
    """One size, in this (fresh) process: returns timings, sizes and peak RSS."""
    if threads:
        torch.set_num_threads(threads)
    from interpsuite_plugins.activation.store import ActivationStore, StoreWriter, verify_roundtrip

    from interpsuite.models import load_model

    model = load_model("smollm2")
    texts = make_texts(n_texts)
    warm = model.tokenize(texts[:BATCH_SIZE], SEQ_LEN)
    model.forward(warm, capture=HOOKS, logits_to_keep=1)
    baseline = peak_rss_mib()
    folder = Path(tempfile.mkdtemp(prefix="interpsuite-bench-store-"))
    try:
        writer = StoreWriter(
            folder, model, HOOKS, shard_tokens=shard_tokens, dtype="float32", batch_size=BATCH_SIZE, max_length=SEQ_LEN
        )
        started = time.perf_counter()
        stats = writer.write(texts)
        wall = time.perf_counter() - started
        peak = peak_rss_mib()
        store = ActivationStore(folder)
        disk = sum(p.stat().st_size for p in folder.iterdir())
        exact, _, compared = verify_roundtrip(store, model, texts)
        return {
            "texts": n_texts,
            "rows": len(store),
            "rows_expected": n_texts * SEQ_LEN,
            "shards": len(store.shards),
            "wall_s": wall,
            "rows_per_s": stats.rows_written / wall,
            "disk_bytes": disk,
            "peak_rss_mib": peak,
            "baseline_rss_mib": baseline,
            "store_rss_mib": peak - baseline,
            "duplicate_rows": store.duplicate_rows(),
            "roundtrip_max_abs_error": exact,
            "roundtrip_rows": compared,
        }
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def run_size(n_texts: int, shard_tokens: int, threads: int | None) -> dict[str, Any]:
    """`worker` in a fresh interpreter, so each size has its own peak RSS."""
    command = [sys.executable, __file__, "--worker", str(n_texts), "--shard-tokens", str(shard_tokens)]
    if threads:
        command += ["--threads", str(threads)]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"worker for {n_texts} texts failed:\n{completed.stdout}\n{completed.stderr}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="50 and 200 texts, 2,048-row shards")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/store.json)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads in the workers")
    parser.add_argument("--shard-tokens", type=int, default=None, help="rows per shard")
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    shard_tokens = args.shard_tokens or (2048 if args.quick else 16384)
    if args.worker is not None:
        print(json.dumps(worker(args.worker, shard_tokens, args.threads)))
        return 0

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_core import machine_info

    sizes = (50, 200) if args.quick else (500, 2000)
    load_start = os.getloadavg()
    runs = []
    for n in sizes:
        print(f"recording {n} texts x {SEQ_LEN} tokens at {len(HOOKS)} hook points ...", flush=True)
        runs.append(run_size(n, shard_tokens, args.threads))
    small, large = runs[0], runs[-1]
    units = 576 * 3 + 1536
    report = {
        "machine": machine_info(),
        "load_average": {"start": load_start, "end": os.getloadavg()},
        "settings": {
            "model": "smollm2",
            "hooks": HOOKS,
            "units_per_row": units,
            "seq_len": SEQ_LEN,
            "batch_size": BATCH_SIZE,
            "shard_tokens": shard_tokens,
            "shard_buffer_mib": shard_tokens * units * 4 / 2**20,
            "dtype": "float32",
            "quick": args.quick,
        },
        "runs": runs,
        "targets": {
            "rss_does_not_grow": {
                "value": large["peak_rss_mib"] / small["peak_rss_mib"],
                "target": GROWTH_LIMIT,
                "met": large["peak_rss_mib"] / small["peak_rss_mib"] <= GROWTH_LIMIT,
            },
            "exact_and_complete": {
                "met": all(
                    r["rows"] == r["rows_expected"] and r["duplicate_rows"] == 0 and r["roundtrip_max_abs_error"] == 0
                    for r in runs
                )
            },
        },
    }
    out = args.out or RESULTS_DIR / ("store_quick.json" if args.quick else "store.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"\n{'texts':>6} {'rows':>8} {'shards':>6} {'wall s':>7} {'rows/s':>7} {'disk MiB':>9} "
          f"{'peak RSS MiB':>12} {'baseline':>9} {'store':>7}")  # fmt: skip
    for r in runs:
        print(
            f"{r['texts']:>6} {r['rows']:>8} {r['shards']:>6} {r['wall_s']:>7.1f} {r['rows_per_s']:>7.0f} "
            f"{r['disk_bytes'] / 2**20:>9.1f} {r['peak_rss_mib']:>12.0f} {r['baseline_rss_mib']:>9.0f} "
            f"{r['store_rss_mib']:>7.0f}"
        )
    growth = report["targets"]["rss_does_not_grow"]
    print(
        f"peak RSS {large['texts']}/{small['texts']} texts: {growth['value']:.3f} (target <= {GROWTH_LIMIT}); "
        f"shard buffer {report['settings']['shard_buffer_mib']:.0f} MiB; "
        f"exact and complete: {report['targets']['exact_and_complete']['met']}"
    )
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
