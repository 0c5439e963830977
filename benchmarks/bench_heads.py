"""Head-classification benchmark: all 270 SmolLM2 heads from one batched pass per probe set.

`head_classification` scores every head from two probe sets: the input texts (previous-token,
first-token, self, local) and repeated random-token sequences (induction). interpsuite
captures `blocks.{L}.attn.pattern` of all 30 layers in one forward pass per probe set. This
script times that against plain transformers doing the same work, and checks the scores agree:

| variant | what runs per probe set |
| --- | --- |
| `interpsuite` | one `model.forward(batch, capture=[all 30 patterns], logits_to_keep=1)` |
| `hf_output_attentions` | stock eager attention, one pass with `output_attentions=True` |
| `loop_per_layer` | stock eager attention, one pass per layer, a torch forward hook on its `self_attn` |

Every variant turns patterns into scores with the same functions (`dataset_score_sums`,
`induction_scores` from `plugins/attention/heads.py`), and the timings include that scoring.
Finally the whole analyzer (`HeadClassification.run`, ablation included) is timed once.

    python benchmarks/bench_heads.py            # full run (40 texts, 16 sequences; --repeats 3 for medians)
    python benchmarks/bench_heads.py --quick    # smoke test (8 texts, 4 sequences, 1 repeat)
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_core import machine_info, summarise, time_interleaved  # noqa: E402
from interpsuite_plugins.attention.heads import (  # noqa: E402
    HeadClassification,
    HeadClassificationConfig,
    dataset_score_sums,
    induction_scores,
    probe_vocabulary,
    query_count,
    repeated_random_tokens,
)
from interpsuite_plugins.datasets import english_sentences  # noqa: E402

from interpsuite.analyzer import RunContext  # noqa: E402
from interpsuite.data import Inputs  # noqa: E402
from interpsuite.models import HookedModel, TokenBatch, load_model  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
TOLERANCE = 1e-5  # max |score difference| between variants (float32 patterns)
WINDOW = 3


@dataclass(frozen=True)
class Settings:
    quick: bool
    n_texts: int
    n_sequences: int
    seq_len: int
    repeats: int
    max_length: int = 64
    seed: int = 0

    @classmethod
    def for_run(cls, quick: bool) -> Settings:
        if quick:
            return cls(quick=True, n_texts=8, n_sequences=4, seq_len=32, repeats=1)
        return cls(quick=False, n_texts=40, n_sequences=16, seq_len=32, repeats=1)


# --- scoring shared by every variant -------------------------------------------------------------
def score_dataset(patterns: Sequence[torch.Tensor], batch: TokenBatch) -> torch.Tensor:
    """[layers, heads, 4]: previous_token, first_token, self, local."""
    count = query_count(batch.attention_mask)
    rows = []
    for pattern in patterns:
        sums = dataset_score_sums(pattern, batch.attention_mask, WINDOW)
        rows.append(torch.stack([sums[k] for k in ("previous_token", "first_token", "self", "local")], -1) / count)
    return torch.stack(rows)


def score_induction(patterns: Sequence[torch.Tensor], batch: TokenBatch, seq_len: int) -> torch.Tensor:
    """[layers, heads] induction scores (the probe has one BOS token in front)."""
    return torch.stack([induction_scores(p, seq_len, offset=1) for p in patterns])


Scorer = Callable[[Sequence[torch.Tensor], TokenBatch], torch.Tensor]


# --- the three ways to get every layer's pattern -------------------------------------------------
@contextlib.contextmanager
def eager_attention(model: HookedModel) -> Iterator[None]:
    """Stock transformers eager attention (returns its weights); no interpsuite code runs."""
    config = model.hf_model.config
    saved = config._attn_implementation
    config._attn_implementation = "eager"
    try:
        yield
    finally:
        config._attn_implementation = saved


def interpsuite_patterns(model: HookedModel, batch: TokenBatch) -> list[torch.Tensor]:
    names = [f"blocks.{layer}.attn.pattern" for layer in range(model.info.n_layers)]
    cache = model.forward(batch, capture=names, logits_to_keep=1).cache
    return [cache[name] for name in names]


def hf_output_attentions(model: HookedModel, batch: TokenBatch) -> list[torch.Tensor]:
    with torch.no_grad(), eager_attention(model):
        out = model.hf_model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            use_cache=False,
            logits_to_keep=1,
            output_attentions=True,
        )
    return list(out.attentions)


def loop_per_layer(model: HookedModel, batch: TokenBatch) -> list[torch.Tensor]:
    patterns = []
    with torch.no_grad(), eager_attention(model):
        for layer in model.hf_model.model.layers:
            store: list[torch.Tensor] = []
            handle = layer.self_attn.register_forward_hook(
                lambda module, args, output, store=store: store.append(output[1])
            )
            try:
                model.hf_model(
                    input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False, logits_to_keep=1
                )
            finally:
                handle.remove()
            patterns.append(store[0])
    return patterns


GETTERS = {
    "interpsuite": interpsuite_patterns,
    "hf_output_attentions": hf_output_attentions,
    "loop_per_layer": loop_per_layer,
}


# --- probe sets ----------------------------------------------------------------------------------
def dataset_batch(model: HookedModel, settings: Settings) -> TokenBatch:
    return model.tokenize(english_sentences()[: settings.n_texts], settings.max_length)


def induction_batch(model: HookedModel, settings: Settings) -> TokenBatch:
    prefix = model.tokenizer.bos_token_id
    ids = repeated_random_tokens(probe_vocabulary(model), settings.seq_len, settings.n_sequences, settings.seed, prefix)
    return TokenBatch(ids, torch.ones_like(ids), [[]] * len(ids), list(range(len(ids))))


def bench_probe(model: HookedModel, batch: TokenBatch, score: Scorer, settings: Settings) -> dict[str, Any]:
    variants = {name: (lambda get=get: score(get(model, batch), batch)) for name, get in GETTERS.items()}
    values = {name: run() for name, run in variants.items()}  # untimed warm-up, and the compared values
    times = time_interleaved(variants, 0, settings.repeats)
    medians = {name: statistics.median(samples) for name, samples in times.items()}
    reference = values["loop_per_layer"]
    return {
        "rows": batch.size,
        "tokens": int(batch.attention_mask.sum()),
        "seq_len": int(batch.input_ids.shape[1]),
        "forward_passes": {"interpsuite": 1, "hf_output_attentions": 1, "loop_per_layer": model.info.n_layers},
        "times_s": {name: summarise(samples) for name, samples in times.items()},
        "speedup_vs_loop": {name: medians["loop_per_layer"] / medians[name] for name in medians},
        "max_abs_diff_vs_loop": {
            name: float((values[name] - reference).abs().max()) for name in values if name != "loop_per_layer"
        },
        "max_score": float(values["interpsuite"].max()),
        "hooks_left": model.hooks_left(),
    }


def bench_analyzer(model: HookedModel, settings: Settings) -> dict[str, Any]:
    """The whole analyzer once (both probes, tables, figures, the ablation sweep)."""
    import matplotlib.pyplot as plt

    cfg = HeadClassificationConfig(seq_len=settings.seq_len, n_sequences=settings.n_sequences)
    ctx = RunContext(
        model=model, inputs=Inputs(english_sentences()[: settings.n_texts], "english"), show_progress=False
    )
    started = time.perf_counter()
    result = HeadClassification(cfg).run(ctx)
    seconds = time.perf_counter() - started
    plt.close("all")
    table = result.tables["head_scores"]

    def top(column: str) -> dict[str, Any]:
        row = table.loc[table[column].idxmax()]
        return {"head": f"L{int(row['layer'])}H{int(row['head'])}", "score": float(row[column])}

    return {
        "seconds": seconds,
        "batch_size": ctx.batch_size,
        "top_induction": top("induction"),
        "top_previous_token": top("previous_token"),
        "ablation": result.summary["ablation"],
        "checks_passed": not result.failed_checks,
    }


def format_report(report: dict[str, Any]) -> str:
    machine = report["machine"]
    lines = [
        f"interpsuite head-classification benchmark  {report['timestamp']}  {'(quick)' if report['quick'] else ''}",
        f"torch {machine['torch']}, {machine['cpu_count']} CPUs, {machine['torch_threads']} threads, "
        f"{machine['processor']}; load average at start {report['load_average']['start'][0]:.1f}",
    ]
    for probe in ("dataset", "induction"):
        part = report[probe]
        lines += [
            "",
            f"Probe set '{probe}': {part['rows']} rows x {part['seq_len']} positions ({part['tokens']} tokens), "
            f"all {report['n_heads']} heads",
            f"  {'variant':<24}{'passes':>7}{'median s':>10}{'speedup':>9}{'max |diff|':>12}",
        ]
        for name, stats in part["times_s"].items():
            diff = part["max_abs_diff_vs_loop"].get(name)
            lines.append(
                f"  {name:<24}{part['forward_passes'][name]:>7}{stats['median']:>10.2f}"
                f"{part['speedup_vs_loop'][name]:>9.2f}{'ref' if diff is None else f'{diff:.1e}':>12}"
            )
    analyzer = report["analyzer"]
    ablation = analyzer["ablation"]
    lines += [
        "",
        f"head_classification.run (defaults but n_texts/n_sequences above): {analyzer['seconds']:.1f} s; "
        f"top induction {analyzer['top_induction']['head']} {analyzer['top_induction']['score']:.3f}, "
        f"top previous-token {analyzer['top_previous_token']['head']} {analyzer['top_previous_token']['score']:.3f}",
        f"  loss on the repeated half: none {ablation['loss_none']:.3f}, top-3 induction heads "
        f"{ablation['loss_induction_heads']:.3f}, random heads {ablation['loss_random_heads']:.3f}",
        "",
        "Targets",
    ]
    for name, target in report["targets"].items():
        lines.append(
            f"  {name:<28}{target['value']:>10.3g}  (target {target['target']})  "
            + ("MET" if target["met"] else "NOT MET")
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="8 texts, 4 sequences, 1 repeat: a smoke test")
    parser.add_argument("--out", type=Path, default=None, help="JSON (default results/heads.json or heads_quick.json)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per variant (default 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    started, load_before = time.perf_counter(), os.getloadavg()
    model = load_model("smollm2")
    settings = Settings.for_run(args.quick)
    if args.repeats:
        settings = replace(settings, repeats=args.repeats)
    dataset = bench_probe(model, dataset_batch(model, settings), score_dataset, settings)
    seq_len = settings.seq_len
    induction = bench_probe(
        model, induction_batch(model, settings), lambda p, b: score_induction(p, b, seq_len), settings
    )
    analyzer = bench_analyzer(model, settings)
    exact = max(*dataset["max_abs_diff_vs_loop"].values(), *induction["max_abs_diff_vs_loop"].values())
    one_pass = min(dataset["speedup_vs_loop"]["interpsuite"], induction["speedup_vs_loop"]["interpsuite"])
    report = {
        "benchmark": "heads",
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "quick": settings.quick,
        "machine": machine_info(),
        "load_average": {"start": load_before, "end": os.getloadavg()},
        "settings": asdict(settings),
        "n_heads": model.info.n_layers * model.info.n_heads,
        "dataset": dataset,
        "induction": induction,
        "analyzer": analyzer,
        "targets": {
            "scores_identical": {"value": exact, "target": f"<= {TOLERANCE}", "met": exact <= TOLERANCE},
            "one_pass_speedup_vs_loop": {"value": one_pass, "target": "> 1", "met": one_pass > 1},
        },
        "duration_s": 0.0,
    }
    report["duration_s"] = time.perf_counter() - started
    out = args.out or RESULTS_DIR / ("heads_quick.json" if settings.quick else "heads.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(format_report(report))
    print(f"\nwrote {out} ({report['duration_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
