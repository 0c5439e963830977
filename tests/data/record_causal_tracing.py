"""Record causal-tracing numbers at a fixed seed, for the regression test.

The reference file `causal_tracing_reference.json` was written by this script on the engine
that preceded the shared sweep engine (commit 855fd84); the test re-traces the same prompts
and compares. Run: python tests/data/record_causal_tracing.py [models...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from interpsuite_plugins.mechanistic.causal_tracing import (
    CausalTracing,
    load_facts,
    select_facts,
    trace_prompt,
)

from interpsuite.analyzer import build_config
from interpsuite.models import load_model

REFERENCE = Path(__file__).with_name("causal_tracing_reference.json")
SETTINGS = {"tiny_llama": (3, 2, 4), "tiny_gpt2": (3, 2, 4), "smollm2": (2, 1, 10)}  # prompts, samples, window


def trace(model_name: str, n_prompts: int, samples: int, window: int, seed: int = 0) -> list[dict]:
    return trace_model(load_model(model_name), n_prompts, samples, window, seed)


def trace_model(model, n_prompts: int, samples: int, window: int, seed: int = 0) -> list[dict]:
    """Per prompt: p_clean, p_corrupted per noise draw, the IE grids and the control rows."""
    analyzer = CausalTracing(build_config(CausalTracing, {"window": window, "samples": samples}))
    facts = load_facts("factual")
    prepared = analyzer.prepare(model, select_facts(facts, n_prompts))
    noise_std = 3.0 * analyzer.sigma(model, facts)
    generator = torch.Generator().manual_seed(seed)
    out = []
    for item in prepared:
        noises = [torch.randn(item.end - item.start, model.info.d_model, generator=generator) * noise_std
                  for _ in range(samples)]
        t = trace_prompt(model, item, noises, ["resid", "mlp", "attn"], window, 64)
        out.append({
            "prompt": item.fact.prompt,
            "p_clean": t.p_clean,
            "p_corrupted": [s.p_corrupted for s in t.samples],
            "effects": {k: t.effects(k).tolist() for k in ("resid", "mlp", "attn")},
            "controls": {k: t.control(k) for k in ("full", "none")},
        })
    return out


if __name__ == "__main__":
    names = sys.argv[1:] or list(SETTINGS)
    data = json.loads(REFERENCE.read_text()) if REFERENCE.exists() else {}
    for name in names:
        n, s, w = SETTINGS[name]
        data[name] = {"prompts": n, "samples": s, "window": w, "seed": 0, "traces": trace(name, n, s, w)}
    REFERENCE.write_text(json.dumps(data))
