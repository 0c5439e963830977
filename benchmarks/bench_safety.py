"""Safety benchmark: what scoring a text costs, and what fitting a detector on many texts holds.

1. **Scoring latency, one 64-token text.** The issue's claim is "one forward pass plus
   microseconds of arithmetic". Timed side by side in one run (median of `--reps` after a
   warm-up): a bare `model.forward` of the text (all logits, and the last position's logit
   only: the anomaly detector needs no logits, so it is compared with both),
   `AnomalyDetector.score` (every layer's
   resid_post, Mahalanobis, layer aggregation, flag) and `FailurePredictor.score` (every
   feature family: output, logit lens, attention entropy, residual norms, probe). The ratio
   to the bare pass is the price of the capture and the arithmetic.

2. **Throughput, 1,000 texts batched.** The same three over `--n-texts` texts (two shipped
   sentences each, ~30-40 tokens) at `--batch-size`: texts per second.

3. **Fitting on 5,000 normal texts streams.** `AnomalyDetector.fit` at each of `--fit-sizes`,
   each in its own process (so peak RSS is that fit's), texts cut at 32 tokens: fit seconds, and peak RSS after the
   model is loaded minus RSS before the fit. Streaming means the growth does not scale with
   the number of texts: per layer only a sum and a sum of outer products (d x d, float64)
   are kept.

    python benchmarks/bench_safety.py             # SmolLM2: 64-token latency, 1,000 texts, fits on 500 and 5,000
    python benchmarks/bench_safety.py --quick     # smoke test: tiny_llama, 40 texts, fits on 60 and 200
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_core import machine_info, write_report  # noqa: E402
from interpsuite_plugins.datasets import english_sentences  # noqa: E402
from interpsuite_plugins.safety.anomaly import AnomalyDetector  # noqa: E402
from interpsuite_plugins.safety.anomaly_detection import SHIPPED_NORMAL  # noqa: E402
from interpsuite_plugins.safety.failure import FailurePredictor, extract  # noqa: E402
from interpsuite_plugins.safety.failure_tasks import arithmetic_task, ioi_task  # noqa: E402

from interpsuite.models import load_model  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "safety.json"


def sentences() -> list[str]:
    lines = [line.strip() for line in SHIPPED_NORMAL.read_text(encoding="utf-8").splitlines()]
    return [line for line in lines if line] + list(english_sentences())


def normal_texts(n: int, seed: int = 0) -> list[str]:
    """n distinct texts of two shipped sentences each (seeded pairs)."""
    pool = sentences()
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < n:
        text = f"{rng.choice(pool)} {rng.choice(pool)}"
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


def text_of_tokens(model, n_tokens: int) -> str:
    """A text whose tokenization is exactly n_tokens real tokens."""
    words = " ".join(sentences() * 4)
    ids = model.tokenizer(words, add_special_tokens=False)["input_ids"][:n_tokens]
    text = model.tokenizer.decode(ids)
    while model.tokenize([text]).lengths[0] > n_tokens:
        text = text.rsplit(" ", 1)[0]
    return text


def median_seconds(fn, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def rss_mib() -> float:
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def fit_child(model_name: str, n: int, batch_size: int) -> dict[str, Any]:
    """One fit in this process: seconds, RSS before, peak RSS (ru_maxrss)."""
    model = load_model(model_name)
    texts = normal_texts(n, seed=1)
    before = rss_mib()
    start = time.perf_counter()
    detector = AnomalyDetector.fit(model, texts, batch_size=batch_size, max_length=32)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "n_texts": n,
        "fit_seconds": round(seconds, 2),
        "texts_per_second": round(n / seconds, 1),
        "rss_before_fit_mib": round(before, 1),
        "peak_rss_mib": round(peak, 1),
        "growth_mib": round(peak - before, 1),
        "layers": len(detector.layers),
        "dim": detector.dim,
    }


def fit_in_subprocess(model_name: str, n: int, batch_size: int) -> dict[str, Any]:
    command = [sys.executable, __file__, "--fit-child", str(n), "--model", model_name, "--batch-size", str(batch_size)]
    done = subprocess.run(command, capture_output=True, text=True, check=True, env=os.environ.copy())
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--tokens", type=int, default=64, help="length of the latency text")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--n-texts", type=int, default=1000, help="texts for the throughput run")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--fit-sizes", type=int, nargs="+", default=[500, 5000])
    parser.add_argument("--n-tasks", type=int, default=200, help="arithmetic + IOI items the predictor is fitted on")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--fit-child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.fit_child is not None:
        print(json.dumps(fit_child(args.model, args.fit_child, args.batch_size)))
        return 0
    if args.quick:
        args.model, args.reps, args.n_texts, args.fit_sizes, args.n_tasks = "tiny_llama", 3, 40, [60, 200], 60

    model = load_model(args.model)
    torch.manual_seed(0)
    detector = AnomalyDetector.fit(model, normal_texts(400, seed=2), batch_size=args.batch_size, max_length=64)
    items = arithmetic_task(args.n_tasks // 2, seed=0).items + ioi_task(args.n_tasks - args.n_tasks // 2, seed=0).items
    if args.quick:  # a random tiny model is wrong on every task: alternate labels time the same work
        features = extract(model, [item.prompt for item in items], batch_size=args.batch_size)
        labels = [i % 2 for i in range(len(items))]
        predictor = FailurePredictor.fit(features, labels, model=model)
    else:
        predictor = FailurePredictor.fit(model=model, tasks=items, batch_size=args.batch_size)

    text = text_of_tokens(model, args.tokens)
    one = model.tokenize([text])
    with torch.no_grad():
        latency = {
            "tokens": int(one.lengths[0]),
            "forward_s": median_seconds(lambda: model.forward(one), args.reps),
            "forward_last_logit_s": median_seconds(lambda: model.forward(one, logits_to_keep=1), args.reps),
            "anomaly_score_s": median_seconds(lambda: detector.score(model, [text]), args.reps),
            "failure_score_s": median_seconds(lambda: predictor.score(model, [text]), args.reps),
        }
    for name in ("anomaly", "failure"):
        latency[f"{name}_vs_forward"] = latency[f"{name}_score_s"] / latency["forward_s"]
        latency[f"{name}_vs_forward_last_logit"] = latency[f"{name}_score_s"] / latency["forward_last_logit_s"]

    texts = normal_texts(args.n_texts, seed=3)

    def forward_all(logits_to_keep: int = 0) -> None:
        with torch.no_grad():
            for batch in model.batches(texts, args.batch_size, 64):
                model.forward(batch, logits_to_keep=logits_to_keep)

    throughput: dict[str, Any] = {"n_texts": len(texts), "batch_size": args.batch_size}
    for name, fn in (
        ("forward", forward_all),
        ("forward_last_logit", lambda: forward_all(1)),
        ("anomaly_score", lambda: detector.score(model, texts, batch_size=args.batch_size)),
        ("failure_score", lambda: predictor.score(model, texts, batch_size=args.batch_size, max_length=64)),
    ):
        start = time.perf_counter()
        fn()
        seconds = time.perf_counter() - start
        throughput[f"{name}_s"] = round(seconds, 2)
        throughput[f"{name}_texts_per_s"] = round(len(texts) / seconds, 1)

    fits = [fit_in_subprocess(args.model, n, args.batch_size) for n in args.fit_sizes]
    report = {
        "benchmark": "safety",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": args.model,
        "machine": machine_info(),
        "latency_one_text": {k: round(v, 5) if isinstance(v, float) else v for k, v in latency.items()},
        "throughput": throughput,
        "fit_streaming": fits,
        "detector": {"layers": len(detector.layers), "dim": detector.dim, "method": detector.config.method},
        "predictor": {"families": list(predictor.families), "features": len(predictor.feature_names)},
    }
    out = Path(args.out)
    if args.quick and args.out == str(RESULTS):
        out = Path("/tmp/bench_safety_quick.json")
    write_report(report, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
