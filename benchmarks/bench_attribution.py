"""Attribution benchmark: integrated gradients on the IOI prompt on SmolLM2 (target: logit of " Mary").

1. interpsuite's batched IG (`ig_attributions`, Gauss-Legendre nodes, all 50 steps in one
   forward+backward pass) against captum's `IntegratedGradients(...).attribute(...)` called with its
   default settings (gausslegendre, internal_batch_size=None = one pass) at the same 50 steps and
   the same baseline (pad_keep_first): times (median of interleaved repeats) and max |difference|.
2. Time to reach completeness < 0.05 with the analyzer's defaults (baseline pad_keep_first,
   n_steps 50 doubled until the check passes), with the steps used and the error reached.

    python benchmarks/bench_attribution.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from interpsuite_plugins.attribution.methods import (
    AttributionProblem,
    captum_ig,
    get_method,
    ig_attributions,
)
from interpsuite_plugins.attribution.targets import resolve_target

from interpsuite.models import load_model

IOI = "When Mary and John went to the store, John gave a drink to"
OUT = Path(__file__).resolve().parent / "results" / "attribution.json"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    model = load_model("smollm2")
    ids = model.tokenize([IOI]).input_ids
    spec = resolve_target(model, ids, " Mary")
    with torch.no_grad():
        embeds = model.hf_model.get_input_embeddings()(ids).detach().float()
    problem = AttributionProblem(model, ids, embeds, spec)
    base = problem.baseline("pad_keep_first")

    def ours():
        return ig_attributions(problem.forward, problem.embeds, base, args.steps, internal_batch_size=args.steps)

    def theirs():
        return captum_ig(problem, "pad_keep_first", args.steps)[0]

    ours(), theirs()  # warm-up
    times: dict[str, list[float]] = {"interpsuite": [], "captum": []}
    results = {}
    for r in range(args.repeats):
        order = [("interpsuite", ours), ("captum", theirs)]
        for name, fn in order if r % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - start)
    diff = float((results["interpsuite"] - results["captum"]).abs().max())
    start = time.perf_counter()
    adaptive = get_method("integrated_gradients")(problem, {})
    adaptive_s = time.perf_counter() - start
    payload = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "platform": platform.platform()},
        "model": "smollm2",
        "prompt": IOI,
        "target": spec.label,
        "n_tokens": problem.n_tokens,
        "baseline": "pad_keep_first",
        "steps": args.steps,
        "repeats": args.repeats,
        "interpsuite_ig_s": statistics.median(times["interpsuite"]),
        "captum_ig_s": statistics.median(times["captum"]),
        "all_times_s": times,
        "speedup_vs_captum": statistics.median(times["captum"]) / statistics.median(times["interpsuite"]),
        "max_abs_diff": diff,
        "max_abs_attribution": float(results["captum"].abs().max()),
        "adaptive_default": {
            "seconds": adaptive_s,
            "steps_used": adaptive.info["steps"],
            "completeness_error": adaptive.info["completeness_error"],
            "passed": adaptive.info["passed"],
            "history": adaptive.info["history"],
            "f_input": adaptive.info["f_input"],
            "f_baseline": adaptive.info["f_baseline"],
        },
    }
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(payload, indent=2) + "\n")
    print(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
