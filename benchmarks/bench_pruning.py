"""Pruning benchmark: a whole impact curve on one shared model against deep-copying the model per setting.

Issue 15's workload: 2 criteria (magnitude, Wanda) x `--levels` sparsity levels of unstructured
pruning, perplexity on about `--tokens` evaluation tokens (the shipped English paragraphs, then
Python-docs texts the calibration did not use), calibration on the first 64 Python-docs texts.
Side by side, each approach in its own process (so peak memory is its own):

- `interpsuite`: `importance_scores` once per criterion, `Scores.plan` per level, and
  `evaluate_plans` (each plan applied in place with `masked`, which saves and restores only the
  pruned entries; the model is never copied);
- `naive`: the same scores and masks, but per setting a `copy.deepcopy` of the plain
  transformers model (no interpsuite code: `bench_core.stock_model`, SDPA attention), the mask
  multiplied into the copy's weights, perplexity by a plain forward loop, the copy dropped.

Both compute perplexity = exp(total next-token NLL / predicted tokens) over the same batches;
the report checks they agree (max relative difference). Time: wall seconds of the scoring and of
the evaluation, separately. Memory: the process's peak RSS (ru_maxrss) and its RSS after loading
the model. The naive worker also holds the plain model it copies from, so compare both the peaks
and what each adds over its own starting point.

    python benchmarks/bench_pruning.py              # SmolLM2, 8 levels, ~20k tokens
    python benchmarks/bench_pruning.py --quick      # tiny_llama, 3 levels (writes /tmp)
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_core import machine_info, stock_model, write_report  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "pruning.json"
CRITERIA = ("magnitude", "wanda")
CALIBRATION_TEXTS = 64


def rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def texts_for(model, n_tokens: int, max_length: int) -> tuple[list[str], list[str]]:
    """(calibration, evaluation): the first 64 Python-docs texts; the shipped English paragraphs
    and then later Python-docs texts until the evaluation holds `n_tokens` tokens."""
    from interpsuite_plugins.pruning.pruning_impact import shipped_corpus
    from interpsuite_plugins.sae.corpus import python_docs_texts

    docs = python_docs_texts()
    calibration, pool = docs[:CALIBRATION_TEXTS], shipped_corpus() + docs[CALIBRATION_TEXTS:]
    evaluation, total = [], 0
    for text, length in zip(pool, model.token_lengths(pool), strict=True):
        if total >= n_tokens:
            break
        evaluation.append(text)
        total += min(length, max_length)
    return calibration, evaluation


def naive_perplexity(hf_model, batches) -> float:
    from interpsuite_plugins.mechanistic.head_ablation import token_nll

    total, count = 0.0, 0.0
    with torch.no_grad():
        for batch in batches:
            logits = hf_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
            nll, n = token_nll(logits, batch)
            total, count = total + float(nll.double().sum()), count + float(n.sum())
    return math.exp(total / count)


def run_approach(approach: str, model_name: str, levels: list[float], n_tokens: int, max_length: int) -> dict:
    from interpsuite_plugins.pruning import evaluate_plans, importance_scores

    from interpsuite.models import load_model

    torch.manual_seed(0)
    model = load_model(model_name)
    loaded_rss = rss_mb()
    calibration, evaluation = texts_for(model, n_tokens, max_length)
    started = time.perf_counter()
    scores = {c: importance_scores(model, c, "unstructured", calibration, max_length=max_length) for c in CRITERIA}
    plans = [scores[c].plan(model, level) for c in CRITERIA for level in levels]
    scoring_s = time.perf_counter() - started
    started = time.perf_counter()
    values: list[float] = []
    if approach == "interpsuite":
        impact = evaluate_plans(model, plans, evaluation, batch_size=8, max_length=max_length, n_boot=0)
        values = [float(v) for v in impact.table["value"]]
    else:
        batches = list(model.batches(evaluation, 8, max_length))
        stock = stock_model(model)  # plain transformers, no interpsuite code: what a user would copy
        for plan in plans:
            pruned = copy.deepcopy(stock)
            with torch.no_grad():
                for name, parameter in pruned.named_parameters():
                    keep = plan.masks.get(name)
                    if keep is not None:
                        parameter.mul_(keep.to(parameter.dtype))
            values.append(naive_perplexity(pruned, batches))
            del pruned
    evaluation_s = time.perf_counter() - started
    tokens = sum(int(b.attention_mask.sum()) for b in model.batches(evaluation, 8, max_length))
    return {
        "approach": approach,
        "settings": len(plans),
        "eval_texts": len(evaluation),
        "eval_tokens": tokens,
        "scoring_s": round(scoring_s, 2),
        "evaluation_s": round(evaluation_s, 2),
        "rss_after_load_mb": round(loaded_rss, 1),
        "peak_rss_mb": round(peak_mb(), 1),
        "perplexities": values,
    }


def in_subprocess(approach: str, args) -> dict:
    command = [sys.executable, __file__, "--worker", approach, "--model", args.model, "--tokens", str(args.tokens),
               "--max-length", str(args.max_length), "--levels", *map(str, args.levels)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=os.environ.copy())
    if done.returncode != 0:
        raise SystemExit(f"{approach} worker failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--levels", type=float, nargs="+", default=[0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
    parser.add_argument("--tokens", type=int, default=20_000)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--worker", choices=("interpsuite", "naive"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick and not args.worker:
        args.model, args.levels, args.tokens = "tiny_llama", [0.0, 0.3, 0.6], 2_000
    if args.worker:
        print(json.dumps(run_approach(args.worker, args.model, args.levels, args.tokens, args.max_length)))
        return 0
    runs = {approach: in_subprocess(approach, args) for approach in ("interpsuite", "naive")}
    ours, naive = runs["interpsuite"]["perplexities"], runs["naive"]["perplexities"]
    agreement = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(ours, naive, strict=True))
    report: dict[str, Any] = {
        "benchmark": "pruning",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "model": args.model,
        "workload": {
            "criteria": list(CRITERIA),
            "levels": args.levels,
            "granularity": "unstructured",
            "calibration_texts": CALIBRATION_TEXTS,
            "max_length": args.max_length,
        },  # fmt: skip
        "runs": runs,
        "max_rel_perplexity_difference": agreement,
        "evaluation_speedup": round(runs["naive"]["evaluation_s"] / runs["interpsuite"]["evaluation_s"], 3),
        "extra_peak_mb": {name: round(run["peak_rss_mb"] - run["rss_after_load_mb"], 1) for name, run in runs.items()},
    }
    out = args.out or (Path("/tmp/bench_pruning_quick.json") if args.quick else RESULTS)
    write_report(report, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
