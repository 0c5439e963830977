"""SAE benchmark, part one: the live-patch round trip (issue 14's target: < 100 ms).

A patch is what a workbench click does: one `set_feature` on the splice, then `run(top_k=10)`
of the same 32-token prompt, giving the new top-10 next tokens. Timed over `--patches`
patches (random feature, random value, seeded) after a warm-up, side by side in one run:

- `fast`: `model.sae_splice(sae)` (the default: the clean run is cached, each patch recomputes
  only the layers from the spliced one on, and adds the edited features' decoder rows);
- `reference`: the same with `reuse_prefix=False` (every patch a full pass from the tokens,
  the activation encoded and decoded in full);
- `forward`: a plain forward of the prompt with the last logit only, for scale.

The two splice paths must give the same logits (max |difference| reported). The SAE is a
random TopK SAE of width 8 × d_model (its weights do not change the cost).

    python benchmarks/bench_sae.py                  # SmolLM2, blocks.15.resid_post, 100 patches
    python benchmarks/bench_sae.py --quick          # tiny_llama, 20 patches (writes /tmp)
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_core import machine_info, write_report  # noqa: E402
from interpsuite_plugins.sae import SAEConfig, SparseAutoencoder  # noqa: E402

from interpsuite.models import load_model  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "sae.json"
PROMPT_WORDS = (
    "The Eiffel Tower is in Paris, and every year millions of visitors climb its stairs to look out over "
    "the river and the roofs of the city below"
)


def prompt_of_tokens(model, n_tokens: int) -> str:
    words = (PROMPT_WORDS + " ") * 4
    for end in range(len(words), 0, -1):
        text = words[:end].strip()
        if len(model.tokenize([text]).tokens[0]) <= n_tokens:
            return text
    raise ValueError("no prompt short enough")


def summarise(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"median_ms": round(1000 * statistics.median(ordered), 2), "p95_ms": round(1000 * p95, 2)}


def patch_latency(model, sae, prompt: str, patches: int, reuse_prefix: bool, seed: int) -> tuple[dict, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    width = sae.cfg.width
    times, last = [], None
    with model.sae_splice(sae, reuse_prefix=reuse_prefix) as splice:
        splice.run(prompt, top_k=10)  # warm-up: the clean run (cached on the fast path)
        for _ in range(patches):
            feature = int(torch.randint(width, (1,), generator=generator))
            value = float(torch.rand(1, generator=generator) * 10)
            started = time.perf_counter()
            splice.set_feature(feature, value)
            out = splice.run(prompt, top_k=10)
            times.append(time.perf_counter() - started)
            last = out.logits
    return summarise(times), last


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--layer", type=int, default=15)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--patches", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.model, args.layer, args.patches = "tiny_llama", 1, 20
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    hook = f"blocks.{args.layer}.resid_post"
    d_model = model.info.d_model
    sae = SparseAutoencoder(SAEConfig(d_in=d_model, width=8 * d_model, architecture="topk", k=32, hook=hook), seed=0)
    prompt = prompt_of_tokens(model, args.tokens)
    n_tokens = len(model.tokenize([prompt]).tokens[0])

    fast, fast_logits = patch_latency(model, sae, prompt, args.patches, True, seed=1)
    reference, reference_logits = patch_latency(model, sae, prompt, args.patches, False, seed=1)
    batch = model.tokenize([prompt])
    forward_times = []
    for _ in range(args.patches):
        started = time.perf_counter()
        model.forward(batch, logits_to_keep=1)
        forward_times.append(time.perf_counter() - started)
    report: dict[str, Any] = {
        "benchmark": "sae",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "model": args.model,
        "live_patch": {
            "hook": hook,
            "prompt_tokens": n_tokens,
            "sae": {"architecture": "topk", "width": sae.cfg.width, "k": 32},
            "patches": args.patches,
            "fast": fast,
            "reference": reference,
            "plain_forward": summarise(forward_times),
            "fast_vs_reference_max_abs_diff": float((fast_logits - reference_logits).abs().max()),
            "target_ms": 100,
        },
    }
    out = args.out or (Path("/tmp/bench_sae_quick.json") if args.quick else RESULTS)
    write_report(report, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
