"""Activation-patching benchmark on SmolLM2: batched sweeps against one forward pass per patch.

Two sweeps on the IOI pair (clean "When Mary and John went to the store, John gave a drink to",
corrupted "..., Mary gave a drink to"), clean activations patched into the corrupted run, metric
logit(" Mary") - logit(" John") at the last token:

1. every head's output (270 heads, all positions);
2. the residual stream (`resid_pre`) at every layer x position (30 x 15 = 450 patches).

The reference is the loop a user writes with plain torch forward hooks: one pass per patch
(stock transformers SDPA, full logits as `model(ids)` returns them; a variant keeping only the
last logit is reported too). interpsuite variants: `naive` (one patch per batch row, every pass
from the embeddings), `sweep` (HookedModel.sweep: passes start at the earliest layer and
position they touch, from the clean run) at several batch sizes, and for (2) the analyzer's own
path, which also skips positions before the first differing token (their effect is exactly 0).
Every variant is checked against the loop (max |diff| <= 1e-4). Peak extra memory (RSS above
the idle process, sampled every 5 ms) shows what `batch_size` bounds.

    python benchmarks/bench_patching.py           # full run, ~5 minutes on 2 cores
    python benchmarks/bench_patching.py --quick   # smoke test
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psutil
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_core import machine_info, stock_model, summarise, time_interleaved  # noqa: E402
from interpsuite_plugins.mechanistic.pairs import PromptPair, tokenize_pairs  # noqa: E402
from interpsuite_plugins.mechanistic.patching import head_items, layer_position_items, prepare  # noqa: E402

from interpsuite.models import HookedModel, load_model  # noqa: E402

TARGET_SPEEDUP = 8.0
TOLERANCE = 1e-4
PAIR = PromptPair(
    "When Mary and John went to the store, John gave a drink to",
    "When Mary and John went to the store, Mary gave a drink to",
    " Mary",
    " John",
)
#: Measured in the issue on the same kind of 2-core machine (seconds).
ISSUE_REFERENCE = {
    "heads": {"loop": 18.5, "naive_batched": 4.5, "transformer_lens": 29.8, "nnsight": 22.8},
    "resid_layer_position": {"loop": 26.3, "naive_batched": 6.6, "transformer_lens": 41.7, "nnsight": 34.9},
}
RESULTS_DIR = Path(__file__).resolve().parent / "results"


class PeakMemory:
    """Peak RSS above the level at entry, sampled in a background thread."""

    def __init__(self, interval: float = 0.005):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    def __enter__(self) -> PeakMemory:
        self.process = psutil.Process()
        self.base = self.process.memory_info().rss
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss - self.base)
            time.sleep(self.interval)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.thread.join()

    @property
    def mib(self) -> float:
        return self.peak / 2**20


# --- the reference loop: plain torch hooks, one pass per patch ------------------------------------
def loop_patch(model: HookedModel, ids: torch.Tensor, answers: tuple[int, int], patches, full_logits: bool):
    """`patches`: (module, make_pre_hook) per patch; returns the logit difference of each pass."""
    good, bad = answers
    values = torch.empty(len(patches))
    with torch.no_grad():
        for i, (module, hook) in enumerate(patches):
            handle = module.register_forward_pre_hook(hook)
            try:
                kwargs = {} if full_logits else {"logits_to_keep": 1}
                logits = stock_model(model)(input_ids=ids, use_cache=False, **kwargs).logits
            finally:
                handle.remove()
            values[i] = logits[0, -1, good] - logits[0, -1, bad]
    return values


def head_patches(model: HookedModel, clean_z: dict[int, torch.Tensor]):
    """Pre-hooks on o_proj writing one head's clean slice (o_proj's input is the heads' concatenation)."""
    d_head, layers = model.info.d_head, stock_model(model).model.layers
    patches = []
    for layer in range(model.info.n_layers):
        for head in range(model.info.n_heads):
            part = slice(head * d_head, (head + 1) * d_head)

            def hook(module: nn.Module, args: tuple, layer: int = layer, part: slice = part) -> tuple:
                z = args[0].clone()
                z[..., part] = clean_z[layer][..., part]
                return (z, *args[1:])

            patches.append((layers[layer].self_attn.o_proj, hook))
    return patches


def resid_patches(model: HookedModel, clean_resid: dict[int, torch.Tensor], width: int):
    """Pre-hooks on each decoder layer writing the clean residual stream at one position."""
    layers = stock_model(model).model.layers
    patches = []
    for layer in range(model.info.n_layers):
        for position in range(width):

            def hook(module: nn.Module, args: tuple, layer: int = layer, position: int = position) -> tuple:
                hidden = args[0].clone()
                hidden[:, position] = clean_resid[layer][:, position]
                return (hidden, *args[1:])

            patches.append((layers[layer], hook))
    return patches


def clean_activations(model: HookedModel, ids: torch.Tensor):
    """Clean o_proj inputs and decoder-layer inputs captured with plain hooks (the loop's own source)."""
    z, resid, handles = {}, {}, []
    for layer, block in enumerate(stock_model(model).model.layers):
        handles.append(block.self_attn.o_proj.register_forward_pre_hook(lambda m, a, i=layer: z.__setitem__(i, a[0])))
        handles.append(block.register_forward_pre_hook(lambda m, a, i=layer: resid.__setitem__(i, a[0])))
    try:
        with torch.no_grad():
            stock_model(model)(input_ids=ids, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return z, resid


def run_benchmark(quick: bool, repeats: int) -> dict[str, Any]:
    model = load_model("smollm2")
    pairs = tokenize_pairs(model, [PAIR])
    clean_ids, corrupted_ids = pairs.clean.input_ids, pairs.corrupted.input_ids
    width = int(corrupted_ids.shape[1])
    answers = (int(pairs.answer_ids[0]), int(pairs.wrong_ids[0]))
    n_layers, n_heads = model.info.n_layers, model.info.n_heads
    layers = list(range(0, n_layers, 5)) if quick else list(range(n_layers))
    clean_z, clean_resid = clean_activations(model, clean_ids)
    run = prepare(model, pairs, [f"blocks.{L}.{s}" for L in layers for s in ("attn.z", "resid_pre")])
    keep = [L * n_heads + h for L in layers for h in range(n_heads)]
    all_heads = head_patches(model, clean_z)
    heads_loop = [all_heads[i] for i in keep]
    all_resid = resid_patches(model, clean_resid, width)
    resid_loop = [all_resid[L * width + p] for L in layers for p in range(width)]
    every_head = [[run.patch(f"blocks.{L}.attn.z", heads=[h])] for L in layers for h in range(n_heads)]
    heads_sweep = head_items(run, layers)  # positions from the first difference on (the rest are equal)
    resid_items = layer_position_items(run, "resid_pre", layers, range(width))
    computed = list(range(pairs.first_diff, width))
    analyzer_items = layer_position_items(run, "resid_pre", layers, computed)

    def analyzer_resid(batch_size: int) -> torch.Tensor:
        """The analyzer's path: positions before the first difference are exactly the corrupted run."""
        grid = torch.full((len(layers), width), run.corrupted_value, dtype=torch.float64)
        grid[:, pairs.first_diff :] = run.sweep(analyzer_items, batch_size).reshape(len(layers), len(computed))
        return grid.flatten()

    batch_sizes = (32,) if quick else (16, 32, 64)
    sweeps: dict[str, dict[str, Callable[[], torch.Tensor]]] = {
        "heads": {
            "loop_full_logits": lambda: loop_patch(model, corrupted_ids, answers, heads_loop, True),
            "loop_last_logit": lambda: loop_patch(model, corrupted_ids, answers, heads_loop, False),
            "naive_bs32": lambda: _naive(model, pairs, every_head, 32),
            **{f"sweep_bs{b}": (lambda b=b: run.sweep(heads_sweep, b)) for b in batch_sizes},
        },
        "resid_layer_position": {
            "loop_full_logits": lambda: loop_patch(model, corrupted_ids, answers, resid_loop, True),
            "loop_last_logit": lambda: loop_patch(model, corrupted_ids, answers, resid_loop, False),
            "naive_bs32": lambda: _naive(model, pairs, resid_items, 32),
            **{f"sweep_bs{b}": (lambda b=b: run.sweep(resid_items, b)) for b in batch_sizes},
            "analyzer_bs32": lambda: analyzer_resid(32),
        },
    }
    report: dict[str, Any] = {}
    for name, variants in sweeps.items():
        reference = variants["loop_full_logits"]().double()
        diffs, memory = {}, {}
        for label, variant in variants.items():
            with PeakMemory() as peak:
                values = variant().double()
            diffs[label] = float((values - reference).abs().max())
            memory[label] = round(peak.mib, 1)
        times = time_interleaved(variants, 0, repeats)
        medians = {label: statistics.median(t) for label, t in times.items()}
        best = min((label for label in medians if label.startswith(("sweep", "analyzer"))), key=medians.get)
        report[name] = {
            "patches": len(reference),
            "times_s": {label: summarise(t) for label, t in times.items()},
            "speedup_vs_loop_full_logits": {label: medians["loop_full_logits"] / m for label, m in medians.items()},
            "speedup_vs_loop_last_logit": {label: medians["loop_last_logit"] / m for label, m in medians.items()},
            "max_abs_diff_vs_loop": diffs,
            "peak_extra_rss_mib": memory,
            "best": best,
            "clean_logit_diff": run.clean_value,
            "corrupted_logit_diff": run.corrupted_value,
        }
    report["first_differing_position"] = pairs.first_diff
    report["tokens"] = pairs.corrupted.tokens[0]
    report["hooks_left"] = model.hooks_left()
    return report


def _naive(model: HookedModel, pairs, items, batch_size: int) -> torch.Tensor:
    """Plain batching: the same items, every pass from the embeddings over all positions."""
    from interpsuite_plugins.mechanistic.metrics import last_positions, sweep_logit_diff

    keep, column = last_positions(pairs.corrupted)
    metric = sweep_logit_diff(column, pairs.answer_ids, pairs.wrong_ids)
    with torch.no_grad():
        out = model.sweep(
            pairs.corrupted, items, metric, batch_size=batch_size, logits_to_keep=keep, reuse_prefix=False
        )
    return out.mean(1)


def targets(report: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for name in ("heads", "resid_layer_position"):
        part = report[name]
        speed = part["speedup_vs_loop_full_logits"][part["best"]]
        worst_diff = max(part["max_abs_diff_vs_loop"].values())
        out[f"{name}_speedup"] = {"value": speed, "target": f">= {TARGET_SPEEDUP}", "met": speed >= TARGET_SPEEDUP}
        out[f"{name}_max_abs_diff"] = {"value": worst_diff, "target": f"<= {TOLERANCE}", "met": worst_diff <= TOLERANCE}
    return out


def format_report(report: dict[str, Any]) -> str:
    machine, load = report["machine"], report["load_average"]
    lines = [
        f"{machine['processor']} ({machine['cpu_count']} cores, {report['torch_threads']} torch threads); load average "
        f"{load['start'][0]:.1f} at start, {load['end'][0]:.1f} at end"
    ]
    for name in ("heads", "resid_layer_position"):
        part = report[name]
        lines += ["", f"{name}: {part['patches']} patches", f"  {'variant':<20}{'median s':>10}{'x loop':>8}"
                  f"{'x loop(last)':>13}{'max |diff|':>12}{'peak MiB':>10}{'issue s':>9}"]  # fmt: skip
        issue = ISSUE_REFERENCE[name]
        ref = {"loop_full_logits": issue["loop"], "naive_bs32": issue["naive_batched"]}
        for label, stats in part["times_s"].items():
            lines.append(
                f"  {label:<20}{stats['median']:>10.2f}{part['speedup_vs_loop_full_logits'][label]:>8.2f}"
                f"{part['speedup_vs_loop_last_logit'][label]:>13.2f}{part['max_abs_diff_vs_loop'][label]:>12.1e}"
                f"{part['peak_extra_rss_mib'][label]:>10.1f}{ref.get(label, ''):>9}"
            )
        for other in ("transformer_lens", "nnsight"):
            lines.append(f"  {'(issue) ' + other:<20}{'':>51}{issue[other]:>9}")
    lines += ["", "Targets"]
    for name, target in report["targets"].items():
        lines.append(
            f"  {name:<34}{target['value']:>10.4g}  ({target['target']})  {'MET' if target['met'] else 'NOT MET'}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="every 5th layer, one repeat: a smoke test")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per variant (default 3, quick 1)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    started, load_before = time.perf_counter(), os.getloadavg()
    repeats = args.repeats or (1 if args.quick else 3)
    report = run_benchmark(args.quick, repeats)
    report.update(
        {
            "benchmark": "patching",
            "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "quick": args.quick,
            "repeats": repeats,
            "machine": machine_info(),
            "load_average": {"start": load_before, "end": os.getloadavg()},
            "issue_reference": ISSUE_REFERENCE,
            "torch_threads": torch.get_num_threads(),
        }
    )
    report["targets"] = targets(report)
    report["duration_s"] = time.perf_counter() - started
    out = args.out or RESULTS_DIR / ("patching_quick.json" if args.quick else "patching.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(format_report(report))
    print(f"\nwrote {out} ({report['duration_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
