"""Core performance benchmark: capture overhead and batched head-ablation sweeps on SmolLM2.

Two claims of the model layer are checked against plain PyTorch doing the same work:

1. Capturing activations costs (almost) nothing: `HookedModel.forward(capture=...)` on 30
   `resid_post` points should be within 5 % of a bare forward pass, like plain torch hooks.
2. Sweeps are batched: zero-ablating each of the 270 heads through `HookedModel.sweep` should be
   at least 4x faster than the obvious loop of one forward pass per head, with the same numbers.

Variants are interleaved (ABC, BCA, CAB, ...) and summarised by their median, so slow drift of a
shared machine hits every variant alike. Reference variants run the stock transformers SDPA
attention and no interpsuite code at all. Results go to JSON (see benchmarks/README.md).

    python benchmarks/bench_core.py            # full run, a few minutes on 2 cores
    python benchmarks/bench_core.py --quick    # smoke test, well under a minute
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn

import interpsuite
from interpsuite.hooks import Intervention
from interpsuite.models import HookedModel, TokenBatch, load_model

CAPTURE_TARGET = 1.05  # interpsuite capture / bare forward, at most
SWEEP_SPEEDUP_TARGET = 4.0  # one-pass-per-head loop / best interpsuite sweep, at least
SWEEP_TOLERANCE = 1e-4  # max |logit diff (sweep) - logit diff (loop)|
NOISY_SPREAD = 1.5  # max/min of one variant's samples above which the timing is flagged noisy

IOI_PROMPT = "When Mary and John went to the store, John gave a drink to"
IOI_ANSWERS = (" Mary", " John")

#: Numbers quoted in the issue, measured on the same 2-core machine (seconds / ratios).
ISSUE_REFERENCE: dict[str, dict[str, float]] = {
    "sweep_s": {"loop": 18.5, "naive_batched": 4.5, "transformer_lens": 29.8, "nnsight": 22.8},
    "capture_ratio": {"plain_hooks": 1.00, "nnsight": 1.03, "transformer_lens": 1.11},
}

RESULTS_DIR = Path(__file__).resolve().parent / "results"

Variant = Callable[[], object]


@dataclass(frozen=True)
class Settings:
    """How much work a run does; `--quick` shrinks everything to a smoke test."""

    quick: bool
    warmup: int  # untimed capture passes per variant
    repeats: int  # timed capture passes per variant
    sweep_repeats: int  # timed sweeps per variant (after one untimed, checked run)
    batch_sizes: tuple[int, ...]
    sweep_layers: tuple[int, ...]
    capture_batch: int = 16
    capture_seq_len: int = 64
    seed: int = 0

    @classmethod
    def for_run(cls, quick: bool, n_layers: int) -> Settings:
        if quick:
            return cls(
                quick=True,
                warmup=1,
                repeats=2,
                sweep_repeats=1,
                batch_sizes=(16,),
                sweep_layers=tuple(range(0, n_layers, 10)),
            )
        return cls(
            quick=False,
            warmup=3,
            repeats=15,
            sweep_repeats=3,
            batch_sizes=(16, 32, 64),
            sweep_layers=tuple(range(n_layers)),
        )


# --- timing ------------------------------------------------------------------------------------
def time_interleaved(variants: dict[str, Variant], warmup: int, repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each variant, rotating the order every round to spread noise evenly."""
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            variants[name]()
            times[name].append(time.perf_counter() - start)
    return times


def summarise(samples: Sequence[float]) -> dict[str, Any]:
    """Median (what targets use), min (least disturbed run) and a flag for a disturbed machine."""
    spread = max(samples) / min(samples)
    return {
        "median": statistics.median(samples),
        "min": min(samples),
        "spread": spread,
        "noisy": spread > NOISY_SPREAD,
        "all": list(samples),
    }


_TWINS: dict[int, nn.Module] = {}


def stock_model(model: HookedModel) -> nn.Module:
    """An unwrapped copy of the model (same weights, stock SDPA attention, no interpsuite
    listeners), so reference variants run no interpsuite code at all."""
    if id(model) not in _TWINS:
        config = model.hf_model.config.__class__.from_dict(model.hf_model.config.to_dict())
        config._attn_implementation = "sdpa"
        twin = type(model.hf_model)(config).eval()
        twin.load_state_dict(model.hf_model.state_dict())
        _TWINS[id(model)] = twin
    return _TWINS[id(model)]


def _hidden(output: torch.Tensor | tuple) -> torch.Tensor:
    """A decoder layer's hidden state, whether the layer returns a tensor or a tuple."""
    return output[0] if isinstance(output, tuple) else output


# --- 1. capture overhead -----------------------------------------------------------------------
def random_batch(model: HookedModel, settings: Settings) -> TokenBatch:
    """Deterministic random token ids, no padding, so every variant sees the same inputs."""
    generator = torch.Generator().manual_seed(settings.seed)
    shape = (settings.capture_batch, settings.capture_seq_len)
    input_ids = torch.randint(0, model.info.vocab_size, shape, generator=generator)
    mask = torch.ones_like(input_ids)
    return TokenBatch(input_ids, mask, tokens=[[]] * shape[0], text_ids=list(range(shape[0])))


def bare_forward(model: HookedModel, batch: TokenBatch) -> torch.Tensor:
    """The baseline everything is measured against: stock transformers, no hooks, all logits."""
    with torch.no_grad():
        return stock_model(model)(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False
        ).logits


def plain_hooks_forward(model: HookedModel, batch: TokenBatch) -> list[torch.Tensor]:
    """The hand-written baseline: torch forward hooks on each decoder layer storing its output."""
    store: list[torch.Tensor] = []

    def keep(module: nn.Module, args: tuple, output: torch.Tensor | tuple) -> None:
        store.append(_hidden(output).detach())

    handles = [layer.register_forward_hook(keep) for layer in stock_model(model).model.layers]
    try:
        bare_forward(model, batch)
    finally:
        for handle in handles:
            handle.remove()
    return store


def bench_capture(model: HookedModel, settings: Settings) -> dict[str, Any]:
    """Bare forward vs plain torch hooks vs interpsuite capture of every resid_post."""
    batch = random_batch(model, settings)
    names = [f"blocks.{layer}.resid_post" for layer in range(model.info.n_layers)]
    variants: dict[str, Variant] = {
        "bare": lambda: bare_forward(model, batch),
        "plain_hooks": lambda: plain_hooks_forward(model, batch),
        "interpsuite": lambda: model.forward(batch, capture=names),
    }
    times = time_interleaved(variants, settings.warmup, settings.repeats)
    medians = {name: statistics.median(samples) for name, samples in times.items()}

    reference = plain_hooks_forward(model, batch)
    result = model.forward(batch, capture=names)
    captured = torch.stack([result.cache[name] for name in names])
    return {
        "batch": settings.capture_batch,
        "seq_len": settings.capture_seq_len,
        "hook_points": len(names),
        "times_s": {name: summarise(samples) for name, samples in times.items()},
        "ratio_vs_bare": {name: medians[name] / medians["bare"] for name in medians},
        "ratio_vs_bare_of_min": {name: min(times[name]) / min(times["bare"]) for name in times},
        "ratio_vs_plain_hooks": {name: medians[name] / medians["plain_hooks"] for name in medians},
        "max_abs_diff": {
            "captures_vs_plain_hooks": (captured - torch.stack(reference)).abs().max().item(),
            "logits_vs_bare": (result.output - bare_forward(model, batch)).abs().max().item(),
        },
        "hooks_left": model.hooks_left(),
    }


# --- 2. head-ablation sweep --------------------------------------------------------------------
def head_list(model: HookedModel, settings: Settings) -> list[tuple[int, int]]:
    """(layer, head) pairs in layer order, the order both the loop and the sweep report in."""
    return [(layer, head) for layer in settings.sweep_layers for head in range(model.info.n_heads)]


def loop_sweep(
    model: HookedModel,
    batch: TokenBatch,
    heads: Sequence[tuple[int, int]],
    answer_ids: tuple[int, int],
    logits_to_keep: int,
) -> torch.Tensor:
    """The reference: one forward pass per head, a torch pre-hook zeroing its slice of o_proj's input."""
    d_head = model.info.d_head
    stock = stock_model(model)
    layers = stock.model.layers
    good, bad = answer_ids
    values = torch.empty(len(heads))
    with torch.no_grad():
        for i, (layer, head) in enumerate(heads):

            def zero_head(module: nn.Module, args: tuple, head: int = head) -> tuple:
                z = args[0].clone()
                z[..., head * d_head : (head + 1) * d_head] = 0
                return (z, *args[1:])

            handle = layers[layer].self_attn.o_proj.register_forward_pre_hook(zero_head)
            try:
                logits = stock(
                    input_ids=batch.input_ids,
                    attention_mask=batch.attention_mask,
                    use_cache=False,
                    logits_to_keep=logits_to_keep,
                ).logits
            finally:
                handle.remove()
            values[i] = logits[0, -1, good] - logits[0, -1, bad]
    return values


def interpsuite_sweep(
    model: HookedModel,
    batch: TokenBatch,
    heads: Sequence[tuple[int, int]],
    answer_ids: tuple[int, int],
    batch_size: int,
    reuse_prefix: bool,
    stage_rows: bool = True,
) -> torch.Tensor:
    """The same ablations as interpsuite items, batch_size of them per forward pass."""
    good, bad = answer_ids
    items = [[Intervention(f"blocks.{layer}.attn.z", "zero", heads=head)] for layer, head in heads]

    def logit_diff(logits: torch.Tensor, rows: TokenBatch) -> torch.Tensor:
        return logits[:, -1, good] - logits[:, -1, bad]

    options = {"batch_size": batch_size, "reuse_prefix": reuse_prefix, "stage_rows": stage_rows}
    return model.sweep(batch, items, logit_diff, logits_to_keep=1, **options)[:, 0]


def sweep_variants(
    model: HookedModel,
    batch: TokenBatch,
    heads: Sequence[tuple[int, int]],
    answer_ids: tuple[int, int],
    settings: Settings,
) -> dict[str, Variant]:
    """Every sweep variant as a zero-argument callable returning the [n_heads] logit diffs."""
    variants: dict[str, Variant] = {
        "loop": lambda: loop_sweep(model, batch, heads, answer_ids, logits_to_keep=1),
    }
    if not settings.quick:
        variants["loop_full_logits"] = lambda: loop_sweep(model, batch, heads, answer_ids, logits_to_keep=0)
    for size in settings.batch_sizes:
        # sweep: rows join at their own layer; unstaged: a pass's rows start at its first layer;
        # naive: every pass from the tokens
        for label, reuse, stage in (("sweep", True, True), ("unstaged", True, False), ("naive", False, True)):
            variants[f"{label}_bs{size}"] = lambda size=size, reuse=reuse, stage=stage: interpsuite_sweep(
                model, batch, heads, answer_ids, size, reuse, stage
            )
    return variants


def bench_sweep(model: HookedModel, settings: Settings) -> dict[str, Any]:
    """Time each sweep variant; its first (untimed) run provides the values that are compared."""
    batch = model.tokenize([IOI_PROMPT])
    answer_ids = (model.to_single_token(IOI_ANSWERS[0]), model.to_single_token(IOI_ANSWERS[1]))
    heads = head_list(model, settings)
    variants = sweep_variants(model, batch, heads, answer_ids, settings)

    values = {name: run() for name, run in variants.items()}  # doubles as the warm-up
    times = time_interleaved(variants, 0, settings.sweep_repeats)
    medians = {name: statistics.median(samples) for name, samples in times.items()}
    reference = values["loop"]
    speedup = {name: medians["loop"] / medians[name] for name in medians}
    return {
        "prompt": IOI_PROMPT,
        "metric": f"logit({IOI_ANSWERS[0]!r}) - logit({IOI_ANSWERS[1]!r}) at the last position",
        "n_heads": len(heads),
        "layers": list(settings.sweep_layers),
        "clean_logit_diff": clean_logit_diff(model, batch, answer_ids),
        "times_s": {name: summarise(samples) for name, samples in times.items()},
        "speedup_vs_loop": speedup,
        "max_abs_diff_vs_loop": {
            name: (values[name] - reference).abs().max().item() for name in variants if name != "loop"
        },
        "best_sweep": fastest(medians, "sweep_"),
        "best_naive": fastest(medians, "naive_"),
        "top_heads": top_heads(heads, reference),
        "hooks_left": model.hooks_left(),
    }


# --- 3. one model shared by threads ----------------------------------------------------------
def bench_threads(model: HookedModel, settings: Settings, n_threads: int = 4) -> dict[str, Any]:
    """n threads sharing one HookedModel, each running the head sweep, vs the same sweeps one
    after another. The numbers must be identical; throughput is sweeps per second."""
    batch = model.tokenize([IOI_PROMPT])
    answer_ids = (model.to_single_token(IOI_ANSWERS[0]), model.to_single_token(IOI_ANSWERS[1]))
    heads = head_list(model, settings)
    size = settings.batch_sizes[-1]

    def one() -> torch.Tensor:
        return interpsuite_sweep(model, batch, heads, answer_ids, size, True)

    reference = one()  # warm-up and the values every run must reproduce
    started = time.perf_counter()
    sequential = [one() for _ in range(n_threads)]
    sequential_s = time.perf_counter() - started
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=n_threads) as pool:
        threaded = list(pool.map(lambda _: one(), range(n_threads)))
    threaded_s = time.perf_counter() - started
    return {
        "threads": n_threads,
        "n_heads": len(heads),
        "batch_size": size,
        "torch_threads": torch.get_num_threads(),
        "sequential_s": sequential_s,
        "threaded_s": threaded_s,
        "sweeps_per_s": {"sequential": n_threads / sequential_s, "threaded": n_threads / threaded_s},
        "throughput_ratio": sequential_s / threaded_s,
        "identical": all(torch.equal(v, reference) for v in (*sequential, *threaded)),
        "max_abs_diff": max((v - reference).abs().max().item() for v in (*sequential, *threaded)),
        "hooks_left": model.hooks_left(),
    }


def fastest(medians: dict[str, float], prefix: str) -> str:
    """The batch size whose variant with this prefix had the lowest median time."""
    return min((name for name in medians if name.startswith(prefix)), key=medians.__getitem__)


def clean_logit_diff(model: HookedModel, batch: TokenBatch, answer_ids: tuple[int, int]) -> float:
    """The unablated metric, so the ablation effects in the JSON can be read as drops from it."""
    logits = model.forward(batch, logits_to_keep=1).output
    return (logits[0, -1, answer_ids[0]] - logits[0, -1, answer_ids[1]]).item()


def top_heads(heads: Sequence[tuple[int, int]], values: torch.Tensor, k: int = 5) -> list[dict[str, Any]]:
    """The heads whose ablation lowers the logit difference most (a sanity check on the numbers)."""
    order = torch.argsort(values)[:k].tolist()
    return [{"head": f"L{heads[i][0]}H{heads[i][1]}", "logit_diff": values[i].item()} for i in order]


# --- report ------------------------------------------------------------------------------------
def write_report(report: dict[str, Any], out: Path) -> None:
    """The benchmark's JSON, written and printed (every benchmark ends this way)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=2))


def machine_info() -> dict[str, Any]:
    """What CPU timings depend on, so runs on different machines are not compared blindly."""
    return {
        "platform": platform.platform(),
        "processor": _cpu_model(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "interpsuite": interpsuite.__version__,
        "git_commit": _git_commit(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def _git_commit() -> str | None:
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        root = Path(__file__).resolve().parent.parent
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    return None


def targets(capture: dict[str, Any], sweep: dict[str, Any]) -> dict[str, dict[str, Any]]:
    best = sweep["best_sweep"]
    exact = max(sweep["max_abs_diff_vs_loop"].values())
    overhead = capture["ratio_vs_bare"]["interpsuite"]
    return {
        "capture_overhead": {"value": overhead, "target": f"<= {CAPTURE_TARGET}", "met": overhead <= CAPTURE_TARGET},
        "sweep_speedup": {
            "value": sweep["speedup_vs_loop"][best],
            "variant": best,
            "target": f">= {SWEEP_SPEEDUP_TARGET}",
            "met": sweep["speedup_vs_loop"][best] >= SWEEP_SPEEDUP_TARGET,
        },
        "sweep_identical": {"value": exact, "target": f"<= {SWEEP_TOLERANCE}", "met": exact <= SWEEP_TOLERANCE},
    }


def format_report(report: dict[str, Any]) -> str:
    """A plain-text side-by-side table of this run and the issue's reference numbers."""
    capture, sweep = report["capture"], report["head_ablation"]
    machine = report["machine"]
    lines = [
        f"interpsuite core benchmark  {report['timestamp']}  {'(quick)' if report['quick'] else ''}",
        f"torch {machine['torch']}, {machine['cpu_count']} CPUs, {machine['torch_threads']} threads, "
        f"{machine['processor']}",
        f"load average (1/5/15 min) at start {_loads(report['load_average']['start'])}, "
        f"at end {_loads(report['load_average']['end'])}",
        "",
        f"Capture overhead: {capture['batch']} x {capture['seq_len']} tokens, {capture['hook_points']} x resid_post",
        f"  {'variant':<34}{'median s':>10}{'x bare':>9}{'x hooks':>9}{'issue ref':>12}",
    ]
    issue_capture = {"plain_hooks": "1.00x", "interpsuite": "<= 1.05x"}
    for name, stats in capture["times_s"].items():
        ratio, vs_hooks = capture["ratio_vs_bare"][name], capture["ratio_vs_plain_hooks"][name]
        lines.append(
            f"  {name:<34}{stats['median']:>10.3f}{ratio:>9.3f}{vs_hooks:>9.3f}{issue_capture.get(name, ''):>12}"
        )
    for name, key in (("nnsight", "nnsight"), ("TransformerLens", "transformer_lens")):
        issue_ratio = ISSUE_REFERENCE["capture_ratio"][key]
        lines.append(f"  {'(issue) ' + name:<34}{'':>10}{'':>9}{'':>9}{issue_ratio:>11.2f}x")
    lines += [
        "  max |diff| captures vs plain hooks: "
        f"{capture['max_abs_diff']['captures_vs_plain_hooks']:.2e}; logits vs bare: "
        f"{capture['max_abs_diff']['logits_vs_bare']:.2e}",
        "",
        f"Head-ablation sweep: {sweep['n_heads']} heads, IOI prompt, clean logit diff {sweep['clean_logit_diff']:.3f}",
        f"  {'variant':<34}{'median s':>10}{'speedup':>9}{'max |diff|':>12}{'issue ref s':>13}",
    ]
    issue_sweep = {
        "loop_full_logits": ISSUE_REFERENCE["sweep_s"]["loop"],
        sweep["best_naive"]: ISSUE_REFERENCE["sweep_s"]["naive_batched"],
    }
    for name, stats in sweep["times_s"].items():
        diff = sweep["max_abs_diff_vs_loop"].get(name)
        diff_text = "ref" if diff is None else f"{diff:.1e}"
        ref = issue_sweep.get(name)
        ref_text = "" if ref is None else f"{ref:.1f}"
        lines.append(
            f"  {name:<34}{stats['median']:>10.2f}{sweep['speedup_vs_loop'][name]:>9.2f}{diff_text:>12}{ref_text:>13}"
        )
    for name, key in (("TransformerLens", "transformer_lens"), ("nnsight", "nnsight")):
        issue_s = ISSUE_REFERENCE["sweep_s"][key]
        lines.append(f"  {'(issue) ' + name:<34}{'':>10}{'':>9}{'':>12}{issue_s:>13.1f}")
    threads = report["threads"]
    lines += [
        "",
        f"One model, {threads['threads']} threads, each the {threads['n_heads']}-head sweep "
        f"(bs {threads['batch_size']}):",
        f"  sequential {threads['sequential_s']:.2f} s, threaded {threads['threaded_s']:.2f} s "
        f"({threads['throughput_ratio']:.2f}x throughput), identical: {threads['identical']}",
    ]
    noisy = [name for part in (capture, sweep) for name, stats in part["times_s"].items() if stats["noisy"]]
    if noisy:
        lines += [
            "",
            f"WARNING: noisy timings (max/min > {NOISY_SPREAD}) for {', '.join(noisy)}: the machine "
            "was busy; compare 'min' in the JSON or rerun on a quiet machine",
        ]
    lines += ["", "Targets" + (" (quick run: a 27-head sweep, not representative)" if report["quick"] else "")]
    for name, target in report["targets"].items():
        status = "MET" if target["met"] else "NOT MET"
        lines.append(f"  {name:<20}{target['value']:>10.4g}  (target {target['target']})  {status}")
    return "\n".join(lines)


def _loads(loads: Sequence[float]) -> str:
    return "/".join(f"{load:.1f}" for load in loads)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="few repeats, 27-head sweep: a smoke test")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON output (default benchmarks/results/core.json, or core_quick.json with --quick)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    started, load_before = time.perf_counter(), os.getloadavg()
    model = load_model("smollm2")
    settings = Settings.for_run(args.quick, model.info.n_layers)
    capture = bench_capture(model, settings)
    sweep = bench_sweep(model, settings)
    threads = bench_threads(model, settings)
    report = {
        "benchmark": "core",
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "quick": settings.quick,
        "machine": machine_info(),
        "load_average": {"start": load_before, "end": os.getloadavg()},
        "settings": asdict(settings),
        "capture": capture,
        "head_ablation": sweep,
        "threads": threads,
        "targets": {
            **targets(capture, sweep),
            "threads_identical": {
                "value": threads["max_abs_diff"],
                "target": "== 0 (bitwise)",
                "met": threads["identical"],
            },
        },
        "issue_reference": ISSUE_REFERENCE,
        "duration_s": time.perf_counter() - started,
    }
    out = args.out or RESULTS_DIR / ("core_quick.json" if settings.quick else "core.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(format_report(report))
    print(f"\nwrote {out} ({report['duration_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
