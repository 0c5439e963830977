"""Half precision on CPU: forward and captures work in the model's dtype, and watching the attention
pattern (explicit attention instead of fused SDPA) moves the outputs by no more than rounding.

The tolerance is `explicit_attention_tolerance(dtype, max |logit|)`; the measured values behind it
are in interpsuite/models/placement.py and docs/model-layer.md.
"""

from __future__ import annotations

import pytest
import torch

from interpsuite.models import EMBEDDED, load_model
from interpsuite.models.placement import explicit_attention_tolerance

TEXTS = [
    "When Mary and John went to the store, John gave a drink to",
    "The quick brown fox jumps over the lazy dog, and then it runs away into the forest.",
    "Paris is the capital of",
]
HALF = ["float16", "bfloat16"]
TINY = [name for name in EMBEDDED if name.startswith("tiny_")]  # every architecture family, 2 layers each


def _check_precision(model, dtype: torch.dtype, pattern_layers: list[list[int]]) -> dict[str, float]:
    """Assert dtype, finiteness and the pattern-path tolerance; return max |delta logit| per layer set."""
    batch = model.tokenize(TEXTS)
    mask = batch.attention_mask.bool()
    n = model.info.n_layers
    captures = [f"blocks.{n - 1}.resid_post", f"blocks.{n - 1}.mlp.post", f"blocks.{n - 1}.attn.z", "final"]
    fused = model.forward(batch, capture=captures)
    assert fused.output.dtype == dtype
    assert torch.isfinite(fused.output[mask]).all()
    for name in captures:
        assert fused.cache[name].dtype == dtype, name
    reference = fused.output.float()[mask]
    tolerance = explicit_attention_tolerance(dtype, reference.abs().max().item())
    measured = {}
    for layers in pattern_layers:
        names = [f"blocks.{layer}.attn.pattern" for layer in layers]
        explicit = model.forward(batch, capture=names)
        for name in names:
            assert explicit.cache[name].dtype == dtype, name
        delta = (explicit.output.float()[mask] - reference).abs().max().item()
        measured[",".join(map(str, layers)) if len(layers) < n else "all"] = delta
        assert delta <= tolerance, f"{model.info.name} {dtype}: pattern at {layers} moved logits by {delta:.3g}"
    print(f"{model.info.name} {dtype}: max|dlogit| {measured} (tolerance {tolerance:.3g})")
    return measured


@pytest.mark.parametrize("dtype", ["float32", *HALF])
@pytest.mark.parametrize("name", TINY)
def test_tiny_models_in_each_dtype(name, dtype):
    model = load_model(name, dtype=dtype)
    _check_precision(model, getattr(torch, dtype), [[0], [1], [0, 1]])


@pytest.mark.parametrize("dtype", HALF)
def test_the_same_seed_gives_the_same_weights_in_every_dtype(tiny_models, dtype):
    half = load_model("tiny_llama", dtype=dtype)
    full = tiny_models["tiny_llama"]
    weight = full.hf_model.model.layers[1].mlp.down_proj.weight
    assert torch.equal(half.hf_model.model.layers[1].mlp.down_proj.weight, weight.to(getattr(torch, dtype)))


@pytest.mark.slow
def test_smollm2_float32_pattern_path(smollm2):
    _check_precision(smollm2, torch.float32, [[0], [15], [29], list(range(30))])


@pytest.mark.slow
@pytest.mark.parametrize("dtype", HALF)
def test_smollm2_in_half_precision(dtype):
    model = load_model("smollm2", dtype=dtype)
    assert model.hf_model.model.layers[0].mlp.down_proj.weight.dtype == getattr(torch, dtype)
    _check_precision(model, getattr(torch, dtype), [[0], [15], [29], list(range(30))])
