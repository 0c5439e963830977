"""Probing benchmark: every layer from ONE capture pass, and layer x layer CKA on 10k tokens.

1. **Probing all layers.** 1,000 labelled sentences (the four shipped sequence sets, sentiment,
   subject_number, tense and truth, 240 each, cycled to `--n-sentences`; label = the set a
   sentence comes from, split group = the distinct text, so a cycled duplicate never straddles
   train and test). Two paths, timed in the same run, capture and probe fitting separately:

   * `one_pass`: `capture_task(model, set, ["resid_post"], all layers)`, one forward pass per
     batch, then `probe_layers` over every layer with the batched torch solver (every layer and
     C value in one L-BFGS loop), as `linear_probe` does;
   * `per_layer`: for each layer, `capture_task` with that layer alone (a full pass over every
     sentence per layer), then `probe_layers` on that layer with scikit-learn (one
     `LogisticRegression` per C value), the naive loop.

   Both fit the same probes (`ProbeConfig(seeds=(0,), c_grid=linear_probe's default)`, control
   task on) on identical features (compared exactly); the per-layer accuracies differ only by
   the solvers' stopping points (reported, tolerance 0.02).

2. **CKA for every layer pair on 10k tokens.** `resid_post` of every layer, `pooling="tokens"`
   over the shipped texts (the labelled sets, then the `english` sentences), subsampled (seeded)
   to `--cka-tokens`. Timed: `cka_matrix(debiased=True)` (feature space, the issue's number),
   `cka_matrix(debiased=False)`, `MinibatchCKA` on a few pairs, and the n x n Gram reference
   `linear_cka_gram` on a `--gram-tokens` subsample for a few pairs (agreement with
   `cka_matrix` on the same rows, and its time at growing n).

    python benchmarks/bench_probing.py                 # full run: SmolLM2, 1,000 sentences, 10k tokens
    python benchmarks/bench_probing.py --quick         # smoke test: 40 sentences, 4 layers, 600 tokens
    python benchmarks/bench_probing.py --n-sentences 40 --layers 4 --cka-tokens 500 --gram-tokens 200
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_core import machine_info  # noqa: E402
from interpsuite_plugins.datasets import english_sentences  # noqa: E402
from interpsuite_plugins.probing.capture import hook_names, pooled_features  # noqa: E402
from interpsuite_plugins.probing.labelled import LabelledSet, load_task  # noqa: E402
from interpsuite_plugins.probing.linear_probe import (  # noqa: E402
    LinearProbeConfig,
    TaskFeatures,
    capture_task,
    curve_table,
)
from interpsuite_plugins.probing.probes import ProbeConfig, ProbeReport, probe_layers  # noqa: E402
from interpsuite_plugins.probing.similarity import (  # noqa: E402
    MinibatchCKA,
    cka_matrix,
    linear_cka,
    linear_cka_gram,
)

from interpsuite.models import HookedModel, load_model  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SETS = ("sentiment", "subject_number", "tense", "truth")
HOOK_POINT = "resid_post"
ACCURACY_TOLERANCE = 0.02  # task accuracy; identical features, both solvers stop at max |gradient| <= 1e-4
CKA_TOLERANCE = 1e-6  # feature-space vs Gram CKA (float64; only summation order differs)
SPEEDUP_TARGET = 10.0


@dataclass(frozen=True)
class Settings:
    quick: bool
    model: str = "smollm2"
    n_sentences: int = 1000
    layers: int | None = None  # None = every layer; N = N evenly spaced layers (last included)
    batch_size: int = 32
    max_length: int = 64
    control: bool = True
    cka_tokens: int = 10_000
    gram_tokens: int = 2_000
    gram_pairs: int = 3
    minibatch_size: int = 1_000
    seed: int = 0

    @classmethod
    def for_run(cls, quick: bool) -> Settings:
        if quick:
            return cls(quick=True, n_sentences=40, layers=4, cka_tokens=600, gram_tokens=200, minibatch_size=100)
        return cls(quick=False)


def choose_layers(n_layers: int, count: int | None) -> list[int]:
    if count is None or count >= n_layers:
        return list(range(n_layers))
    if count <= 1:
        return [n_layers - 1]
    return sorted({round(i * (n_layers - 1) / (count - 1)) for i in range(count)})


# --- the labelled set ------------------------------------------------------------------------------
def labelled_sentences(n: int) -> LabelledSet:
    """The four shipped sequence sets interleaved, label = source set, cycled to n texts (group = distinct text)."""
    tasks = [load_task(name) for name in SETS]
    texts, labels = [], []
    for row in range(max(len(task.texts) for task in tasks)):  # interleaved: any prefix holds every set
        for name, task in zip(SETS, tasks, strict=True):
            if row < len(task.texts):
                texts.append(task.texts[row])
                labels.append(name)
    index = [i % len(texts) for i in range(n)]
    return LabelledSet(
        "source_set",
        "sequence",
        [texts[i] for i in index],
        index,  # a cycled duplicate shares its original's group: never in two splits
        labels=[labels[i] for i in index],
        source="+".join(SETS),
    )


def probe_config(solver: str = "batched") -> ProbeConfig:
    return ProbeConfig(seeds=(0,), c_grid=tuple(LinearProbeConfig().c_grid), solver=solver)


def capture(model: HookedModel, labelled: LabelledSet, layers: list[int], settings: Settings) -> TaskFeatures:
    return capture_task(
        model, labelled, [HOOK_POINT], layers, batch_size=settings.batch_size, max_length=settings.max_length
    )


def fit(
    task: TaskFeatures, settings: Settings, keys: Sequence[tuple[str, int]] | None = None, solver: str = "batched"
) -> ProbeReport:
    features = task.features if keys is None else {key: task.features[key] for key in keys}
    return probe_layers(
        features,
        task.labels,
        task.groups,
        word_types=task.word_types if settings.control else None,
        config=probe_config(solver),
    )


# --- 1. probing: one pass vs one pass per layer ----------------------------------------------------
def bench_probing(model: HookedModel, layers: list[int], settings: Settings) -> dict[str, Any]:
    labelled = labelled_sentences(settings.n_sentences)
    capture(model, labelled.limit(settings.batch_size), layers[:1], settings)  # warm-up, untimed

    started = time.perf_counter()
    task = capture(model, labelled, layers, settings)
    one_capture = time.perf_counter() - started
    started = time.perf_counter()
    report = fit(task, settings)
    one_fit = time.perf_counter() - started

    per_capture, per_fit, feature_diff = 0.0, 0.0, 0.0
    naive_layers = []
    for layer in layers:
        key = (HOOK_POINT, layer)
        started = time.perf_counter()
        alone = capture(model, labelled, [layer], settings)
        per_capture += time.perf_counter() - started
        started = time.perf_counter()
        naive_layers += fit(alone, settings, solver="sklearn").layers
        per_fit += time.perf_counter() - started
        feature_diff = max(feature_diff, float((alone.features[key] - task.features[key]).abs().max()))
    naive = ProbeReport(naive_layers, report.majority_baseline, report.n_examples, report.n_groups, report.classes)

    fast_table, naive_table = curve_table(labelled.name, report), curve_table(labelled.name, naive)
    columns = ["accuracy", "f1", "best_C"] + (["control_accuracy", "selectivity"] if settings.control else [])
    diffs = {c: float((fast_table[c].astype(float) - naive_table[c].astype(float)).abs().max()) for c in columns}
    batches = math.ceil(len(labelled.texts) / settings.batch_size)
    one_total, per_total = one_capture + one_fit, per_capture + per_fit
    best = fast_table.loc[fast_table["accuracy"].idxmax()]
    return {
        "task": {
            "name": labelled.name,
            "sets": list(SETS),
            "n_sentences": len(labelled.texts),
            "n_distinct_texts": len(set(labelled.groups)),
            "n_examples": report.n_examples,
            "classes": report.classes,
            "majority_baseline": report.majority_baseline,
        },
        "layers": layers,
        "forward_passes": {"one_pass": batches, "per_layer": batches * len(layers)},
        "probe_fits": {"per_layer_per_path": len(probe_config().c_grid) * (2 if settings.control else 1)},
        "times_s": {
            "one_pass": {"capture": one_capture, "fit": one_fit, "total": one_total},
            "per_layer": {"capture": per_capture, "fit": per_fit, "total": per_total},
        },
        "speedup": {
            "end_to_end": per_total / one_total,
            "capture": per_capture / one_capture,
            "fit": per_fit / one_fit,
        },
        "fit_share_of_one_pass": one_fit / one_total,
        "max_abs_diff": {"features": feature_diff, **diffs},
        "accuracy_by_layer": {int(row.layer): float(row.accuracy) for row in fast_table.itertuples()},
        "best_layer": {"layer": int(best["layer"]), "accuracy": float(best["accuracy"])},
        "hooks_left": model.hooks_left(),
    }


# --- 2. CKA on pooled tokens -----------------------------------------------------------------------
def cka_texts(model: HookedModel, n_tokens: int, settings: Settings) -> tuple[list[str], int]:
    """The fewest shipped texts (labelled sets, parallel, POS, `english`) holding n_tokens tokens, and their count."""
    extra = load_task("language_id").texts + load_task("pos").texts + english_sentences()
    pool = list(dict.fromkeys(labelled_sentences(len(SETS) * 240).texts + extra))
    texts, total = [], 0
    for start in range(0, len(pool), 256):
        chunk = pool[start : start + 256]
        counts = model.tokenize(chunk, settings.max_length).attention_mask.sum(1).tolist()
        for text, count in zip(chunk, counts, strict=True):
            texts.append(text)
            total += int(count)
            if total >= n_tokens:
                return texts, total
    if total < 4:
        raise SystemExit(f"only {total} tokens in the shipped texts")
    return texts, total  # fewer tokens than asked: the report says how many were used


def gram_pairs(layers: list[int], count: int) -> list[tuple[int, int]]:
    """Index pairs into `layers`: first-last, middle-last, first-second, ..."""
    n = len(layers)
    candidates = [(0, n - 1), (n // 2, n - 1), (0, 1), (n // 4, n // 2), (n - 2, n - 1)]
    out = []
    for i, j in candidates:
        if i != j and (i, j) not in out and 0 <= i < n and 0 <= j < n:
            out.append((i, j))
    return out[:count]


def timed(fn, *args, **kwargs) -> tuple[Any, float]:
    started = time.perf_counter()
    value = fn(*args, **kwargs)
    return value, time.perf_counter() - started


def bench_cka(model: HookedModel, layers: list[int], settings: Settings) -> dict[str, Any]:
    texts, available = cka_texts(model, settings.cka_tokens, settings)
    hooks = hook_names(layers, HOOK_POINT)
    (feats, _), capture_s = timed(
        pooled_features, model, texts, hooks, "tokens", batch_size=settings.batch_size, max_length=settings.max_length
    )
    total = int(feats[0].shape[0])
    n = min(settings.cka_tokens, total)
    generator = torch.Generator().manual_seed(settings.seed)
    rows = torch.randperm(total, generator=generator)[:n].sort().values
    feats = [f[rows] for f in feats]
    d = int(feats[0].shape[1])
    n_layers = len(layers)

    debiased, debiased_s = timed(cka_matrix, feats, debiased=True)
    biased, biased_s = timed(cka_matrix, feats, debiased=False)

    # Gram reference on a subsample: agreement with the feature-space matrix on the same rows
    m = min(settings.gram_tokens, n)
    sub = [f[:m] for f in feats]
    sub_debiased = cka_matrix(sub, debiased=True)
    sub_biased = cka_matrix(sub, debiased=False)
    pairs = gram_pairs(layers, settings.gram_pairs)
    gram_rows, agreement = [], {"debiased": 0.0, "biased": 0.0}
    for i, j in pairs:
        row: dict[str, Any] = {"layers": [layers[i], layers[j]]}
        for flag, name, matrix in ((True, "debiased", sub_debiased), (False, "biased", sub_biased)):
            value, seconds = timed(linear_cka_gram, sub[i], sub[j], debiased=flag)
            _, feature_s = timed(linear_cka, sub[i], sub[j], debiased=flag)
            diff = abs(value - float(matrix[i, j]))
            agreement[name] = max(agreement[name], diff)
            row[name] = {"gram": value, "feature_space": float(matrix[i, j]), "abs_diff": diff}
            row[f"{name}_gram_s"] = seconds
            row[f"{name}_linear_cka_s"] = feature_s
        gram_rows.append(row)

    # how the Gram path scales with n (one pair, debiased), next to the feature-space pair
    i, j = pairs[0] if pairs else (0, 0)
    scaling = []
    for size in sorted({max(4, m // 4), max(4, m // 2), m}):
        _, gram_s = timed(linear_cka_gram, feats[i][:size], feats[j][:size], debiased=True)
        _, feature_s = timed(linear_cka, feats[i][:size], feats[j][:size], debiased=True)
        scaling.append({"n": size, "gram_s": gram_s, "linear_cka_s": feature_s})
    per_pair_gram = scaling[-1]["gram_s"]
    n_pairs = n_layers * (n_layers - 1) // 2
    gram_estimate = per_pair_gram * (n / m) ** 3 * n_pairs if m else float("nan")

    # MinibatchCKA over the same n tokens, a few pairs (it estimates a slightly different quantity)
    minibatch = []
    size = max(4, min(settings.minibatch_size, n))
    for i, j in pairs:
        acc = MinibatchCKA()
        started = time.perf_counter()
        for start in range(0, n - size + 1, size):
            acc.update(feats[i][start : start + size], feats[j][start : start + size])
        seconds = time.perf_counter() - started
        value = acc.value()
        minibatch.append(
            {
                "layers": [layers[i], layers[j]],
                "seconds": seconds,
                "batches": acc.n_batches,
                "value": value,
                "full_debiased": float(debiased[i, j]),
                "abs_diff_vs_full": abs(value - float(debiased[i, j])),
            }
        )
    minibatch_per_pair = sum(r["seconds"] for r in minibatch) / len(minibatch) if minibatch else float("nan")

    mib = 1024**2
    return {
        "n_texts": len(texts),
        "tokens_available": total,
        "tokens_counted_before_capture": available,
        "n_tokens": n,
        "d_model": d,
        "layers": layers,
        "pairs": {"matrix_entries": n_layers * n_layers, "off_diagonal_upper": n_pairs},
        "capture_s": capture_s,
        "times_s": {"cka_matrix_debiased": debiased_s, "cka_matrix_biased": biased_s},
        "debiased_matrix": debiased.tolist(),
        "biased_matrix": biased.tolist(),
        "gram_reference": {
            "n_tokens": m,
            "pairs": gram_rows,
            "max_abs_diff_vs_cka_matrix": agreement,
            "scaling_debiased": scaling,
            "estimated_s_all_pairs_at_n_tokens": gram_estimate,
            "estimate_note": "per-pair Gram time at the largest subsample x (n / m)^3 x off-diagonal pairs",
        },
        "minibatch": {
            "batch_size": size,
            "pairs": minibatch,
            "mean_s_per_pair": minibatch_per_pair,
            "estimated_s_all_pairs": minibatch_per_pair * n_pairs,
        },
        "memory_mib": {
            "gram_one_matrix_n2x8": n * n * 8 / mib,
            "feature_space_cross_d2x8": d * d * 8 / mib,
            "feature_space_centred_features_LxNxDx8": n_layers * n * d * 8 / mib,
            "captured_features_float32": n_layers * n * d * 4 / mib,
        },
    }


# --- report ----------------------------------------------------------------------------------------
def targets(probing: dict[str, Any], cka: dict[str, Any], settings: Settings) -> dict[str, Any]:
    diffs = probing["max_abs_diff"]
    accuracy_diff = diffs["accuracy"]  # control: random labels memorised at weak C, see the README
    speedup = probing["speedup"]["end_to_end"]
    gram_diff = max(cka["gram_reference"]["max_abs_diff_vs_cka_matrix"].values())
    return {
        "probe_speedup_end_to_end": {
            "value": speedup,
            "target": f">= {SPEEDUP_TARGET} (all 30 layers, 1,000 sentences)",
            "met": speedup >= SPEEDUP_TARGET,
            "applies": not settings.quick and settings.layers is None,
        },
        "probe_accuracy_agreement": {
            "value": accuracy_diff,
            "target": f"<= {ACCURACY_TOLERANCE}",
            "met": accuracy_diff <= ACCURACY_TOLERANCE,
        },
        "features_identical": {
            "value": probing["max_abs_diff"]["features"],
            "target": "== 0",
            "met": probing["max_abs_diff"]["features"] == 0.0,
        },
        "cka_gram_agreement": {"value": gram_diff, "target": f"<= {CKA_TOLERANCE}", "met": gram_diff <= CKA_TOLERANCE},
        "cka_matrix_debiased_s": {
            "value": cka["times_s"]["cka_matrix_debiased"],
            "target": "reported (30 x 30 pairs on 10k tokens)",
            "met": True,
        },
    }


def format_report(report: dict[str, Any]) -> str:
    machine, probing, cka = report["machine"], report["probing"], report["cka"]
    times = probing["times_s"]
    lines = [
        f"interpsuite probing benchmark  {report['timestamp']}  {'(quick)' if report['quick'] else ''}",
        f"{report['settings']['model']}: torch {machine['torch']}, {machine['cpu_count']} CPUs, "
        f"{machine['torch_threads']} threads; load average at start {report['load_average']['start'][0]:.1f}",
        "",
        f"1. Probing {len(probing['layers'])} layers ({HOOK_POINT}) on {probing['task']['n_sentences']} sentences, "
        f"{len(probing['task']['classes'])} classes (majority {probing['task']['majority_baseline']:.3f})",
        f"  {'path':<12}{'passes':>8}{'capture s':>11}{'fit s':>9}{'total s':>9}",
    ]
    for path in ("one_pass", "per_layer"):
        t = times[path]
        lines.append(
            f"  {path:<12}{probing['forward_passes'][path]:>8}{t['capture']:>11.2f}{t['fit']:>9.2f}{t['total']:>9.2f}"
        )
    s = probing["speedup"]
    lines += [
        f"  speedup: end to end {s['end_to_end']:.1f}x, capture {s['capture']:.1f}x; "
        f"fitting is {probing['fit_share_of_one_pass']:.0%} of the one-pass total",
        "  max |diff| per_layer vs one_pass: " + ", ".join(f"{k} {v:.1e}" for k, v in probing["max_abs_diff"].items()),
        f"  best layer {probing['best_layer']['layer']} accuracy {probing['best_layer']['accuracy']:.3f}",
        "",
        f"2. CKA, {len(cka['layers'])} x {len(cka['layers'])} layers on {cka['n_tokens']} tokens "
        f"(d={cka['d_model']}, {cka['n_texts']} texts, capture {cka['capture_s']:.1f} s)",
        f"  cka_matrix debiased {cka['times_s']['cka_matrix_debiased']:.2f} s, "
        f"biased {cka['times_s']['cka_matrix_biased']:.2f} s",
    ]
    gram = cka["gram_reference"]
    agreement = gram["max_abs_diff_vs_cka_matrix"]
    lines.append(
        f"  Gram reference on {gram['n_tokens']} tokens, {len(gram['pairs'])} pairs: max |diff| debiased "
        f"{agreement['debiased']:.1e}, biased {agreement['biased']:.1e}"
    )
    lines.append(
        "  Gram scaling (debiased, one pair): "
        + ", ".join(
            f"n={r['n']} {r['gram_s']:.3f} s (feature space {r['linear_cka_s']:.3f} s)"
            for r in gram["scaling_debiased"]
        )
    )
    lines.append(
        f"  Gram estimate for all pairs at {cka['n_tokens']} tokens: {gram['estimated_s_all_pairs_at_n_tokens']:.0f} s"
    )
    mem = cka["memory_mib"]
    lines.append(
        f"  memory: one Gram matrix {mem['gram_one_matrix_n2x8']:.1f} MiB vs d x d cross product "
        f"{mem['feature_space_cross_d2x8']:.1f} MiB (centred features held: "
        f"{mem['feature_space_centred_features_LxNxDx8']:.0f} MiB)"
    )
    mb = cka["minibatch"]
    lines.append(
        f"  MinibatchCKA (batch {mb['batch_size']}): {mb['mean_s_per_pair']:.3f} s per pair, "
        f"~{mb['estimated_s_all_pairs']:.1f} s for all pairs; max |diff| vs full debiased "
        f"{max((r['abs_diff_vs_full'] for r in mb['pairs']), default=float('nan')):.3f}"
    )
    lines += ["", "Targets"]
    for name, target in report["targets"].items():
        note = "" if target.get("applies", True) else "  (not applicable at these sizes)"
        lines.append(
            f"  {name:<28}{target['value']:>10.3g}  (target {target['target']})  "
            + ("MET" if target["met"] else "NOT MET")
            + note
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="40 sentences, 4 layers, 600 CKA tokens: a smoke test")
    parser.add_argument("--model", default=None, help="model name for load_model (default smollm2)")
    parser.add_argument("--n-sentences", type=int, default=None, help="labelled sentences (default 1000)")
    parser.add_argument("--layers", type=int, default=None, help="N evenly spaced layers (default: all)")
    parser.add_argument("--batch-size", type=int, default=None, help="capture batch size (default 32)")
    parser.add_argument("--max-length", type=int, default=None, help="tokens per text (default 64)")
    parser.add_argument("--no-control", action="store_true", help="skip the control task (halves the fitting)")
    parser.add_argument("--cka-tokens", type=int, default=None, help="token examples for CKA (default 10000)")
    parser.add_argument("--gram-tokens", type=int, default=None, help="subsample for the Gram reference (2000)")
    parser.add_argument("--gram-pairs", type=int, default=None, help="layer pairs for Gram/minibatch (default 3)")
    parser.add_argument("--skip-cka", action="store_true", help="only the probing part")
    parser.add_argument("--skip-probing", action="store_true", help="only the CKA part")
    parser.add_argument("--out", type=Path, default=None, help="JSON (default results/probing[_quick].json)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = Settings.for_run(args.quick)
    overrides = {
        "model": args.model,
        "n_sentences": args.n_sentences,
        "layers": args.layers,
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "cka_tokens": args.cka_tokens,
        "gram_tokens": args.gram_tokens,
        "gram_pairs": args.gram_pairs,
    }
    settings = replace(settings, **{k: v for k, v in overrides.items() if v is not None})
    if args.no_control:
        settings = replace(settings, control=False)

    started, load_before = time.perf_counter(), os.getloadavg()
    model = load_model(settings.model)
    layers = choose_layers(model.info.n_layers, settings.layers)
    probing = {} if args.skip_probing else bench_probing(model, layers, settings)
    cka = {} if args.skip_cka else bench_cka(model, layers, settings)
    report = {
        "benchmark": "probing",
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "quick": settings.quick,
        "machine": machine_info(),
        "load_average": {"start": load_before, "end": os.getloadavg()},
        "settings": {**asdict(settings), "probe_config": asdict(probe_config()), "hook_point": HOOK_POINT},
        "n_layers_model": model.info.n_layers,
        "probing": probing,
        "cka": cka,
        "targets": targets(probing, cka, settings) if probing and cka else {},
        "duration_s": 0.0,
    }
    report["duration_s"] = time.perf_counter() - started
    default_name = "probing_quick.json" if settings.quick else "probing.json"
    out = args.out or RESULTS_DIR / default_name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    if probing and cka:
        print(format_report(report))
    else:
        print(json.dumps({k: report[k] for k in ("probing", "cka")}, indent=2, default=str)[:4000])
    print(f"\nwrote {out} ({report['duration_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
